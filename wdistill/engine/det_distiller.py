"""Detection's counterpart of the Distiller: a student detector, its teacher and the weighted terms,
run through one ``detection_step``; and the COCOeval of a detector over a loader. Knows terms, not
methods.

What the terms read (``wdistill.losses.base``): the student's and the teacher's RoI class logits,
box regressions and RoI-Align features on the student's sampled proposals, their FPN maps (``fpn``
by name; ``feats``: the levels the RoI pooler reads, finest first), the student's own losses, and
in ``batch`` the RoIs' matched labels as ``target`` (0: background).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from wdistill.data.coco import coco_evaluate
from wdistill.data.views import View
from wdistill.engine.distiller import hold_models
from wdistill.losses.base import SetupContext, Term
from wdistill.models.detection import detection_step


def pooled_levels(model: nn.Module, fpn: dict) -> list[torch.Tensor]:
    """The FPN maps ``model``'s RoI pooler reads, in its order (finest first)."""
    return [fpn[name] for name in model.roi_heads.box_roi_pool.featmap_names]


class DetectionDistiller(nn.Module):
    """A student detector, at most one frozen teacher detector, and weighted loss terms.

    ``forward(batch)`` runs :func:`wdistill.models.detection.detection_step` on the batch's images
    and targets (the teacher's box head on the student's sampled proposals) and returns (total loss,
    {term: weighted value}, {"logits": None, "step": the step's outputs}); no classification accuracy
    is counted. Module names match the classification Distiller's (``student.``, ``teachers.``,
    ``terms.``), so checkpoints, resume and the student file read the same way.
    """

    def __init__(self, student: nn.Module, teachers: list[nn.Module], terms: list[tuple[str, float, Term]]):
        super().__init__()
        if len(teachers) > 1:
            raise ValueError("detection distils from one teacher")
        self.term_names = names = hold_models(self, student, teachers, terms)
        self.weights = {n: w for n, w, _ in terms}
        self.terms = nn.ModuleDict({n: t for n, _, t in terms})
        self.term_teacher = {n: None for n in names}
        self.student_view = View(None)  # detectors see the image itself (views are refused for detection)
        self.teacher_views = nn.ModuleList([View(None) for _ in teachers])

    @property
    def teacher(self) -> nn.Module | None:
        return self.teachers[0] if len(self.teachers) else None

    def train(self, mode: bool = True):
        super().train(mode)
        for t in self.teachers:
            t.eval()
        return self

    def close(self) -> None:
        """Nothing to remove: detectors are read by their parts, without hooks."""

    def stages(self) -> list:
        return []  # the terms with pre-training stages are classification terms

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.student.parameters() if p.requires_grad]
        return params + [p for p in self.terms.parameters() if p.requires_grad]

    def step(self, batch: dict) -> tuple[dict, dict | None, dict]:
        """(student mapping, teacher mapping or None, the terms' batch) of one detection step."""
        out = detection_step(self.student, batch["images"], batch["targets"], self.teacher)
        s = dict(out["student"], feats=pooled_levels(self.student, out["student"]["fpn"]), losses=out["losses"])
        t = None
        if out["teacher"] is not None:
            t = dict(out["teacher"], feats=pooled_levels(self.teacher, out["teacher"]["fpn"]))
        term_batch = {"target": out["roi_labels"], "targets": out["targets"], "proposals": out["proposals"],
                      "image_sizes": out["image_sizes"], "epoch": batch.get("epoch", 0),
                      "num_epochs": batch.get("num_epochs"), "step": batch.get("step", 0)}
        return s, t, term_batch

    def setup(self, ctx_kwargs: dict, probe: dict) -> None:
        """One step on a probe batch (no gradient; the student's BatchNorm statistics are put back
        as they were), then every term builds its parts from it."""
        buffers = {k: v.clone() for k, v in self.student.named_buffers()}
        was = self.student.training
        self.student.train()
        with torch.no_grad():
            s, t, _ = self.step(probe)
        self.student.train(was)
        own = dict(self.student.named_buffers())
        with torch.no_grad():
            for k, v in buffers.items():
                own[k].copy_(v)
        ctx = SetupContext(student_out=s, teacher_out=t, teacher=self.teacher, teacher_tap=None, task="detection",
                           **ctx_kwargs)
        for term in self.terms.values():
            term.setup(ctx)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        s, t, term_batch = self.step(batch)
        parts, total = {}, 0.0
        for name, term in self.terms.items():
            parts[name] = self.weights[name] * term(s, t, term_batch)
            total = total + parts[name]
        return total, parts, {"logits": None, "student": s}

    def after_step(self) -> None:
        """No detection term keeps state across steps (memory banks are classification terms)."""


@torch.no_grad()
def detect(model: nn.Module, loader, amp_ctx=nullcontext, progress: bool = False,
           desc: str = "COCOeval") -> list[dict]:
    """``model``'s detections on every batch of ``loader``, one dict per image (what
    :func:`wdistill.data.coco.coco_evaluate` reads), on the CPU."""
    was = model.training
    model.eval()
    detections = []
    for batch in tqdm(loader, desc=desc, leave=False, disable=None if progress else True):
        with amp_ctx():
            predictions = model(batch["images"])
        for image, target, p in zip(batch["images"], batch["targets"], predictions):
            detections.append({"image_id": target["image_id"], "boxes": p["boxes"].float().cpu(),
                               "scores": p["scores"].float().cpu(), "labels": p["labels"].cpu(),
                               "image_size": tuple(image.shape[-2:])})
    model.train(was)
    return detections


def evaluate_detection(model: nn.Module, loader, coco_gt, image_ids: list[int] | None = None, amp_ctx=nullcontext,
                       progress: bool = False, desc: str = "COCOeval") -> dict[str, float]:
    """COCO box AP (AP, AP50, AP75, APs, APm, APl in [0, 1]; NaN where the split has no box of a
    size range) of ``model``'s detections on every batch of ``loader``, against ``coco_gt``
    restricted to ``image_ids``. Boxes are mapped back from the size the model saw to the file's."""
    return coco_evaluate(coco_gt, detect(model, loader, amp_ctx, progress, desc), image_ids)
