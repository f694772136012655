"""``wdistill export RUN_DIR``: the student of a run's best.pt or last.pt as a student file, the
same file (and record) the run writes as its own ``student.pt``, with its ``.safetensors`` twin."""
from __future__ import annotations

from pathlib import Path

from wdistill import models
from wdistill.config import RunConfig
from wdistill.engine import rundir
from wdistill.errors import ConfigError
from wdistill.io import load_dict


def export_run(run_dir: str | Path, which: str = "best", output: str | Path | None = None) -> tuple[Path, dict]:
    """Write the student weights of ``run_dir/<which>.pt`` to ``output`` (a file, or a directory to hold
    ``student_<which>.pt``; default ``RUN_DIR``); returns (path, record)."""
    run = Path(run_dir)
    source = run / rundir.WHICH[which]
    state = load_dict(source, what="run checkpoint")
    if not isinstance(state.get("distiller"), dict) or not isinstance(state.get("config"), dict):
        raise ConfigError(f"{source} is not a run checkpoint written by wdistill (no distiller state): export "
                          "takes a run directory")
    sd, cfg_dict, arch, kwargs = rundir.student_weights(state)
    cfg = RunConfig.model_validate(cfg_dict)
    nc, ch = state.get("num_classes"), state.get("in_channels")
    if nc is None or ch is None:  # a state written before these were recorded: read them off the weights
        nc, ch = models.io_shape(arch or cfg.student.model, kwargs, sd)
    metrics = state["history"][-1] if state.get("history") else {}
    record = rundir.student_record(cfg, nc, ch, metrics)
    out = Path(output or run)
    out = out / f"student_{which}.pt" if out.is_dir() else out
    rundir.write_student(out, sd, record)
    return out, record
