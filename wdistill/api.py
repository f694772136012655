"""A few lines of Python: distill any nn.Module into any other (``distill``), or find the recipe
that distils best for your models and data (``auto``)."""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import torch.nn as nn
from torch.utils.data import Dataset

from wdistill.config import load_config
from wdistill.config.schema import AutoSection
from wdistill.data import DATASETS, ImageDataset
from wdistill.engine import Trainer
from wdistill.errors import ConfigError
from wdistill.workflows.auto_report import run_auto

# Config keys a Python call spells as its own arguments (the others are config sections: data={...}).
_ARGUMENTS = {"run.name": "name", "run.out_dir": "out_dir", "run.seed": "seed", "run.device": "device",
              "optim.epochs": "epochs", "optim.lr": "lr", "optim.schedule": "schedule",
              "data.batch_size": "batch_size", "student.taps": "student_taps", "teacher.taps": "teacher_taps",
              "student.view": "student_view", "teacher.view": "teacher_view"}
_SECTION_KEY = re.compile(r"(?<![\w.`])(data|optim|train|auto)\.(\w+)(?!\.\w)")


def _as_python(message: str) -> str:
    """A config error's keys as a Python caller writes them: ``data.num_classes`` becomes
    ``data={'num_classes': ...}``, ``run.name`` the argument ``name``."""
    for key, arg in _ARGUMENTS.items():
        message = re.sub(rf"(?<![\w.`]){re.escape(key)}\b", arg, message)
    return _SECTION_KEY.sub(lambda m: f"{m.group(1)}={{'{m.group(2)}': ...}}", message)


@contextmanager
def python_spelling():
    """Re-raise a ConfigError with its keys spelled as a Python call's arguments."""
    try:
        yield
    except ConfigError as e:
        raise ConfigError(_as_python(str(e))) from None


def _teachers(student, teacher) -> list[nn.Module]:
    """The teachers as a list; a student or teacher that is not an ``nn.Module`` is refused with the fix."""
    teachers = [] if teacher is None else list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    for role, model in [("student", student), *(("teacher", t) for t in teachers)]:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"the {role} must be a torch.nn.Module, got the {type(model).__name__} {model!r:.60}: "
                              "build a zoo model with wdistill.models.create(name, num_classes, in_channels) and "
                              "give a teacher its trained weights with wdistill.models.load_checkpoint(model, path)")
    return teachers


def _raw_config(student, teachers, train_data, loss, epochs, lr, batch_size, schedule, student_taps, teacher_taps,
                student_view, teacher_view, out_dir, name, seed, device, config: dict) -> dict:
    """The config dict a Python call stands for (its models and data are handed in, not built)."""
    config = dict(config)
    if isinstance(teacher_taps, dict) or teacher_taps is None:
        teacher_taps = [teacher_taps] * len(teachers)
    if isinstance(teacher_view, dict) or teacher_view is None:
        teacher_view = [teacher_view] * len(teachers)
    for what, given in (("teacher_taps", teacher_taps), ("teacher_view", teacher_view)):
        if len(given) != len(teachers):
            raise ConfigError(f"{what}: {len(given)} given for {len(teachers)} teacher(s); give one for every "
                              "teacher or a list with one per teacher")
    raw = {"run": {"name": name, "out_dir": out_dir, "seed": seed, "device": device},
           "data": {"name": train_data.name if isinstance(train_data, ImageDataset) and train_data.name in DATASETS
                    else "python",  # data handed in: the recipe comes from the data set object itself
                    "batch_size": batch_size, **config.pop("data", {})},
           "student": {"model": type(student).__name__, "taps": student_taps, "view": student_view},
           "loss": loss,
           "optim": {"epochs": epochs, "lr": lr, "schedule": schedule, **config.pop("optim", {})}}
    if teachers:
        raw["teachers"] = [{"model": type(t).__name__, "taps": tp, "view": v}
                           for t, tp, v in zip(teachers, teacher_taps, teacher_view)]
    raw.update(config)
    return raw


