"""Runs as the benchmark tables read them: a finished run's summary, the mark of a run whose loss became
non-finite (``{"diverged": the engine's message}``; its directory holds ``diverged.json``), or None (not run).

A benchmark queue goes on past a run that diverges, and its table marks that run instead of stopping every run
queued after it or dropping it silently: asked for again, a diverged run is reported at once, not retrained
(``wdistill.workflows.reuse``)."""
from __future__ import annotations

from wdistill.errors import NonFiniteLoss
from wdistill.workflows import reuse


def diverged(result: dict | None) -> bool:
    return result is not None and "diverged" in result


def run_or_report(cfg: dict, log=print, **kw) -> dict:
    """``reuse.run_or_load``, except that a run whose loss becomes non-finite is reported and its mark returned."""
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
