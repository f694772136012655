"""Host syncs of the training step on any device (issue 26): on a GPU from
``torch.cuda.set_sync_debug_mode("warn")`` (every sync, with the Python line that made it; "error"
mode would stop at the first), elsewhere from ``benchtools/host_sync.py``'s record. Checked: each
method's step through the Trainer's own Stepper on a fixed batch (:func:`sync_free`), and the steps of
a real run, loader included (:func:`real_run_syncs`). Warm-up steps are left out: one-off set-up may
read a value once.
"""
from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from benchtools import host_sync
from wdistill import models
from wdistill.data.loader import BatchLoader
from wdistill.engine.loop import Guard, Meter, Stepper
from wdistill.engine.precision import Precision

CHECKED = 3  # steps recorded after the warm-up


@contextmanager
def recording(device: torch.device):
    """Yields a list that fills with one line per host sync inside the block."""
    if device.type != "cuda":
        with host_sync.recording() as found:
            yield found
        return
    found: list[str] = []
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield found
    finally:
        torch.cuda.set_sync_debug_mode("default")
    found.extend(f"{w.filename}:{w.lineno}: {str(w.message).splitlines()[0]}" for w in caught
                 if "synchroniz" in str(w.message))


def trainer_step(d, batch: dict, device: torch.device, clip: float | None = 5.0,
                 precision: str = "auto") -> Callable[[], None]:
    """One training step of ``d`` as the Trainer takes it (``engine.loop.Stepper``): the autocast of
    ``train.precision`` (``precision``), the loss scaler, the device-side meter and non-finite guard, the gradient's
    norm, clipping (``train.clip_grad_norm``, on here so that its branch is checked too), the optimiser
    step and the terms' after-step hooks. Logging, which reads the meter, is not part of it."""
    precision = Precision(precision, device)
    params = [p for p in d.student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4, nesterov=True,
                          fused=precision.fused_optimizer)  # as the Trainer's

    def forward(b):
        total, parts, s_out = d(b)
        return total, parts, s_out["logits"]
    stepper = Stepper(d, forward, opt, precision.scaler(), precision.autocast, 1, params, Meter(device),
                      Guard(list(d.terms), dict(d.weights), device), d.after_step, clip=clip)
    count = itertools.count()
    return lambda: stepper.step(dict(batch), next(count))


def sync_free(step: Callable[[], None], device: torch.device, warmup: int = 2) -> tuple[bool, str | None]:
    """(no host sync in ``CHECKED`` calls of ``step`` after ``warmup``, the first one found)."""
    for _ in range(warmup):
        step()
    with recording(device) as found:
        for _ in range(CHECKED):
            step()
    return not found, (found[0] if found else None)


def real_run_syncs(device: torch.device, work: Path, warmup: int = 2) -> dict:
    """A real run's host syncs: the Trainer (its loop, forward with the epoch, gradient-share probe, Stepper)
    on the bundled Fashion-MNIST sample through the in-memory loader (on the device: its batch copies and
    augmentation), CE + WKD-L + DKD + RKD + CRD from a random resnet8 teacher, one epoch of 10 steps, each
    step after ``warmup`` recorded with the fetch of its batch. Logging (the meter read every
    ``train.log_every`` steps) is set out of reach. Returns ``{"steps": recorded, "syncs": [...]}``."""
    from wdistill.config import load_config
    from wdistill.engine import Trainer
    work.mkdir(parents=True, exist_ok=True)
    teacher = work / "teacher-random.pt"
    torch.manual_seed(0)
    torch.save({"model": models.create("resnet8", num_classes=10, in_channels=1).state_dict()}, teacher)
    cfg = load_config({
        "run": {"name": "syncs", "out_dir": str(work), "seed": 0, "device": device.type},
        "data": {"name": "fmnist_sample", "train_subset": 320, "test_subset": 64, "batch_size": 32},
        "student": {"model": "resnet8"}, "teacher": {"model": "resnet8", "checkpoint": str(teacher)},
        "loss": [{"name": "ce"}, {"name": "wkd_l"}, {"name": "dkd", "warmup": 1}, {"name": "rkd"},
                 {"name": "crd", "weight": 0.8, "num_negatives": 64}],
        "optim": {"epochs": 1, "lr": 0.05}, "train": {"progress": False, "log_every": 1000,
                                                       "channels_last": device.type == "cuda"}})
    found, calls = [], itertools.count(1)
    step, batches = Stepper.step, BatchLoader.__iter__

    def recorded_step(self, batch, i):
        if next(calls) <= warmup:
            return step(self, batch, i)
        with recording(device) as syncs:
            step(self, batch, i)
        found.extend(syncs)

    def recorded_batches(self):
        it, n = batches(self), 0
        while True:
            n += 1
            with recording(device) if self.train and n > warmup + 1 else nullcontext() as syncs:
                batch = next(it, None)
            found.extend(syncs or [])
            if batch is None:
                return
            yield batch
    Stepper.step, BatchLoader.__iter__ = recorded_step, recorded_batches
    try:
        Trainer(cfg, log=lambda m: None, overwrite=True).fit()
    finally:
        Stepper.step, BatchLoader.__iter__ = step, batches
    return {"steps": next(calls) - 1 - warmup, "syncs": list(dict.fromkeys(found))}
