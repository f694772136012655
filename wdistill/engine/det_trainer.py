"""The detection task in the training loop: a Trainer whose data, models, step and evaluation are a
detector's (``task: detection``).

Everything else is the classification Trainer's own code: the run directory and its lock,
``config.yaml``, ``last.pt``/``best.pt`` (best by COCO AP), exact resume after any epoch, the
non-finite guard, progress bars, metrics, "is it helping?" (against the ``det`` term) and the
student file. What differs: COCO-format data streamed in lists (``wdistill.data.det_loader``),
``detection:<backbone>`` models built for the data's categories, :class:`DetectionDistiller` as the
step, a linear learning-rate warm-up counted in optimiser steps (``detection.warmup_steps``), and
COCOeval (AP, AP50, AP75, APs, APm, APl) in the metrics (``test_AP``...) and the summary
(``final_AP``..., ``best_AP``, ``teacher_AP``...). ``train.channels_last`` and ``train.sync_bn`` act as
for classification; ``train.compile`` compiles the student's backbone only (its heads' shapes change
every step).

Under torchrun it is the classification Trainer's scale-out: ``data.batch_size`` is the global
batch, each rank trains on its slice through DistributedDataParallel, and each rank detects on its
share of the evaluation images; rank 0 scores them all with COCOeval and every rank gets the
numbers. As in detectron2 and torchvision's references, each rank's detector losses are averaged
over its own RoIs and anchors and DDP averages the ranks' gradients, and the proposal samplers draw
per rank: one step on N ranks is the same kind of step as on one process, not bit for bit the same.
``train.accumulate`` splits each rank's share into micro-batches in the same sense.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from wdistill.data.coco import STAT_NAMES, coco_evaluate, require_pycocotools
from wdistill.data.det_loader import build_detection_data
from wdistill.engine import ddp
from wdistill.engine.build import build_model, build_terms
from wdistill.engine.det_distiller import DetectionDistiller, detect
from wdistill.engine.trainer import Trainer
from wdistill.errors import ConfigError
from wdistill.models.detection import compile_backbone, require_torchvision


def warmup_factor(step: int, steps: int, factor: float) -> float:
    """detectron2's linear warm-up: ``factor`` at step 0, rising linearly to 1 at ``steps``."""
    if step >= steps:
        return 1.0
    alpha = step / steps
    return factor * (1 - alpha) + alpha


class DetectionTrainer(Trainer):
    """Runs one ``task: detection`` job (see the module docstring). ``data``: optional (train, eval)
    ``CocoDetection`` datasets; ``student``/``teachers``: optional detectors built by the caller."""

    best_metric = "test_AP"

    def _check(self, student, teachers) -> None:
        require_torchvision()
        require_pycocotools()
        super()._check(student, teachers)

    def _build(self, student, teachers, data) -> None:
        cfg = self.cfg
        self.micro_batch, share = ddp.loader_share(cfg.data, cfg.train.accumulate, self.rank, self.world_size, self.log)
        torch.manual_seed(cfg.run.seed)
        self.data = build_detection_data(cfg.data, cfg.run.seed, self.device, datasets=data,
                                         progress=cfg.train.progress and self.rank == 0,
                                         shield_signals=tuple(cfg.train.stop_signals), **share)
        self.train_set, self.test_set = self.data.train_set, self.data.test_set
        k = self.data.num_classes
        self.student = student if student is not None else build_model(cfg.student, k, 3, "student")
        self.teachers = teachers if teachers is not None else [build_model(s, k, 3, "teacher")
                                                               for s in cfg.teacher_sections()]
        try:
            self._assemble(lambda: DetectionDistiller(self.student, self.teachers, build_terms(cfg)))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if cfg.train.compile:
            compile_backbone(self.student)
        self.train_loader, self.test_loader = self.data.train_loader, self.data.test_loader
        self.progress = cfg.train.progress and self.rank == 0
        self.scaler = self.precision.scaler()
        self._fresh_progress()

    def _prepare(self, batch: dict) -> dict:
        """Detection batches are lists of images, which the detector batches itself: under
        ``train.channels_last`` its weights are in that format, so its convolutions' outputs are."""
        return batch

    def setup_terms(self) -> None:
        """Probe one training batch and let every term build its parts; ``num_classes`` counts the
        background (the detectors' logit width), the statistics batches are un-flipped."""
        probe = next(iter(self.train_loader))
        ctx = dict(num_classes=self.data.num_classes + 1, num_samples=self.data.num_samples, train_targets=None,
                   device=self.device, train_batches=self.data.plain_batches,
                   cache_dir=str(Path(self.cfg.run.out_dir) / "cache"))
        self.distiller.setup(ctx, probe)
        self.distiller.to(self.device)
        self._terms_ready = True

    def run_loop(self, stepper, desc: str, where: str, first_step: int = 0, start: int = 0, control=None) -> dict:
        """The classification loop, with the learning rate warmed up over the first optimiser steps
        (from the step index, so a resumed run warms up exactly as an uninterrupted one)."""
        w = self.cfg.detection
        if w.warmup_steps > first_step:
            groups = self.optimizer.param_groups
            base, inner = [g["lr"] for g in groups], stepper.step

            def step(batch, i):
                f = warmup_factor(i, w.warmup_steps, w.warmup_factor)
                for g, lr in zip(groups, base):
                    g["lr"] = lr * f
                inner(batch, i)
            stepper.step = step
        return super().run_loop(stepper, desc, where, first_step, start, control)

    def _train_epoch(self, epoch: int) -> tuple[dict, float]:
        row, before = super()._train_epoch(epoch)
        row.pop("train_top1", None)  # a detection step counts no classification accuracy
        return row, before

    def evaluate(self, model, desc: str = "COCOeval") -> dict[str, float]:
        """COCO box AP of ``model`` on the evaluation split: each rank detects on its share, rank 0
        scores every rank's detections, and every rank returns its numbers."""
        parts = self.vote.gather(detect(model, self.test_loader, self.amp_ctx, self.progress, desc))
        stats = None
        if parts is not None:
            stats = coco_evaluate(self.data.coco_gt, [d for part in parts for d in part], self.data.eval_image_ids)
        return self.vote.all_gather(stats)[0]

    def evaluate_teacher(self) -> dict | None:
        """The teacher's COCO AP (``detection.eval_teacher``), logged."""
        if not (self.teachers and self.cfg.detection.eval_teacher):
            return None
        teacher = self.evaluate(self.teachers[0], "COCOeval teacher")
        if self.rank == 0:
            self.log("teacher: " + " ".join(f"{k}={v:.4f}" for k, v in teacher.items()))
        return teacher

    def evaluate_student(self) -> dict[str, float]:
        return self.evaluate(self.student)

    def _summary(self, teacher: dict | None, t0: float) -> dict:
        last = self.history[-1] if self.history else {}
        summary = {"run": self.cfg.run.name, "task": "detection",
                   **{f"final_{k}": _finite(last.get(f"test_{k}")) for k in STAT_NAMES},
                   "best_AP": self.best_top1 if self.history and self.best_top1 >= 0 else None,
                   "epochs": self.cfg.optim.epochs, "steps_per_epoch": len(self.train_loader),
                   **{f"teacher_{k}": _finite(teacher[k]) if teacher else None for k in STAT_NAMES},
                   "train_seconds": sum(r["seconds"] for r in self.history), "session_seconds": time.time() - t0,
                   "world_size": self.world_size, "backend": ddp.backend()}
        return summary


def _finite(v):
    """JSON has no NaN: a size range without boxes (NaN AP) is written as null."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v
