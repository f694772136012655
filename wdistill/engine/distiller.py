"""Teacher(s) + student + weighted loss terms. Knows terms, not methods."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..losses.base import SetupContext, Term
from ..models.taps import FeatureTap, TapSpec
from .loop import NonFiniteLoss  # noqa: F401  (raised by the training loop; kept importable here)


class Distiller(nn.Module):
    """Runs one forward of each model through hook taps and sums ``weight * term(...)``.

    teachers: zero (plain training), one, or several (an ensemble: logits averaged, the other
    features taken from the first teacher and every member's outputs under ``members``).
    Teachers are frozen: eval mode, no grad, never given to the optimiser.
    """

    def __init__(self, student: nn.Module, teachers: list[nn.Module], terms: list[tuple[str, float, Term]],
                 student_taps: TapSpec | dict | None = None, teacher_taps: list | None = None):
        super().__init__()
        self.student = student
        self.teachers = nn.ModuleList(teachers)
        for t in self.teachers:
            t.eval()
            t.requires_grad_(False)
        self.term_names = [n for n, _, _ in terms]
        if len(set(self.term_names)) != len(self.term_names):
            raise ValueError(f"each loss term may appear once, got {self.term_names}")
        self.weights = {n: w for n, w, _ in terms}
        self.terms = nn.ModuleDict({n: t for n, _, t in terms})
        self.student_tap = FeatureTap(student, student_taps)
        teacher_taps = teacher_taps or [None] * len(teachers)
        self.teacher_taps = [FeatureTap(t, s) for t, s in zip(teachers, teacher_taps)]
        # Terms with an after_step hook, and the last training forward's (outputs, batch) for them.
        self._after_step = [n for n, t in self.terms.items() if type(t).after_step is not Term.after_step]
        self._last_step: tuple | None = None

    def close(self) -> None:
        """Remove the feature hooks from the student and teachers (they stay usable as plain models)."""
        for tap in [self.student_tap, *self.teacher_taps]:
            tap.remove()

    def train(self, mode: bool = True):
        super().train(mode)
        for t in self.teachers:
            t.eval()
        return self

    @torch.no_grad()
    def teacher_forward(self, x: torch.Tensor) -> dict | None:
        if not self.teacher_taps:
            return None
        outs = [tap(x) for tap in self.teacher_taps]
        if len(outs) == 1:
            return outs[0]
        merged = dict(outs[0])
        merged["logits"] = torch.stack([o["logits"] for o in outs]).mean(0)
        merged["members"] = outs
        return merged

    def setup(self, ctx_kwargs: dict, probe: dict) -> None:
        """Probe both models on one batch, then let every term build its parts."""
        was_training = self.student.training
        self.student.eval()
        with torch.no_grad():
            s_out = self.student_tap(probe["image"])
        self.student.train(was_training)
        t_out = self.teacher_forward(probe["image"])
        ctx = SetupContext(student_out=s_out, teacher_out=t_out,
                           teacher=self.teachers[0] if len(self.teachers) else None,
                           teacher_tap=self.teacher_forward if len(self.teachers) else None, **ctx_kwargs)
        for name, term in self.terms.items():
            term.setup(ctx)

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.student.parameters() if p.requires_grad]
        params += [p for p in self.terms.parameters() if p.requires_grad]
        return params

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        """Returns (total loss, {term: weighted value}, student outputs). Finiteness is checked by the
        training loop on the device (``loop.Guard``), without a host sync per step."""
        teacher = self.teacher_forward(batch["image"])
        student = self.student_tap(batch["image"])
        parts = {}
        total = 0.0
        for name, term in self.terms.items():
            value = term(student, teacher, batch)
            parts[name] = self.weights[name] * value
            total = total + parts[name]
        if self.training and self._after_step:
            self._last_step = (_detached(student), _detached(teacher), batch)
        return total, parts, student

    def after_step(self) -> None:
        """Call every term's ``after_step`` hook (once per optimiser step, after it; the training loop
        does) with the last training forward's detached outputs and batch."""
        if self._last_step is None:
            return
        student, teacher, batch = self._last_step
        self._last_step = None
        for name in self._after_step:
            self.terms[name].after_step(student, teacher, batch)


def _detached(out):
    """A model's tap outputs (dicts and lists of tensors) without their autograd graph."""
    if isinstance(out, torch.Tensor):
        return out.detach()
    if isinstance(out, dict):
        return {k: _detached(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_detached(v) for v in out)
    return out


def lr_at(epoch: int, base_lr: float, schedule: str, num_epochs: int, milestones, gamma: float,
          warmup_epochs: int = 0) -> float:
    """Learning rate for 0-based ``epoch`` (set once per epoch: nothing to checkpoint)."""
    if warmup_epochs and epoch < warmup_epochs:
        return base_lr * (epoch + 1) / warmup_epochs
    if schedule == "multistep":
        return base_lr * gamma ** sum(epoch >= m for m in milestones)
    if schedule == "cosine":
        return 0.5 * base_lr * (1 + math.cos(math.pi * epoch / max(num_epochs, 1)))
    return base_lr
