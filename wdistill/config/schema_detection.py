"""The ``task`` of a run and the ``detection:`` section: what changes when a run trains a detector.

``task: detection`` trains torchvision Faster R-CNNs (``detection:<backbone>`` models) on a
COCO-format folder (``data.name: coco``) with the detector's own losses (the ``det`` term) beside
the distillation terms, and scores them with COCOeval (``wdistill.engine.det_trainer``). Every
pairing a detection run cannot honour is refused here, when the config is read (``wdistill config
check`` and before any training), with the key to change.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from wdistill import losses
from wdistill.config.schema_data import Strict
from wdistill.data.registry import DETECTION_DATASETS

TASKS = ("classification", "detection")
Task = Literal["classification", "detection"]
DETECTOR_PREFIX = "detection:"


class DetectionSection(Strict):
    """Settings of ``task: detection`` only (ignored otherwise)."""

    warmup_steps: int = Field(1000, ge=0, description="Linear warm-up of the learning rate over the first optimiser "
                              "steps, from warmup_factor x lr (detectron2's WARMUP_ITERS 1000, factor 0.001); 0: none.")
    warmup_factor: float = Field(0.001, gt=0, le=1, description="Learning-rate factor at step 0 of the warm-up.")
    eval_teacher: bool = Field(True, description="Score the teacher with COCOeval once before training "
                               "(summary teacher_AP...); false saves one evaluation pass.")


def _terms_for(task: str) -> list[str]:
    return [n for n in losses.available() if task in losses.get(n).tasks]


def task_problems(cfg) -> list[str]:
    """What in ``cfg`` (a RunConfig) does not fit its task, each with the fix; empty when it fits."""
    task, out = cfg.task, []
    detection = task == "detection"
    if detection != (cfg.data.name in DETECTION_DATASETS):
        out.append(f"data.name={cfg.data.name} with task={task}: a detection run reads a COCO-format folder "
                   f"(data.name: coco) and a classification run a classification data set; set task: "
                   f"{'detection' if not detection else 'classification'} or change data.name")
    for role, section in [("student", cfg.student)] + [("teacher", s) for s in (cfg.teachers or [cfg.teacher])
                                                        if s is not None]:
        if detection != section.model.startswith(DETECTOR_PREFIX):
            out.append(f"{role}.model={section.model} with task={task}: detection runs detection:<backbone> models "
                       "(resnet18, resnet34, resnet50, resnet101, mobilenet_v3_large) and classification the others")
    for t in cfg.loss:
        tasks = losses.get(t.name).tasks
        if task not in tasks:
            out.append(f"loss term {t.id!r} ({t.name}) cannot apply to {task} (it reads outputs of "
                       f"{' and '.join(tasks)} models); terms for {task}: {', '.join(_terms_for(task))}")
    if detection:
        out += _detection_settings(cfg)
    return out


def _detection_settings(cfg) -> list[str]:
    """The classification-only settings a detection run cannot honour."""
    d, out = cfg.data, []
    unsupported = {"data.crop_padding": d.crop_padding, "data.random_resized_crop": d.random_resized_crop,
                   "data.holdout": d.holdout, "data.factory": d.factory, "student.view": cfg.student.view,
                   "teacher.view": cfg.teacher.view if cfg.teacher else None, "student.taps": cfg.student.taps}
    out += [f"{k} is not used by detection (COCO-format data are resized and flipped by data.options.size/max_size "
            f"and data.flip; the detectors' outputs need no taps): remove it" for k, v in unsupported.items()
            if v not in (None, 0)]
    if cfg.teachers and len(cfg.teachers) > 1:
        out.append("teachers: detection distils from one teacher; give a single 'teacher:' section")
    return out
