"""Files on disk: atomic writes and the one way anything is loaded back (weights only).

Every checkpoint, cache and cost file goes through :func:`safe_load`: ``torch.load`` with
``weights_only=True`` refuses any pickled object that is not a tensor or plain Python data, so a
crafted file can never run code. Corrupt, truncated or hostile files become one clear
:class:`FileLoadError` naming the file and what to do, never a raw unpickling traceback.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from wdistill.errors import FileLoadError


def safe_load(path: str | os.PathLike, map_location="cpu", what: str = "checkpoint", fix: str = ""):
    """``torch.load(path, weights_only=True)`` with errors a user can act on."""
    path = Path(path)
    if not path.is_file():
        raise FileLoadError(f"{what} {path} does not exist{': ' + fix if fix else ''}")
    if path.stat().st_size == 0:
        raise FileLoadError(f"{what} {path} is empty (0 bytes), probably from an interrupted copy"
                            f"{': ' + fix if fix else ''}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure mode becomes one message
        raise FileLoadError(f"{what} {path} cannot be loaded: {_reason(path, e)}{'. ' + fix if fix else ''}") from None


def _reason(path: Path, e: Exception) -> str:
    text = str(e)
    if zipfile.is_zipfile(path):
        if isinstance(e, pickle.UnpicklingError) or "weights_only" in text:
            return ("it holds pickled Python objects, which wdistill never unpickles because unpickling can run "
                    "code (only tensors and plain data load)")
        return f"it is damaged ({text.strip().splitlines()[0] if text.strip() else type(e).__name__})"
    if "zip archive" in text:
        return "it is truncated or corrupt (its zip archive is incomplete), probably from an interrupted write or copy"
    return ("it is not a torch.save file of tensors and plain data (it may be another kind of file, damaged, or a "
            "pickle of Python objects, which is never unpickled)")


def _atomic_write(path: str | os.PathLike, mode: str, write) -> None:
    """``write(f)`` into a temporary file in ``path``'s directory, fsync, then rename over ``path``:
    a reader (or a crash) sees the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save ``obj`` to ``path`` atomically."""
    _atomic_write(path, "wb", lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` to ``path`` atomically."""
    _atomic_write(path, "w", lambda f: f.write(text))


def load_dict(path: str | os.PathLike, map_location="cpu", what: str = "checkpoint") -> dict:
    """A checkpoint that must hold a dict (run states, exports); never unpickles objects."""
    obj = safe_load(path, map_location, what,
                    fix="use a file written by wdistill (last.pt, best.pt, student.pt) or a plain state_dict")
    if not isinstance(obj, dict):
        raise FileLoadError(f"{what} {path} holds a {type(obj).__name__}, not a dict of tensors")
    return obj
