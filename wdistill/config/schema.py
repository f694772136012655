"""The run configuration as pydantic sections: every key, its type, default and meaning.

Loading a file with overrides is ``wdistill.config.load``; docs/config.md is generated from these
sections (``wdistill.config.reference``)."""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from wdistill import losses  # importing the package registers every term
from wdistill.config.training import OptimSection, TrainSection
from wdistill.data.registry import DATASETS
from wdistill.data.registry import options as dataset_options
from wdistill.data.views import ViewSpec
from wdistill.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


__all__ = ["RunSection", "DataSection", "ModelSection", "TermSection", "OptimSection", "TrainSection", "RunConfig"]


class RunSection(_Strict):
    name: str = Field("run", description="Run name; the run directory is out_dir/name (sub/dir allowed, never "
                      "absolute or '..').")
    out_dir: str = Field("runs", description="Directory that holds run directories (and the WKD-L cost cache, "
                         "out_dir/cache).")
    seed: int = Field(0, ge=0, description="Seed of weight initialisation, data order and augmentation.")
    device: str = Field("auto", description="auto (first GPU if any, else CPU) | cpu | cuda | cuda:N | mps.")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        parts = v.split("/")
        if len(v) > 250 or not all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]*", p) for p in parts):
            raise ValueError(f"run.name {v!r} must be a plain directory name (letters, digits, _ . + = -; "
                             "sub/dir allowed), never an absolute path or '..': the run directory is "
                             "run.out_dir/run.name")
        return v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"run.device {v!r} is not one of auto, cpu, cuda, cuda:N, mps")
        return v


