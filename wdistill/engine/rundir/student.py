"""The student file a run writes (``student.pt`` and its ``.safetensors`` twin) and the readers
of every file a run writes."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from wdistill.config.load import load_config
from wdistill.config.schema import RunConfig
from wdistill.engine.rundir.names import BEST, CONFIG, LAST, METRICS_JSONL, STUDENT, WHICH
from wdistill.errors import ConfigError
from wdistill.io import atomic_save
from wdistill.models import save_student_safetensors


def student_record(cfg: RunConfig, num_classes: int, in_channels: int, metrics: dict) -> dict:
    """What a student file records beside its weights: enough to rebuild the model and to score
    it on the data (and view) it was trained on (``wdistill eval``)."""
    s = cfg.student
    return {"arch": s.model, "num_classes": num_classes, "in_channels": in_channels, "taps": s.taps,
            "kwargs": s.kwargs, "view": None if s.view is None else s.view.model_dump(mode="json"),
            "data": cfg.data.model_dump(mode="json"), "metrics": metrics}


def write_student(path: Path, state_dict: dict[str, torch.Tensor], record: dict) -> None:
    """``path`` (.pt: weights + record) and the same weights as ``path.with_suffix('.safetensors')``
    (record as string metadata), both written atomically."""
    atomic_save({"model": state_dict, **record}, path)
    meta = {k: record[k] for k in ("arch", "num_classes", "in_channels", "kwargs") if record.get(k) is not None}
    save_student_safetensors(state_dict, Path(path).with_suffix(".safetensors"), meta)


def resolve_checkpoint(path: str | Path, which: str | None = None) -> tuple[Path, str | None]:
    """(file to read, note for the user or None) for a run directory or a checkpoint file: a
    directory gives its student.pt (``which``: best.pt / last.pt), or for an unfinished run
    best.pt, then last.pt (said in the note)."""
    path = Path(path)
    if path.is_dir():
        if which:
            f = path / WHICH[which]
            if not f.is_file():
                raise ConfigError(f"{path} has no {f.name}: the run wrote "
                                  f"{', '.join(p.name for p in sorted(path.glob('*.pt'))) or 'no checkpoint yet'}")
            return f, None
        for name in ("student", "best", "last"):
            f = path / WHICH[name]
            if f.is_file():
                note = None if name == "student" else f"{path} has no {STUDENT} (unfinished run): using {f.name}"
                return f, note
        raise ConfigError(f"{path} holds no {STUDENT}, {BEST} or {LAST}: pass a run directory written by "
                          "`wdistill train/distill` or a checkpoint file")
    if which:
        raise ConfigError("--which picks a file of a run directory; you passed a file")
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    return path, None


def student_weights(state: dict) -> tuple[dict, dict | None, str | None, dict]:
    """(state_dict, run config or None, arch or None, model kwargs) of any checkpoint a run writes."""
    if not isinstance(state, dict):
        raise ConfigError(f"the checkpoint holds a {type(state).__name__}, not a dict of weights")
    if "distiller" in state:  # best.pt / last.pt: the whole distiller; the student is under "student."
        prefix = "student."
        sd = {k[len(prefix):]: v for k, v in state["distiller"].items() if k.startswith(prefix)}
        cfg = state.get("config")
        kwargs = (cfg or {}).get("student", {}).get("kwargs") or {}
        return sd, cfg, state.get("arch"), kwargs
    if isinstance(state.get("model"), dict):  # student.pt or an exported student
        cfg = {"data": state["data"]} if isinstance(state.get("data"), dict) else None
        return state["model"], cfg, state.get("arch"), state.get("kwargs") or {}
    return state, None, None, {}  # a bare state_dict (published checkpoints)


def read_history(run_dir: Path) -> list[dict]:
    """The per-epoch metrics a run has written so far (empty before its first epoch ends)."""
    path = Path(run_dir) / METRICS_JSONL
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_config(run_dir: Path) -> RunConfig:
    """The config a run directory records (its config.yaml)."""
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir() or not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG}): pass the directory "
                          "`wdistill train/distill` wrote")
    return load_config(path)
