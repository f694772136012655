"""Self-distillation in born-again generations (Furlanello et al. 2018; WKD's self-distillation
setting): ``wdistill distill CONFIG --generations N``.

Generation 1 is distilled from the config's teacher with the config's loss; generation k+1 is
distilled with the same loss from generation k's student (the student's own architecture, taps,
kwargs and view). A config without a teacher makes generation 1 a plain cross-entropy run of the
student's architecture (the born-again "teacher"), and generations 2..N are distilled.

Each generation is its own run directory ``run.out_dir/run.name/gen<k>``. The chain resumes
(``--resume``): a generation that finished (``summary.json`` and ``student.pt``) is skipped, the
interrupted one continues from its ``last.pt``, a generation that never saved an epoch starts
afresh. ``generations.json`` beside them lists every generation's summary when the chain ends.
"""
from __future__ import annotations

import json
from pathlib import Path

from wdistill.config import RunConfig
from wdistill.engine import Trainer, rundir
from wdistill.errors import ConfigError
from wdistill.io import atomic_write_text


def generation_config(cfg: RunConfig, k: int) -> RunConfig:
    """The config of generation ``k`` (1-based) of ``cfg``'s chain."""
    data = cfg.model_dump(mode="json")
    data["run"]["name"] = f"{cfg.run.name}/gen{k}"
    if k == 1:
        if not cfg.teacher_sections():  # the born-again teacher: the student's architecture by CE
            data["loss"] = [{"name": "ce"}]
        return RunConfig.model_validate(data)
    if cfg.teachers:
        raise ConfigError("--generations distils one teacher per generation: give 'teacher:', not 'teachers:'")
    previous = Path(cfg.run.out_dir) / cfg.run.name / f"gen{k - 1}" / rundir.STUDENT
    data["teacher"] = {"model": cfg.student.model, "checkpoint": str(previous), "taps": cfg.student.taps,
                       "kwargs": cfg.student.kwargs,
                       "view": None if cfg.student.view is None else cfg.student.view.model_dump(mode="json")}
    data["teachers"] = None
    return RunConfig.model_validate(data)


def run_generations(cfg: RunConfig, generations: int, resume: bool = False, overwrite: bool = False,
                    log=print) -> list[dict]:
    """Train the chain; returns every generation's summary (also in ``generations.json``)."""
    if generations < 1:
        raise ConfigError(f"--generations must be at least 1, got {generations}")
    if cfg.teachers:
        raise ConfigError("--generations distils one teacher per generation: give 'teacher:', not 'teachers:'")
    root = Path(cfg.run.out_dir) / cfg.run.name
    summaries = []
    for k in range(1, generations + 1):
        gcfg = generation_config(cfg, k)
        run_dir = root / f"gen{k}"
        if resume and rundir.finished(run_dir):
            log(f"generation {k}/{generations}: finished earlier ({run_dir}), skipped")
            summaries.append(json.loads((run_dir / rundir.SUMMARY).read_text()))
            continue
        teacher = gcfg.teacher.checkpoint if gcfg.teacher else "none (cross-entropy)"
        log(f"generation {k}/{generations}: {run_dir}, teacher {teacher}")
        again = resume and (run_dir / rundir.LAST).is_file()
        trainer = Trainer(gcfg, resume=again, overwrite=overwrite and not again, log=log)
        summaries.append(dict(trainer.fit(), generation=k))
    atomic_write_text(json.dumps(summaries, indent=2) + "\n", root / "generations.json")
    return summaries