class DataSection(_Strict):
    name: str = Field("fmnist_sample", description="Data set: one of `wdistill list` (fmnist_sample is the "
                      "Fashion-MNIST sample bundled in the package), image_folder, or python (with factory).")
    root: str | None = Field(None, description="Directory (or archive) of the data set; not needed for "
                             "fmnist_sample.")
    train_subset: int | None = Field(None, gt=0, description="Keep only the first N training images.")
    test_subset: int | None = Field(None, gt=0, description="Keep only the first N test images.")
    batch_size: int = Field(64, gt=0, description="Global batch of one optimiser step: under torchrun each of N "
                            "processes takes batch_size / N rows (it must divide).")
    eval_batch_size: int = Field(256, gt=0, description="Batch size of evaluation and of statistics passes "
                                 "(e.g. the WKD-L cost), split over processes.")
    crop_padding: int | None = Field(None, ge=0, description="Training augmentation: pad by this many pixels, then "
                                     "random crop back to size (0: no crop). None: the data set's own recipe "
                                     "(the run log states it).")
    flip: bool | None = Field(None, description="Training augmentation: random horizontal flip. None: the data "
                              "set's own recipe.")
    random_resized_crop: int | None = Field(None, gt=0, description="ImageNet recipe: RandomResizedCrop to "
                                            "this size in training, centre crop in evaluation (needs "
                                            "crop_padding: 0; store or resize the images larger, e.g. "
                                            "options.size 256 with 224 here).")
    rrc_scale: tuple[float, float] = Field((0.08, 1.0), description="RandomResizedCrop area range.")
    rrc_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop aspect-ratio range.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options of the data set's loader "
                                    "(`wdistill list` shows each data set's), e.g. {protocol: kd_v1}.")
    loader: Literal["auto", "memory", "stream"] = Field(
        "auto", description="memory: uint8 tensors in RAM with batched augmentation (fast path); stream: "
        "DataLoader workers decode and crop; auto: memory when the decoded split fits in memory_limit_gb.")
    memory_limit_gb: float = Field(4.0, gt=0, description="auto loader: largest decoded data kept in memory.")
    workers: int | None = Field(None, ge=0, description="Streaming worker processes (None: the CPU cores, at "
                                "most 8, divided over processes).")
    prefetch_factor: int = Field(2, gt=0, description="Batches each streaming worker prepares ahead.")
    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="An image that cannot be read (truncated, empty, not an image). error: stop, "
        "naming every bad file found so far (the in-memory path checks all before training; a streamed run "
        "writes last.pt first, so --resume continues after the fix). skip: use the next readable sample in its "
        "place (deterministic), count it (metrics: skipped_images) and name the file in the log. `wdistill data "
        "check CONFIG` lists every bad file in one pass.")
    factory: str | None = Field(None, description="name: python -- 'pkg.module:function' returning (train, test) "
                                "torch Datasets of (image, target).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the factory.")
    num_classes: int | None = Field(None, gt=0, description="Class count of a user Dataset that has no "
                                    "`classes` or `targets`.")
    mean: tuple[float, ...] | None = Field(None, description="User data: per-channel mean of uint8/PIL images, "
                                           "in [0, 1] units (give std too).")
    std: tuple[float, ...] | None = Field(None, description="User data: per-channel std, in [0, 1] units.")

    @model_validator(mode="after")
    def _one_crop(self):
        if self.random_resized_crop is not None and self.crop_padding:
            raise ValueError(f"data.crop_padding={self.crop_padding} and data.random_resized_crop="
                             f"{self.random_resized_crop} both crop: set data.crop_padding: 0 for the ImageNet recipe")
        if self.factory is not None and self.name != "python":
            raise ValueError(f"data.factory is for data.name: python (got name {self.name!r})")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give data.mean and data.std together (per-channel values in [0, 1] units)")
        return self

    @model_validator(mode="after")
    def _options_fit_the_data_set(self):
        # Checked here, before any work: a preset written for one data set (configs/fmnist/* set
        # protocol/quick/eval_split) must not fail deep inside the loader when data.name changes.
        if self.name not in DATASETS and self.name != "python":
            raise ValueError(f"unknown data set {self.name!r}; available: {', '.join(sorted(DATASETS))}, or python "
                             "(a user factory); `wdistill list` shows their options")
        if self.name in DATASETS:
            unknown = sorted(set(self.options) - set(dataset_options(self.name)))
            if unknown:
                raise ValueError(
                    f"data.options sets {', '.join(unknown)}, which data set {self.name!r} does not take (its "
                    f"options: {', '.join(dataset_options(self.name)) or 'none'}). They come from the config file, "
                    "which "
                    f"was written for another data set: delete them there, or override the whole mapping on the "
                    f"command line, e.g. data.options={{}}"
                )
        return self

    def crop_kwargs(self) -> dict[str, Any]:
        """The resized-crop settings every BatchLoader of a run takes (eval loaders centre-crop)."""
        return dict(resized_crop=self.random_resized_crop, rrc_scale=self.rrc_scale, rrc_ratio=self.rrc_ratio)


class ModelSection(_Strict):
    """``model``: a zoo name, ``timm:<name>``, ``torchvision:<name>`` or ``"pkg.module:factory"``
    (called with ``kwargs``, plus num_classes/in_channels when it accepts them).
    ``checkpoint``: trained weights loaded strictly (``cache:REL`` = wdistill's cache dir, where
    ``wdistill teachers fetch`` puts the published teachers). ``pretrained``: initial weights for a
    timm/torchvision/factory model, a local file or ``true`` for the cache (never downloaded).
    ``taps``: feats/preact/embed module paths; default: declared by zoo models, else automatic."""

    model: str = Field(
        description="Architecture: a zoo name from `wdistill list`, timm:<name>, "
        "torchvision:<name> or 'pkg.module:factory'."
    )
    checkpoint: str | None = Field(
        None,
        description="Weights to load (required for a teacher): a run's "
        "student.pt, a published checkpoint, or cache:REL in wdistill's cache.",
    )
    pretrained: str | bool | None = Field(
        None,
        description="Initial weights of a timm/torchvision/factory "
        "model: a local file, or true for the cache (never downloaded).",
    )
    taps: dict[str, Any] | None = Field(
        None,
        description="Feature taps: {feats: [module paths], preact: [...], "
        "embed: 'module:in'}; zoo models declare theirs, others are found "
        "automatically (`wdistill inspect MODEL`).",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the model constructor or factory."
    )
    view: ViewSpec | None = Field(
        None,
        description="What this model sees of each image: a fixed transform "
        "applied after the shared augmentation (same crop for teacher and student), "
        "e.g. {name: downsample, factor: 2}; None: the image itself. Names: identity, "
        "downsample, mask, channels, lowpass, highpass (wdistill.data.views).",
    )

    @field_validator("model")
    @classmethod
    def _model_spec(cls, v: str) -> str:
        head, sep, tail = v.partition(":")
        if sep and (not head or not tail):
            raise ValueError("model must be a zoo name, timm:<name>, torchvision:<name> or 'pkg.module:factory'")
        return v


