"""The loss-term contract shared by every distillation method.

A term is an ``nn.Module``. The engine calls, in order:

1. ``setup(ctx)`` once, before the optimiser exists, with a :class:`SetupContext` holding one
   probe forward of both models. Terms build shape-dependent parts here (connectors,
   embeddings, memory banks, cost matrices); parameters created here are optimised with the
   student, buffers are checkpointed.
2. ``stages()`` -> pre-training stages (FSP/AB init, FT paraphraser) run before the main loop.
3. ``forward(student, teacher, batch) -> scalar`` every step. ``student``/``teacher`` are the
   mappings of :class:`wdistill.models.FeatureTap` (``feats``, ``preact_feats``, ``embed``,
   ``logits``); ``batch`` holds ``image``, ``target``, ``index`` (dataset row of each sample),
   ``epoch`` (0-based int), ``num_epochs``, ``step`` and, if the loader samples them,
   ``contrast_index``. The engine multiplies the result by the term's configured weight.
   Schedules that are part of a method's definition (DKD warm-up, WKD decay) live in forward.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn


@dataclass
class SetupContext:
    """What a term may need to build itself.

    student_out/teacher_out: probe forward outputs (detached) on one training batch.
    num_classes, num_samples: of the training set; train_targets: LongTensor (num_samples,).
    teacher, teacher_tap: the frozen teacher and its FeatureTap (for cost matrices).
    train_batches: callable -> iterator of un-augmented, normalised training batches
      (dicts with image/target/index), for statistics over the training set.
    cache_dir: where a term may cache artefacts (e.g. WKD-L cost matrices).
    """

    student_out: dict
    teacher_out: dict
    num_classes: int
    num_samples: int
    train_targets: torch.Tensor
    device: torch.device
    teacher: nn.Module | None = None
    teacher_tap: Callable | None = None
    train_batches: Callable[[], Iterator[dict]] | None = None
    cache_dir: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Stage:
    """A pre-training stage a term asks for, run by the engine before the main epochs.

    loss(student_out, teacher_out, batch) -> scalar is minimised over ``parameters()`` for
    ``epochs`` epochs with the run's optimiser settings. If ``train_student`` the student's
    parameters are optimised too and the student runs in train mode.
    """

    name: str
    epochs: int
    loss: Callable[[dict, dict, dict], torch.Tensor]
    parameters: Callable[[], Iterable[nn.Parameter]]
    train_student: bool = True
    lr: float | None = None


class Term(nn.Module):
    """Base class of every loss term. Subclasses set ``name`` and implement ``forward``."""

    name: str = ""
    # True when the term samples by label (CRD/WCoRD negatives): the engine then makes sure the
    # training labels are known, even for a streamed dataset that does not list them.
    needs_train_targets: bool = False

    def setup(self, ctx: SetupContext) -> None:  # noqa: D401 - optional hook
        """Build shape-dependent parts. Default: nothing to build."""

    def stages(self) -> list[Stage]:
        """Pre-training stages. Default: none."""
        return []

    def forward(self, student: dict, teacher: dict, batch: dict) -> torch.Tensor:
        raise NotImplementedError


class ConfigError(ValueError):
    """A term was configured in a way that cannot work; the message says what would."""
