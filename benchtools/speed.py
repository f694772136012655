"""`python -m benchtools speed` (docs/benchmarks.md, protocol B): per-method training-step time at CIFAR-100
shapes on synthetic tensors, against the lower bound of a distillation step."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchtools import targets as targets_module
from benchtools.measure import interleaved_medians
from wdistill import losses, models
from wdistill.engine.distiller import Distiller
from wdistill.losses.recipes import RECIPES


@dataclass(frozen=True)
class SpeedSetup:
    """The shapes of the step benchmark; defaults are docs/benchmarks.md, protocol B (CIFAR-100, res32x4 -> res8x4)."""

    teacher: str = "resnet32x4"
    student: str = "resnet8x4"
    batch: int = 64
    image: int = 32
    channels: int = 3
    classes: int = 100
    num_samples: int = 50_000  # CIFAR-100 training set: CRD/WCoRD memory banks
    steps: int = 20
    warmup: int = 3


def speed_terms(method: str) -> list[dict]:
    """The method's recipe with CIFAR-100 settings (contrastive terms at the published K=16384)."""
    out = []
    for t in RECIPES[method]:
        t = dict(t)
        key = losses.get(t["name"]).num_negatives_param
        if key:
            t[key] = 16384
        out.append(t)
    return out


class SyntheticTask:
    """Models, a fixed synthetic batch and the training-set stand-ins the terms' setup needs."""

    def __init__(self, setup: SpeedSetup, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        s = setup
        self.setup_ = s
        torch.manual_seed(seed)
        self.teacher = models.create(s.teacher, num_classes=s.classes, in_channels=s.channels)
        self.student_state = models.create(s.student, num_classes=s.classes, in_channels=s.channels).state_dict()
        self.batch = {"image": torch.randn(s.batch, s.channels, s.image, s.image, generator=g),
                      "target": torch.randint(0, s.classes, (s.batch,), generator=g),
                      "index": torch.randperm(s.num_samples, generator=g)[: s.batch],
                      "epoch": 0, "num_epochs": 240, "step": 0}
        self.train_targets = torch.arange(s.num_samples) % s.classes
        # Two images per class: enough rows for WKD-L's CKA cost (every class present).
        n = 2 * s.classes
        self._setup_batch = {"image": torch.randn(n, s.channels, s.image, s.image, generator=g),
                             "target": torch.arange(n) % s.classes, "index": torch.arange(n)}

    def new_student(self):
        st = models.create(self.setup_.student, num_classes=self.setup_.classes, in_channels=self.setup_.channels)
        st.load_state_dict(self.student_state)
        return st

    def distiller(self, method: str, device: torch.device | str = "cpu", options: dict | None = None) -> Distiller:
        """Teacher + fresh student + the method's terms on ``device``, set up exactly as the Trainer does;
        ``options``: parameters added to the terms of those names (``{"wkd_l": {"kernel": "compiled"}}``)."""
        device = torch.device(device)
        terms = [(t["name"], t.get("weight", 1.0),
                  losses.create(t["name"], **{k: v for k, v in t.items() if k not in ("name", "weight")},
                                **(options or {}).get(t["name"], {})))
                 for t in speed_terms(method)]
        d = Distiller(self.new_student(), [self.teacher], terms).to(device)
        on = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self._setup_batch.items()}
        ctx = dict(num_classes=self.setup_.classes, num_samples=self.setup_.num_samples,
                   train_targets=self.train_targets.to(device), device=device,
                   train_batches=lambda: iter([dict(on)]), cache_dir=None)
        d.setup(ctx, {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.batch.items()})
        return d.to(device).train()


def _train_step(distiller: Distiller, opt: torch.optim.Optimizer, batch: dict) -> None:
    total, _, _ = distiller(batch)
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    distiller.after_step()  # memory-bank updates are part of a step


def _bound_fns(task: SyntheticTask):
    """(student CE-only training step, teacher no-grad forward) on the task's batch."""
    student = task.new_student().train()
    opt = torch.optim.SGD(student.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    x, y = task.batch["image"], task.batch["target"]

    def ce_step():
        loss = F.cross_entropy(student(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def teacher_fwd():
        with torch.no_grad():
            task.teacher(x)

    return ce_step, teacher_fwd


def flops(fn) -> int:
    """Matrix-multiply and convolution FLOPs of one call, forward and backward
    (torch.utils.flop_counter; elementwise work is not counted)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure_method(task: SyntheticTask, method: str, steps: int, warmup: int) -> dict:
    """Median seconds of the method's training step and, interleaved with it step by step, of the
    two parts of its lower bound (student CE-only step, teacher no-grad forward). Interleaving puts
    the method and its bound under the same machine load, so their ratio holds on a busy machine.
    Also the same ratio in FLOPs (``flop_ratio``): the part of the time ratio that is the method's
    own arithmetic, which only a cheaper formulation, not a faster kernel, can remove."""
    d = task.distiller(method)
    # lr 0: the SGD step does all its arithmetic (momentum, weight decay) but the weights stay put, so
    # repeated steps on one synthetic batch cannot diverge (they did, to NaN, for CC at lr 0.01).
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    batch = dict(task.batch)
    ce_step, teacher_fwd = _bound_fns(task)
    fns = {"step_s": lambda: _train_step(d, opt, batch), "student_ce_step": ce_step, "teacher_forward": teacher_fwd}
    try:
        out = interleaved_medians(fns, steps, warmup)
        out["flop_ratio"] = flops(fns["step_s"]) / (flops(ce_step) + flops(teacher_fwd))
        return out
    finally:  # the teacher is shared by every method: leave no hooks on it
        for tap in [d.student_tap, *d.teacher_taps]:
            tap.remove()


def step_table(methods: list[str], setup: SpeedSetup = SpeedSetup(), progress=None) -> tuple[dict, list[dict]]:
    """One row per method: median step seconds, its own interleaved lower bound (student CE step +
    teacher forward), ratio = step / bound, and, in a checkout with benchtools/, the project's target
    for the ratio and whether it is met (None without it). The summary
    bound is the median of the per-method bounds (with their min and max, to show the drift)."""
    if setup.steps < 1 or setup.warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got {setup.steps}, {setup.warmup}")
    task = SyntheticTask(setup)
    targets = targets_module
    rows = []
    for m in methods:
        if progress:
            progress(m)
        r = measure_method(task, m, setup.steps, setup.warmup)
        r["bound_s"] = r["student_ce_step"] + r["teacher_forward"]
        r.update(method=m, ratio=r["step_s"] / r["bound_s"], target=targets.ratio_target(m) if targets else None)
        r["met"] = None if r["target"] is None else r["ratio"] <= r["target"]
        rows.append(r)
    bounds = [r["bound_s"] for r in rows]
    bound = {"student_ce_step": statistics.median(r["student_ce_step"] for r in rows),
             "teacher_forward": statistics.median(r["teacher_forward"] for r in rows),
             "lower_bound": statistics.median(bounds), "min": min(bounds), "max": max(bounds)}
    return bound, rows
