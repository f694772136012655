"""The training state a run checkpoints (``last.pt``/``best.pt``): what it holds, the rule that a
non-finite state is never written, and how a resumed run reads it back.

A state holds tensors and plain data only: {epoch, distiller (student + terms' parts, teachers
excluded), optimizer, best_top1, history, stages_done, config, arch, num_classes, in_channels}.
"""
from __future__ import annotations

from pathlib import Path

import torch

from wdistill.engine import rundir
from wdistill.errors import ConfigError, NonFiniteLoss
from wdistill.io import atomic_save


def training_state(trainer, epoch: int) -> dict:
    """The state of ``trainer`` after ``epoch`` finished epochs."""
    trainable = {k: v for k, v in trainer.distiller.state_dict().items() if not k.startswith("teachers.")}
    return {"epoch": epoch, "distiller": trainable, "optimizer": trainer.optimizer.state_dict(),
            "best_top1": trainer.best_top1, "history": trainer.history, "stages_done": trainer.stages_done,
            "config": trainer.cfg.model_dump(mode="json"), "arch": trainer.cfg.student.model,
            "num_classes": trainer.data.num_classes, "in_channels": trainer.data.channels}


def save_finite(state: dict, run_dir: Path, names) -> None:
    """Write ``state`` to each of ``names`` in ``run_dir`` (atomically) after checking that every
    tensor in it is finite (one host sync), so the last checkpoint is always a good state."""
    floats = {k: v for k, v in state["distiller"].items() if v.is_floating_point() and v.numel()}
    finite = torch.stack([torch.isfinite(v).all() for v in floats.values()]) if floats else torch.ones(1, dtype=bool)
    if not bool(finite.all()):
        bad = [k for k, ok in zip(floats, finite.tolist()) if not ok]
        raise NonFiniteLoss(f"refusing to save non-finite weights ({', '.join(bad[:5])}); the last checkpoint "
                            "in the run directory is the last good state. Lower the learning rate or the "
                            "terms' weights")
    for name in names:
        atomic_save(state, run_dir / name)


def restore(trainer, state: dict) -> None:
    """Load a state written by :func:`training_state` into ``trainer`` (its optimiser exists)."""
    last = trainer.run_dir / rundir.LAST
    try:
        missing, unexpected = trainer.distiller.load_state_dict(state["distiller"], strict=False)
        missing = [k for k in missing if not k.startswith("teachers.")]
        if missing or unexpected:
            raise ConfigError(f"{last} does not match this configuration (missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}): resume with the run's own config "
                              f"({trainer.run_dir / rundir.CONFIG})")
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.best_top1 = float(state["best_top1"])
        trainer.history = list(state["history"])
        trainer.stages_done = list(state["stages_done"])
        trainer.start_epoch = int(state["epoch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{last} is not a complete wdistill checkpoint ({type(e).__name__}: {e}); start again "
                          "with --overwrite") from None
