"""A few lines of Python: distill any nn.Module into any other."""
from __future__ import annotations

import torch.nn as nn
from torch.utils.data import Dataset

from wdistill.config import load_config
from wdistill.data import DATASETS, ImageDataset
from wdistill.engine import Trainer
from wdistill.errors import ConfigError


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
    teachers = [] if teacher is None else list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    if loss is None:
        loss = [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9}] if teachers else [{"name": "ce"}]
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
    cfg = load_config(raw)
    trainer = Trainer(cfg, student=student, teachers=teachers, data=(train_data, test_data), resume=resume,
                      overwrite=overwrite)
    try:
        return trainer.fit()
    finally:
        trainer.close()  # the caller's models get their forward hooks back off
