"""Runs as the benchmark tables read them: a finished run's summary, the mark of a run whose loss became
non-finite (``{"diverged": the engine's message}``; its directory holds ``diverged.json``), or None (not run).

A benchmark queue goes on past a run that diverges, and its table marks that run instead of stopping every run
queued after it or dropping it silently: asked for again, a diverged run is reported at once, not retrained
(``wdistill.workflows.reuse``)."""
from __future__ import annotations

from pathlib import Path

from wdistill.engine.rundir import DIVERGED
from wdistill.errors import NonFiniteLoss
from wdistill.workflows import reuse


def diverged(result: dict | None) -> bool:
    return result is not None and "diverged" in result


def run_or_report(cfg: dict, log=print, **kw) -> dict:
    """``reuse.run_or_load``, except that a run whose loss becomes non-finite is reported and its mark returned,
    and so is a run whose teacher is a run of the queue that diverged (its checkpoint was never written)."""
    teacher = diverged_teacher(cfg)
    if teacher is not None:
        log(f"{cfg['run']['name']}: not trained, its teacher {teacher} diverged")
        return {"diverged": f"its teacher {teacher} diverged"}
    try:
        return reuse.run_or_load(cfg, log=log, **kw)
    except NonFiniteLoss as e:
        log(f"{cfg['run']['name']}: diverged, marked in the table and left out of its means: {e}")
        return {"diverged": str(e)}


def load_result(cfg: dict, log=None, wait: bool = True) -> dict | None:
    """What a table reads of a run without training it (the ``get`` of a report-only queue): a finished run's
    summary, a diverged run's mark, or None (not run, or a run of another config)."""
    summary = reuse.load_finished(cfg)
    if summary is not None:
        return summary
    message = reuse.load_diverged(cfg)
    return None if message is None else {"diverged": message}


def teacher_sections(cfg: dict) -> list[dict]:
    """The teacher sections of a config dict: its ``teachers`` list, or its one ``teacher``, or none."""
    return cfg.get("teachers") or ([cfg["teacher"]] if cfg.get("teacher") else [])


def diverged_teacher(cfg: dict) -> str | None:
    """The run directory of a teacher of ``cfg`` whose checkpoint is missing because that run diverged, or None."""
    for t in teacher_sections(cfg):
        checkpoint = Path(str(t.get("checkpoint") or ""))
        if t.get("checkpoint") and not checkpoint.exists() and (checkpoint.parent / DIVERGED).is_file():
            return str(checkpoint.parent)
    return None
