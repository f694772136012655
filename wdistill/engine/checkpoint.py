"""Run checkpoints: written atomically, read back with the weights-only loader.

A checkpoint holds tensors and plain data only (dicts, lists, str, int, float, bool, None):
``last.pt``/``best.pt`` = {epoch, distiller, optimizer, best_top1, history, stages_done, config,
arch}; ``student.pt`` = {model, arch, num_classes, in_channels, taps, metrics}.
"""
from __future__ import annotations

from pathlib import Path

from wdistill.io import FileLoadError, atomic_save, atomic_write_text, safe_load

__all__ = ["atomic_save", "atomic_write_text", "load", "FileLoadError"]


def load(path: str | Path, map_location="cpu", what: str = "checkpoint") -> dict:
    """A checkpoint as a dict; never unpickles objects (a crafted file cannot run code)."""
    obj = safe_load(path, map_location, what,
                    fix="use a file written by wdistill (last.pt, best.pt, student.pt) or a plain state_dict")
    if not isinstance(obj, dict):
        raise FileLoadError(f"{what} {path} holds a {type(obj).__name__}, not a dict of tensors")
    return obj
