"""Resumable benchmark runs: each is a Trainer run directory; finished runs are skipped."""
from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from ..engine import Trainer, load_config
from ..engine.checkpoint import atomic_write_text
from ..engine.config import dump_config

WALL_FILE = "bench_wall.json"  # wall seconds of every session that worked on the run, summed


def run_dir_of(cfg_dict: dict) -> Path:
    return Path(cfg_dict["run"]["out_dir"]) / cfg_dict["run"]["name"]


def _same_config(run_dir: Path, cfg) -> bool:
    saved = run_dir / "config.yaml"
    return saved.is_file() and yaml.safe_load(saved.read_text()) == yaml.safe_load(dump_config(cfg))


def run_or_load(cfg_dict: dict, log=print, data=None) -> dict:
    """Run the configured job unless its directory already holds a finished run of the same config.

    finished (summary.json) with the same config -> its summary, nothing trained;
    interrupted (last.pt) with the same config -> resumed from last.pt;
    a different config in the directory (e.g. a preset re-tuned since) -> started again.
    The summary gains ``wall_seconds``: wall time of every session of the run, summed.
    """
    cfg = load_config(cfg_dict)
    run_dir = run_dir_of(cfg_dict)
    same = _same_config(run_dir, cfg)
    if same and (run_dir / "summary.json").is_file():
        return _with_wall(run_dir, json.loads((run_dir / "summary.json").read_text()))
    resume = same and (run_dir / "last.pt").is_file()
    if (run_dir / "config.yaml").is_file() and not same:
        log(f"{run_dir}: holds a run of another configuration; starting again")
        (run_dir / WALL_FILE).unlink(missing_ok=True)
        (run_dir / "summary.json").unlink(missing_ok=True)
    t0 = time.time()
    summary = Trainer(cfg, resume=resume, overwrite=not resume, log=log, data=data).fit()
    wall = _wall(run_dir) + time.time() - t0
    atomic_write_text(json.dumps({"wall_seconds": wall}) + "\n", run_dir / WALL_FILE)
    return _with_wall(run_dir, summary)


def _wall(run_dir: Path) -> float:
    f = run_dir / WALL_FILE
    return json.loads(f.read_text())["wall_seconds"] if f.is_file() else 0.0


def _with_wall(run_dir: Path, summary: dict) -> dict:
    # A run resumed after a crash lost the crashed session's time: then fall back to epoch time.
    return {**summary, "wall_seconds": _wall(run_dir) or summary.get("train_seconds")}
