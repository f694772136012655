"""WKD's cosine decay of its loss weight, shared by WKD-L and WKD-F (official trainer's schedule)."""
from __future__ import annotations

import math

from wdistill.errors import ConfigError

# Published CIFAR-100 decay start: epoch 150 of 240.
DEFAULT_DECAY_FRAC = 150 / 240


def decay_start_epoch(
    decay_start: float | None, decay_start_frac: float | None, num_epochs: int | None
) -> float | None:
    """The epoch at which WKD's cosine decay starts (None: no decay)."""
    if decay_start is not None:
        return float(decay_start)
    if decay_start_frac is None:
        return None
    if num_epochs is None:
        raise ValueError(
            "WKD's weight decay needs batch['num_epochs'] (and batch['epoch']); "
            "set decay_start_frac=None to train without the decay"
        )
    return decay_start_frac * num_epochs


def cosine_decayed(weight: float, epoch: int, num_epochs: int | None, start: float | None) -> float:
    """WKD's weight at 0-based ``epoch`` of ``num_epochs``, as the official trainer computes it.

    The official trainer counts epochs from 1 and decays once that count e exceeds s:
    ``w`` while e <= s, then ``w * 0.5 * (1 + cos(pi (e - s) / (E - s)))``, which is 0 at the last
    epoch (official mdistiller/distillers/WKD.py, ``kwargs['epoch'] > decay_start_epoch``)."""
    if start is None or num_epochs is None or num_epochs <= start:
        return weight
    e = epoch + 1  # the official 1-based epoch count
    if e <= start:
        return weight
    return weight * 0.5 * (1 + math.cos(math.pi * (e - start) / (num_epochs - start)))


def check_decay_args(decay_start, decay_start_frac) -> None:
    if decay_start is not None and decay_start_frac not in (None, DEFAULT_DECAY_FRAC):
        raise ConfigError("give decay_start (epochs) or decay_start_frac (fraction of training), not both")
    if decay_start is not None and decay_start < 0:
        raise ConfigError(f"decay_start must be >= 0, got {decay_start}")
    if decay_start_frac is not None and not 0 <= decay_start_frac <= 1:
        raise ConfigError(f"decay_start_frac must be in [0, 1], got {decay_start_frac}")