class TermSection(BaseModel):
    """One loss term: ``name``, ``weight`` and the term's own parameters as further keys.

    The parameters are validated and coerced against the term's ``__init__`` signature, and the
    defaults are filled in, so ``config.yaml`` records every value in force."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(
        description="Loss term: ce or a method of `wdistill list`; its parameters are further "
        "keys of the same item, typed by the method (see the method parameters below)."
    )
    id: str | None = Field(
        None,
        description="Key of the term in logs, metrics, curves and checkpoints "
        "(default: its name). Give two terms of one method different ids, e.g. "
        "{name: kd, id: kd_t2, T: 2} and {name: kd, id: kd_t8, T: 8}.",
    )
    weight: float = Field(1.0, ge=0, allow_inf_nan=False, description="Weight of the term in the total loss.")

    @model_validator(mode="after")
    def _typed_params(self):
        try:
            resolved = losses.registry.resolve_params(self.name, dict(self.model_extra or {}))
        except ValueError as e:
            raise ValueError(str(e)) from None
        self.__pydantic_extra__ = resolved
        if self.id is None:
            self.id = self.name
        elif not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", self.id):
            raise ValueError(
                f"loss term id {self.id!r} must be letters, digits, '_' or '-' (no dots: it keys "
                "checkpoints), e.g. kd_t8"
            )
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RunConfig(_Strict):
    run: RunSection = Field(default_factory=RunSection, description="Name, output directory, seed, device.")
    data: DataSection = Field(default_factory=DataSection, description="Data set, batches and augmentation.")
    student: ModelSection = Field(description="The model trained (required).")
    teacher: ModelSection | None = Field(None, description="The frozen teacher (distill needs it).")
    teachers: list[ModelSection] | None = Field(
        None,
        description="An ensemble of teachers instead: logit "
        "terms read their mean distribution, representation terms get "
        "one instance per teacher, weighted 1/n.",
    )
    loss: list[TermSection] = Field(
        default_factory=lambda: [TermSection(name="ce")], description="Weighted loss terms, summed."
    )
    optim: OptimSection = Field(default_factory=OptimSection, description="SGD and its schedule.")
    train: TrainSection = Field(
        default_factory=TrainSection, description="Precision, memory format, scale-out, logging."
    )

    @field_validator("loss")
    @classmethod
    def _non_empty(cls, v):
        if not v:
            raise ValueError("loss needs at least one term, e.g. [{name: ce}]")
        ids = [t.id for t in v]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(
                f"loss terms share the id {', '.join(map(repr, dup))}: give each an `id`, e.g. "
                f"{{name: {dup[0]}, id: {dup[0]}_2, ...}} (the id keys logs and checkpoints)"
            )
        return v

    def teacher_sections(self) -> list[ModelSection]:
        if self.teacher and self.teachers:
            raise ConfigError("give either 'teacher' or 'teachers' (an ensemble), not both")
        return list(self.teachers or ([self.teacher] if self.teacher else []))
