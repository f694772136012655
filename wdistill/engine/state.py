"""The training state a run checkpoints (``last.pt``/``best.pt``): what it holds, the rule that a
non-finite state is never written, and how a resumed run reads it back.

A state holds tensors and plain data only: {epoch, step, distiller (student + terms' parts,
teachers excluded), optimizer, scaler, best_top1, history, stages_done, config, arch, num_classes,
in_channels, ranks}. ``epoch`` counts finished epochs; a step checkpoint (``train.checkpoint_every``,
a stop signal) has ``step`` > 0 steps of the next epoch done and ``ranks``: each process's own
part of the interrupted epoch (:func:`local_state`: its RNG states, its loader's position and
augmentation generator, its sums of the epoch's metrics), so the epoch continues at the next
batch exactly as if it had never stopped.
"""
from __future__ import annotations

from pathlib import Path

import torch

from wdistill.engine import rundir
from wdistill.errors import ConfigError, NonFiniteLoss
from wdistill.io import atomic_save


def training_state(trainer, epoch: int, step: int = 0, ranks: list | None = None) -> dict:
    """The state of ``trainer`` after ``epoch`` finished epochs and ``step`` steps of the next
    (``ranks``: every process's :func:`local_state` then)."""
    trainable = {k: v for k, v in trainer.distiller.state_dict().items() if not k.startswith("teachers.")}
    return {"epoch": epoch, "step": step, "ranks": ranks or [], "scaler": trainer.scaler.state_dict(),
            "distiller": trainable, "optimizer": trainer.optimizer.state_dict(),
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
        fused = [g.get("fused") for g in trainer.optimizer.param_groups]
        trainer.optimizer.load_state_dict(state["optimizer"])
        for group, f in zip(trainer.optimizer.param_groups, fused):  # how to step is this run's, not the checkpoint's:
            group["fused"] = f  # auto's precision follows the device (a bf16 run resumed on an older GPU is fp16)
        trainer.best_top1 = float(state["best_top1"])
        trainer.history = list(state["history"])
        trainer.stages_done = list(state["stages_done"])
        trainer.start_epoch = int(state["epoch"])
        trainer.start_step, trainer.resume_ranks = int(state.get("step", 0)), list(state.get("ranks") or [])
        if trainer.scaler.is_enabled() and state.get("scaler"):
            trainer.scaler.load_state_dict(state["scaler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{last} is not a complete wdistill checkpoint ({type(e).__name__}: {e}); start again "
                          "with --overwrite") from None


def local_state(loader, meter, seconds: float, device: torch.device) -> dict:
    """One process's part of an interrupted epoch: its global RNG states, where its loader stands
    (and its augmentation generator), its sums of the epoch's metrics so far, the epoch's seconds."""
    out = {"rng": torch.get_rng_state(), "loader": loader.resume_state(), "seconds": float(seconds),
           "meter": {k: v.detach().cpu() for k, v in meter.sums.items()}}
    if device.type == "cuda":
        out["cuda_rng"] = torch.cuda.get_rng_state(device)
    return out


def apply_local(ranks: list, rank: int, world_size: int, start: int, loader, meter, device: torch.device) -> tuple:
    """Continue an epoch from a step checkpoint's ``ranks`` (:func:`local_state` of each process):
    the loader starts at batch ``start``; with the same number of processes, every RNG, generator
    and metric sum is restored (bit-identical), otherwise the samples are the same and the random
    draws new (rank 0 carries the epoch's metric sums). Returns (seconds so far, exact)."""
    exact = len(ranks) == world_size
    local = ranks[rank] if exact else None
    loader.start_at(start, local["loader"] if local else None)
    if local is not None:
        torch.set_rng_state(local["rng"])
        if device.type == "cuda" and "cuda_rng" in local:
            torch.cuda.set_rng_state(local["cuda_rng"], device)
        meter.sums = {k: v.to(device) for k, v in local["meter"].items()}
        return float(local["seconds"]), True
    keys = dict.fromkeys(k for r in ranks for k in r["meter"])
    meter.sums = {k: (sum(r["meter"][k] for r in ranks if k in r["meter"]) if rank == 0 else
                      torch.zeros(())).to(device).float() for k in keys}
    return max(float(r["seconds"]) for r in ranks), False
