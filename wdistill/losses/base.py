"""The loss-term contract shared by every distillation method.

A term is an ``nn.Module``. The engine calls, in order:

1. ``setup(ctx)`` once, before the optimiser exists, with a :class:`SetupContext` holding one
   probe forward of both models. Terms build shape-dependent parts here (connectors,
   embeddings, memory banks, cost matrices); parameters created here are optimised with the
   student, buffers are checkpointed. A term lists in ``built_by_setup`` the attributes setup
   builds: calling it before they exist raises one clear error naming the term (the base class
   checks, so no term repeats the check).
2. ``stages()`` -> pre-training stages (FSP/AB init, FT paraphraser) run before the main loop;
   after each of them the engine calls ``on_stage_end(stage)`` on the term that asked for it
   (e.g. FT freezes its paraphraser there).
3. ``forward(student, teacher, batch) -> scalar`` every forward pass (one per micro-batch with
   ``train.accumulate``). ``student``/``teacher`` are the mappings of
   :class:`wdistill.models.FeatureTap` (``feats``, ``preact_feats``, ``embed``, ``logits``);
   ``batch`` holds ``image``, ``target``, ``index`` (dataset row of each sample), ``epoch``
   (0-based int), ``num_epochs``, ``step`` and, if the loader samples them, ``contrast_index``.
   The engine multiplies the result by the term's configured weight. Schedules that are part of
   a method's definition (DKD warm-up, WKD decay) live in forward.
4. ``after_step(student, teacher, batch)`` once per optimiser step, after the step, with the
   last forward's (detached) outputs and batch. State that follows the training (memory banks)
   changes here, never in ``forward``, so a step's backward sees the state its forward used and
   micro-batches of one step see the same state. Values it needs from every micro-batch are
   recorded by ``forward`` in training mode. Under torch.distributed every rank calls it, so it
   may use collectives.

A term made of named parts (WKD-L, DKD, the detector's losses) calls ``record_parts`` in ``forward``:
when tooling has set ``keep_parts`` (benchtools/step_trace.py does), ``last_parts`` then maps each
part to its value, before the engine's weight, summing to the term's value; otherwise nothing is kept.

Class attributes the engine reads instead of naming methods: ``requires_teacher`` (False: the
term trains without a teacher, like ``ce``), ``needs_train_targets`` (the training labels must
be known, for class-aware sampling), ``num_negatives_param`` (the parameter holding the
number of contrastive negatives, which benchmarks set to the published value), ``tasks`` (the
tasks whose outputs it can read: a config pairing it with another task is refused when it is
checked) and ``supervised`` (the task's own loss, ``ce`` or the detector's ``det``, which "is it
helping?" reads the other terms against). A renamed parameter stays accepted, with a warning,
through ``renamed_params``.

Detection (``task: detection``, ``wdistill.engine.det_distiller``): ``student``/``teacher`` hold,
for the student's sampled proposals, ``logits`` (R, K + 1; background at 0), ``box_regression``,
``roi_feats`` (R, C, 7, 7: RoI-Align), ``fpn`` (the FPN maps by name) and ``feats`` (the FPN maps
the RoI pooler reads, finest first); the student's also ``losses`` (torchvision's). ``batch``
holds ``target`` (R,): the RoIs' matched labels, ``targets`` (per image, in the detector's
coordinates), ``proposals``, ``image_sizes``, ``epoch``, ``num_epochs`` and ``step``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn

from wdistill.errors import ConfigError  # noqa: F401  (re-exported: terms raise it)


@dataclass
class SetupContext:
    """What a term may need to build itself.

    student_out/teacher_out: probe forward outputs (detached) on one training batch.
    num_classes, num_samples: of the training set; train_targets: LongTensor (num_samples,).
    teacher, teacher_tap: the frozen teacher and its FeatureTap (for cost matrices).
    train_batches: callable -> iterator of un-augmented, normalised training batches
      (dicts with image/target/index), for statistics over the training set.
    cache_dir: where a term may cache artefacts (e.g. WKD-L cost matrices).
    task: "classification" or "detection" (then ``num_classes`` counts the background: the logit
      width K + 1, ``teacher`` is the teacher detector and ``train_batches`` yields detection
      batches, un-flipped).
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
    task: str = "classification"


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
    """Base class of every loss term. Subclasses set ``name`` and implement ``forward``; the other
    hooks are optional (see the module docstring)."""

    name: str = ""
    # False for a term that needs no teacher (cross-entropy): a run of such terms only is plain training.
    requires_teacher: bool = True
    # True when the term samples by label (CRD/WCoRD negatives): the engine then makes sure the
    # training labels are known, even for a streamed dataset that does not list them.
    needs_train_targets: bool = False
    # The __init__ parameter holding the number of contrastive negatives, if any (benchmarks set it).
    num_negatives_param: str | None = None
    # Attributes that setup() builds (None until then); forward before setup is one clear error.
    built_by_setup: tuple[str, ...] = ()
    # Deprecated parameter names still accepted: old -> (new, {old value: new value}); a warning names the new.
    renamed_params: dict[str, tuple[str, dict]] = {}
    # The tasks whose model outputs the term can read (wdistill.config.schema: RunConfig.task).
    tasks: tuple[str, ...] = ("classification",)
    # The task's own supervised loss (ce; det for detectors): "is it helping?" reads the others against it.
    supervised: bool = False
    # Set by tooling that reads a term by its parts (benchtools/step_trace.py): a term made of named parts then
    # keeps them, summing to its value before the engine's weight, in ``last_parts`` at each forward (with
    # their graphs); left False, nothing is kept or computed.
    keep_parts: bool = False
    last_parts: dict[str, torch.Tensor] | None = None

    def setup(self, ctx: SetupContext) -> None:  # noqa: D401 - optional hook
        """Build shape-dependent parts. Default: nothing to build."""

    def stages(self) -> list[Stage]:
        """Pre-training stages. Default: none."""
        return []

    def on_stage_end(self, stage: Stage) -> None:
        """Called after ``stage`` (one of this term's ``stages()``) ran. Default: nothing."""

    def after_step(self, student: dict, teacher: dict | None, batch: dict) -> None:
        """Called once per optimiser step, after it. Default: nothing."""

    def record_parts(self, parts: Callable[[], dict[str, torch.Tensor]]) -> None:
        """Keep ``parts()``, the term's value split into named parts, in ``last_parts`` when ``keep_parts``."""
        if self.keep_parts:
            self.last_parts = parts()

    def check_ready(self) -> None:
        """Raise if ``setup`` has not built this term's parts yet."""
        missing = [a for a in self.built_by_setup if getattr(self, a, None) is None]
        if missing:
            raise RuntimeError(f"loss term {self.name!r} is not set up ({', '.join(missing)} missing): call "
                               "setup(ctx) before the first forward (the Trainer and Distiller.setup do)")

    def __call__(self, *args, **kwargs):
        self.check_ready()
        return super().__call__(*args, **kwargs)

    def forward(self, student: dict, teacher: dict, batch: dict) -> torch.Tensor:
        raise NotImplementedError


def mean_distribution_logits(member_logits: list[torch.Tensor], T: float) -> torch.Tensor:
    """Logits whose softmax at temperature ``T`` is the mean of the members' softmaxes at ``T``:
    ``T * log(mean_i softmax(z_i / T))`` (computed with logsumexp)."""
    dtype = torch.promote_types(member_logits[0].dtype, torch.float32)  # float32 under autocast, float64 kept
    logp = torch.stack([torch.log_softmax(z.to(dtype) / T, dim=1) for z in member_logits])
    return T * (torch.logsumexp(logp, dim=0) - math.log(len(member_logits)))
