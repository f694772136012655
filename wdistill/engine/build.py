"""Building a run from its config: device, models, loss terms (data: ``wdistill.data.build``). Every error is a
ConfigError that names the key and the fix, raised before any long work starts."""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from .. import losses, models
from .config import ConfigError, RunConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} but CUDA is not available here; use cpu (run.device=cpu, "
                              "or --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} but this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} but MPS is not available here; use cpu")
    return dev


def build_model(section, num_classes: int, in_channels: int, role: str) -> nn.Module:
    try:
        model = models.create(section.model, num_classes=num_classes, in_channels=in_channels, **section.kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{role}.model: {e}") from None
    if section.checkpoint:
        from ..models.checkpoint import load_checkpoint
        if not os.path.isfile(section.checkpoint):
            raise ConfigError(f"{role}.checkpoint {section.checkpoint!r} does not exist: put the trained weights "
                              "there or train them with `wdistill train` (its run directory holds student.pt)")
        try:
            load_checkpoint(model, section.checkpoint)
        except ValueError as e:
            raise ConfigError(f"{role}.checkpoint: {e}") from None
    elif role == "teacher":
        raise ConfigError(f"teacher {section.model!r} has no checkpoint: train one first "
                          "(`wdistill train CONFIG`) and set teacher.checkpoint=RUN_DIR/student.pt")
    return model


def build_terms(cfg: RunConfig) -> list[tuple[str, float, losses.Term]]:
    terms = []
    for t in cfg.loss:
        try:
            terms.append((t.name, t.weight, losses.create(t.name, **t.params)))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"loss term {t.name!r}: {e}") from None
    return terms