def distill(student: nn.Module, teacher: nn.Module | list[nn.Module] | None, train_data: ImageDataset | Dataset,
            test_data: ImageDataset | Dataset, loss: list[dict] | None = None, *, epochs: int = 10, lr: float = 0.05,
            batch_size: int = 64, schedule: str = "cosine", student_taps: dict | None = None,
            teacher_taps: dict | list[dict] | None = None, student_view: dict | None = None,
            teacher_view: dict | list[dict] | None = None, out_dir: str = "runs", name: str = "distill",
            seed: int = 0, device: str = "auto", resume: bool | str = False, overwrite: bool = False,
            **config) -> dict:
    """Train ``student`` on ``train_data`` with the given loss terms, distilling from ``teacher``.

    ``loss`` is a list like ``[{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9}]``
    (default: that KD recipe, or CE alone without a teacher). Non-zoo models need taps naming
    their stage modules, e.g. ``{"feats": ["stem", "layer1", "layer2"], "embed": "fc:in"}``.
    ``student_view``/``teacher_view``: what each model sees of the same augmented crop (cross-modal
    and privileged-information transfer), e.g. ``student_view={"name": "downsample", "factor": 2}``
    with the teacher on the full image; one view for every teacher or a list, one per teacher.
    Views: ``wdistill.data.views`` (identity, downsample, mask, channels, lowpass, highpass).
    Further keyword arguments are config sections (``data=``, ``train=``, ``optim=``) merged in.
    Returns the run summary; the run directory is ``out_dir/name``. ``resume=True`` continues the
    run there (``"auto"``: if there is one); a stop signal (``train={"stop_signals": [...]}``)
    raises ``wdistill.errors.Preempted`` once last.pt is written.

    ``train_data``/``test_data``: in-memory ``ImageDataset`` splits (augmented with their data set's
    recipe), or any map-style ``torch.utils.data.Dataset`` returning ``(image, target)`` with a PIL
    image, a uint8 or a float tensor (streamed through DataLoader workers, no augmentation unless
    ``data={"crop_padding": ..., "flip": ...}``; ``num_classes`` from ``.classes``/``.targets`` or
    ``data={"num_classes": N}``).

    Example: a resnet8 student distilled with KD (the default recipe) from a resnet20 teacher, for
    one epoch on 256 images of the Fashion-MNIST sample bundled in the package (the teacher here is
    untrained; a real one comes from ``wdistill train`` or ``models.load_checkpoint``).

    >>> import tempfile
    >>> from wdistill import distill, models
    >>> from wdistill.data import bundled_sample
    >>> train = bundled_sample("train").subset(slice(0, 256))
    >>> test = bundled_sample("test").subset(slice(0, 100))
    >>> student = models.create("resnet8", num_classes=10, in_channels=1)
    >>> teacher = models.create("resnet20", num_classes=10, in_channels=1)
    >>> summary = distill(student, teacher, train, test, epochs=1, out_dir=tempfile.mkdtemp(),
    ...                   train={"progress": False})  # doctest: +ELLIPSIS
    data: fmnist_sample -- 256 train / 100 test images, 10 classes, 1 channel; memory path...
    >>> sorted(k for k in summary if k.endswith("top1"))
    ['best_top1', 'final_top1', 'teacher_top1']
    """
    teachers = _teachers(student, teacher)
    if loss is None:
        loss = [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9}] if teachers else [{"name": "ce"}]
    with python_spelling():
        raw = _raw_config(student, teachers, train_data, loss, epochs, lr, batch_size, schedule, student_taps,
                          teacher_taps, student_view, teacher_view, out_dir, name, seed, device, config)
        trainer = Trainer(load_config(raw), student=student, teachers=teachers, data=(train_data, test_data),
                          resume=resume, overwrite=overwrite)
        try:
            return trainer.fit()
        finally:
            trainer.close()  # the caller's models get their forward hooks back off



def auto(student: nn.Module, teacher: nn.Module | list[nn.Module], train_data: ImageDataset | Dataset,
         test_data: ImageDataset | Dataset | None = None, *, methods: list[str] | None = None, epochs: int = 10,
         budget: float | None = None, minutes: float | None = None, seeds: int = 3, finalists: int = 3,
         holdout: float = 0.2, train: int = 0, lr: float = 0.05, batch_size: int = 64, schedule: str = "cosine",
         student_taps: dict | None = None, teacher_taps: dict | list[dict] | None = None, out_dir: str = "runs",
         name: str = "auto", device: str = "auto", **config) -> dict:
    """Find the recipe that distils ``teacher`` into ``student`` best on ``train_data``.

    The vanilla student and each recipe of ``methods`` (default: KD, DKD, WKD-L, WKD-F, WKD-L+WKD-F,
    CRD+KD, WCoRD+KD, FitNet), each with a small grid around its published setting, are compared on
    a stratified ``holdout`` fraction of ``train_data`` (never ``test_data``) by successive halving
    within ``budget`` student epochs (or ``minutes``); the ``finalists`` are repeated over
    ``seeds``. Every trial trains a copy of ``student`` (its initial weights for seed 0). Writes
    ``out_dir/name/report.md`` (which recipes beat vanilla beyond noise, by how much, at what cost),
    ``report.png``, ``report.json`` and ``recommended.yaml``; with ``train`` > 0 the recommended
    recipe is trained on the whole ``train_data`` for that many seeds and scored on ``test_data``.
    Returns the report (``report["recommended"]``, ``report["rows"]``, ``report["trained"]``).
    Search settings: ``wdistill.config.schema.AutoSection``; the method: docs/auto.md.
    """
    teachers = _teachers(student, teacher)
    if not teachers:
        raise ConfigError("auto compares distillers: give the teacher (a trained nn.Module)")
    if train and test_data is None:
        raise ConfigError("train=N scores the recommended recipe on test_data: pass test_data")
    with python_spelling():
        settings = {"methods": methods, "budget": budget, "minutes": minutes, "seeds": seeds,
                    "finalists": finalists, "holdout": holdout}
        auto_cfg = AutoSection(**{k: v for k, v in settings.items() if v is not None})
        base = _raw_config(student, teachers, train_data, [{"name": "ce"}], epochs, lr, batch_size, schedule,
                           student_taps, teacher_taps, None, None, out_dir, name, 0, device, config)
        load_config(base)  # every value checked before the search starts
        data = (train_data, test_data if test_data is not None else train_data)
        return run_auto(base, auto_cfg, Path(out_dir) / name, models=(student, teachers), data=data,
                        train_seeds=train, command=f"wdistill.auto(..., name={name!r})")
