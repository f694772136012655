"""Which trainer runs a config: the classification Trainer, or the DetectionTrainer for ``task:
detection``. Every entry point that builds a run from a config (the CLI, ``workflows.reuse``) goes
through :func:`make_trainer`."""
from __future__ import annotations

from wdistill.config.schema import RunConfig
from wdistill.engine.det_trainer import DetectionTrainer
from wdistill.engine.trainer import Trainer

TRAINERS = {"classification": Trainer, "detection": DetectionTrainer}


def make_trainer(cfg: RunConfig, **kwargs) -> Trainer:
    """The trainer of ``cfg.task``, built with ``kwargs`` (those of :class:`Trainer`)."""
    return TRAINERS[cfg.task](cfg, **kwargs)
