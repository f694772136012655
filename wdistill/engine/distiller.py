"""Teacher(s) + student + weighted loss terms. Knows terms, not methods."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from wdistill.data.views import View
from wdistill.errors import ConfigError
from wdistill.losses.base import SetupContext, Term, mean_distribution_logits
from wdistill.models.taps import FeatureTap, TapOutputs, TapSpec

MEAN, PER_TEACHER = "mean", "per_teacher"


def ensemble_mode(term: Term) -> str:
    """How a term meets an ensemble of teachers: its class attribute ``ensemble``, "mean" (logit
    terms: one instance, fed the teachers' mean distribution) or "per_teacher" (the default:
    representation terms get one instance per teacher, each fed its own teacher, weight 1/n)."""
    mode = getattr(term, "ensemble", PER_TEACHER)
    if mode not in (MEAN, PER_TEACHER):
        raise ValueError(f"term {term.name!r} declares ensemble={mode!r}; use 'mean' or 'per_teacher'")
    return mode


def ensemble_temperature(term: Term) -> float:
    """The temperature at which a "mean" term reads the teachers' mean distribution: its
    ``ensemble_T`` attribute, else its ``T``, else 1."""
    T = getattr(term, "ensemble_T", None)
    return float(T if T is not None else getattr(term, "T", 1.0))


def mean_output(outs: list[dict], T: float) -> dict:
    """What a "mean" term sees from an ensemble: ``logits`` (the mean distribution at ``T``) and
    ``members`` (every teacher's own outputs); features are per teacher only."""
    merged = TapOutputs(logits=mean_distribution_logits([o["logits"] for o in outs], T), members=outs)
    merged.why = ("this term reads the ensemble's mean distribution (ensemble = 'mean'); features are "
                  "per teacher, under 'members'")
    return merged


def hold_models(module: nn.Module, student: nn.Module, teachers: list, terms: list) -> list[str]:
    """Set ``module.student`` and ``module.teachers`` (frozen, in eval mode) and return the term names
    of ``terms`` ((name, weight, term) triples), each of which may appear once."""
    module.student = student
    module.teachers = nn.ModuleList(teachers)
    for t in module.teachers:
        t.eval()
        t.requires_grad_(False)
    names = [n for n, _, _ in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"each loss term may appear once, got {names}")
    return names


class Distiller(nn.Module):
    """Runs one forward of each model through hook taps and sums ``weight * term(...)``.

    teachers: zero (plain training), one, or several (an ensemble). With several, a term whose
    ``ensemble`` is "mean" runs once on the teachers' mean distribution (see :func:`mean_output`);
    any other term is expanded into one instance per teacher, keyed ``name@t<i>``, each set up
    with and fed its own teacher's outputs and weighted ``weight / n``.
    Views: ``student_view`` / ``teacher_views`` (``wdistill.data.views``) transform the batch
    each model sees, after the shared augmentation.
    Teachers are frozen: eval mode, no grad, never given to the optimiser.
    """

    def __init__(self, student: nn.Module, teachers: list[nn.Module], terms: list[tuple[str, float, Term]],
                 student_taps: TapSpec | dict | None = None, teacher_taps: list | None = None,
                 student_view=None, teacher_views: list | None = None):
        super().__init__()
        hold_models(self, student, teachers, terms)
        n = len(teachers)
        expanded, self.term_teacher = [], {}
        for name, weight, term in terms:
            if n > 1 and ensemble_mode(term) == PER_TEACHER:
                for i in range(n):  # set-up parts (banks, connectors) are built later, per instance
                    key = f"{name}@t{i}"
                    expanded.append((key, weight / n, term if i == 0 else copy.deepcopy(term)))
                    self.term_teacher[key] = i
            else:
                expanded.append((name, weight, term))
                self.term_teacher[name] = None
        self.term_names = [k for k, _, _ in expanded]
        self.weights = {k: w for k, w, _ in expanded}
        self.terms = nn.ModuleDict({k: t for k, _, t in expanded})
        self.student_view = View(student_view)
        self.teacher_views = nn.ModuleList([View(v) for v in (teacher_views or [None] * n)])
        self.student_tap = FeatureTap(student, student_taps)
        teacher_taps = teacher_taps or [None] * n
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

    def student_forward(self, x: torch.Tensor) -> dict:
        return self.student_tap(self.student_view(x))

    @torch.no_grad()
    def teacher_outputs(self, x: torch.Tensor) -> list[dict]:
        """Every teacher's outputs on its own view of ``x``."""
        return [tap(view(x)) for tap, view in zip(self.teacher_taps, self.teacher_views)]

    def member_tap(self, i: int):
        """Teacher ``i`` on its own view, as a tap function (for statistics passes in setup)."""
        return lambda x: self.teacher_taps[i](self.teacher_views[i](x))

    def teacher_for(self, key: str, outs: list[dict]) -> dict | None:
        """What term ``key`` sees: its own teacher, the single teacher, or the mean distribution."""
        if not outs:
            return None
        i = self.term_teacher.get(key)
        if i is not None:
            return outs[i]
        if len(outs) == 1:
            return outs[0]
        return mean_output(outs, ensemble_temperature(self.terms[key]))

    @torch.no_grad()
    def teacher_forward(self, x: torch.Tensor) -> dict | None:
        """One teacher's outputs; for an ensemble the mean distribution at T=1 with ``members``."""
        outs = self.teacher_outputs(x) if self.teacher_taps else []
        if not outs:
            return None
        return outs[0] if len(outs) == 1 else mean_output(outs, 1.0)

    def setup(self, ctx_kwargs: dict, probe: dict) -> None:
        """Probe both models on one batch, then let every term build its parts."""
        was_training, x, k = self.student.training, probe["image"], ctx_kwargs["num_classes"]
        self.student.eval()
        with torch.no_grad():
            s_out = probed("student", "student", self.student_forward, x, k)
            outs = []
            for i in range(len(self.teachers)):
                role, key = ("teacher", "teacher") if len(self.teachers) == 1 else (f"teacher {i}", f"teachers.{i}")
                outs.append(probed(role, key, self.member_tap(i), x, k))
        self.student.train(was_training)
        members = [SetupContext(student_out=s_out, teacher_out=o, teacher=self.teachers[i],
                                teacher_tap=self.member_tap(i), **ctx_kwargs) for i, o in enumerate(outs)]
        for key, term in self.terms.items():
            i = self.term_teacher.get(key)
            if i is not None or len(members) == 1:
                ctx = members[i or 0]
            else:  # no teacher, or a "mean" term of an ensemble: per-teacher contexts under extra["members"]
                ctx = SetupContext(student_out=s_out, teacher_out=self.teacher_for(key, outs),
                                   teacher=self.teachers[0] if len(self.teachers) else None,
                                   teacher_tap=self.teacher_forward if len(self.teachers) else None,
                                   **ctx_kwargs)
                ctx.extra["members"] = members
            term.setup(ctx)

    def stages(self) -> list[tuple[str, object, int | None, Term]]:
        """(stage name, stage, teacher index or None, term) of every term's pre-training stages. A
        term whose id is not its method's name prefixes its stages ``<id>.``, so two instances of
        one method keep apart (and runs written before ids existed resume); a per-teacher
        instance's stages are named ``<stage>@t<i>``."""
        out = []
        for key, term in self.terms.items():
            i = self.term_teacher.get(key)
            term_id = key.split("@t")[0] if i is not None else key
            for stage in term.stages():
                name = stage.name if term_id == term.name else f"{term_id}.{stage.name}"
                out.append((name if i is None else f"{name}@t{i}", stage, i, term))
        return out

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.student.parameters() if p.requires_grad]
        params += [p for p in self.terms.parameters() if p.requires_grad]
        return params

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        """Returns (total loss, {term: weighted value}, student outputs). Finiteness is checked by the
        training loop on the device (``loop.Guard``), without a host sync per step."""
        outs = self.teacher_outputs(batch["image"]) if self.teacher_taps else []
        student = self.student_forward(batch["image"])
        parts = {}
        total = 0.0
        for name, term in self.terms.items():
            value = term(student, self.teacher_for(name, outs), batch)
            parts[name] = self.weights[name] * value
            total = total + parts[name]
        if self.training and self._after_step:
            self._last_step = (_detached(student), _detached(outs), batch)
        return total, parts, student

    def after_step(self) -> None:
        """Call every term's ``after_step`` hook (once per optimiser step, after it; the training loop
        does) with the last training forward's detached outputs and batch."""
        if self._last_step is None:
            return
        student, outs, batch = self._last_step
        self._last_step = None
        for name in self._after_step:
            self.terms[name].after_step(student, self.teacher_for(name, outs), batch)


def probed(role: str, key: str, forward, x: torch.Tensor, num_classes: int) -> dict:
    """``forward(x)`` on a batch of the data, refused with the fix when the model cannot take its images or
    scores another number of classes than the data have (``key``: the model's config section)."""
    try:
        out = forward(x)
    except RuntimeError as e:
        if isinstance(e, torch.OutOfMemoryError):
            raise
        raise ConfigError(f"the {role} cannot run on the data: on a batch of shape {tuple(x.shape)} ({x.shape[1]} "
                          f"channel(s), {x.shape[2]}x{x.shape[3]} pixels, before the {role}'s view) it failed with "
                          f"'{e}'. Give the model an input layer for these images, or a view that makes them fit "
                          f"({key}.view)") from e
    width = out["logits"].shape[-1]
    if width != num_classes:
        trained = " (a teacher trained on other classes cannot be distilled from as it is)" * (key != "student")
        raise ConfigError(f"the {role} scores {width} classes but the data have {num_classes}: give it a "
                          f"classifier of {num_classes} outputs{trained}, or set data.num_classes if the data's "
                          "count is wrong")
    return out


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
