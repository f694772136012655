"""The run configuration as pydantic sections: every key, its type, default and meaning.

Loading a file with overrides is ``wdistill.config.load``; docs/config.md is generated from these
sections (``wdistill.config.reference``). The data section is in ``schema_data.py``."""
from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from wdistill import losses  # importing the package registers every term
from wdistill.config.schema_data import DataSection, Strict
from wdistill.config.schema_detection import DetectionSection, Task, task_problems
from wdistill.config.training import OptimSection, TrainSection
from wdistill.data.views import ViewSpec
from wdistill.errors import ConfigError

# The recipes `wdistill auto` tries by default: the logit, Wasserstein and contrastive families.
AUTO_METHODS = ("kd", "dkd", "wkd_l", "wkd_f", "wkd_lf", "crd_kd", "wcord_kd", "fitnet")


__all__ = ["RunSection", "DataSection", "ModelSection", "TermSection", "OptimSection", "TrainSection",
           "AutoSection", "RunConfig"]


class RunSection(Strict):
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


class ModelSection(Strict):
    """``model``: a zoo name, ``timm:<name>``, ``torchvision:<name>`` or ``"pkg.module:factory"``
    (called with ``kwargs``, plus num_classes/in_channels when it accepts them).
    ``checkpoint``: trained weights loaded strictly (``cache:REL`` = wdistill's cache dir, where
    ``wdistill teachers fetch`` puts the published teachers). ``pretrained``: initial weights for a
    timm/torchvision/factory model, a local file or ``true`` for the cache (never downloaded).
    ``taps``: feats/preact/embed module paths; default: declared by zoo models, else automatic."""

    model: str = Field(description="Architecture: a zoo name from `wdistill list`, timm:<name>, "
                       "torchvision:<name> or 'pkg.module:factory'.")
    checkpoint: str | None = Field(None, description="Weights to load (required for a teacher): a run's "
                                   "student.pt, a published checkpoint, or cache:REL in wdistill's cache.")
    pretrained: str | bool | None = Field(None, description="Initial weights of a timm/torchvision/factory "
                                          "model: a local file, or true for the cache (never downloaded).")
    taps: dict[str, Any] | None = Field(None, description="Feature taps: {feats: [module paths], preact: [...], "
                                        "embed: 'module:in'}; zoo models declare theirs, others are found "
                                        "automatically (`wdistill inspect MODEL`).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the model "
                                   "constructor or factory.")
    view: ViewSpec | None = Field(None, description="What this model sees of each image: a fixed transform "
                                  "applied after the shared augmentation (same crop for teacher and student), "
                                  "e.g. {name: downsample, factor: 2}; None: the image itself. Names: identity, "
                                  "downsample, mask, channels, lowpass, highpass (wdistill.data.views).")

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
    name: str = Field(description="Loss term: ce or a method of `wdistill list`; its parameters are further "
                      "keys of the same item, typed by the method (see the method parameters below).")
    id: str | None = Field(None, description="Key of the term in logs, metrics, curves and checkpoints "
                           "(default: its name). Give two terms of one method different ids, e.g. "
                           "{name: kd, id: kd_t2, T: 2} and {name: kd, id: kd_t8, T: 8}.")
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
            raise ValueError(f"loss term id {self.id!r} must be letters, digits, '_' or '-' (no dots: it keys "
                             "checkpoints), e.g. kd_t8")
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class AutoSection(Strict):
    """``wdistill auto``: which recipes it tries on a held-out part of the training data and the
    budget it may spend (docs/auto.md)."""

    methods: list[str] = Field(default_factory=lambda: list(AUTO_METHODS), description="Recipes tried beside the "
                               "vanilla student (names of `wdistill list --presets`' recipes, e.g. kd, wkd_l).")
    grid: bool = Field(True, description="Try each recipe's small grid of weights/temperatures around its "
                       "published setting; false: the published setting only.")
    holdout: float = Field(0.2, gt=0, lt=1, description="Fraction of the training data held out (stratified) to "
                           "compare the candidates; the test split is never used.")
    budget: float | None = Field(None, gt=0, description="Student epochs the search may spend, all candidates and "
                                 "seeds together (None: what the plan needs); the grid and then the seeds shrink "
                                 "to fit.")
    minutes: float | None = Field(None, gt=0, description="Wall-clock limit: no rung starts after it (the best so "
                                  "far is reported).")
    eta: int = Field(3, ge=2, description="Successive halving: each rung keeps the best 1/eta of the candidates.")
    min_epochs: int = Field(1, ge=1, description="Epochs of the first rung; rungs at min_epochs * eta^k.")
    finalists: int = Field(3, ge=1, description="Candidates carried to the full schedule and repeated over seeds.")
    seeds: int = Field(3, ge=1, description="Seeds of each finalist and of the vanilla student.")


class RunConfig(Strict):
    task: Task = Field("classification", description="classification, or detection: torchvision Faster R-CNNs "
                       "(detection:<backbone>) on a COCO-format folder (data.name: coco), scored by COCOeval.")
    run: RunSection = Field(default_factory=RunSection, description="Name, output directory, seed, device.")
    data: DataSection = Field(default_factory=DataSection, description="Data set, batches and augmentation.")
    student: ModelSection = Field(description="The model trained (required).")
    teacher: ModelSection | None = Field(None, description="The frozen teacher (distill needs it).")
    teachers: list[ModelSection] | None = Field(None, description="An ensemble of teachers instead: logit "
                                                "terms read their mean distribution, representation terms get "
                                                "one instance per teacher, weighted 1/n.")
    loss: list[TermSection] = Field(default_factory=lambda: [TermSection(name="ce")],
                                    description="Weighted loss terms, summed.")
    optim: OptimSection = Field(default_factory=OptimSection, description="SGD and its schedule.")
    train: TrainSection = Field(default_factory=TrainSection, description="Precision, memory format, "
                                "scale-out, logging.")
    auto: AutoSection = Field(default_factory=AutoSection, description="`wdistill auto`'s search (ignored by "
                              "train and distill).")
    detection: DetectionSection = Field(default_factory=DetectionSection, description="Settings of task: "
                                        "detection (learning-rate warm-up in steps, teacher evaluation).")

    @model_validator(mode="after")
    def _fits_its_task(self):
        problems = task_problems(self)
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    @field_validator("loss")
    @classmethod
    def _non_empty(cls, v):
        if not v:
            raise ValueError("loss needs at least one term, e.g. [{name: ce}]")
        ids = [t.id for t in v]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"loss terms share the id {', '.join(map(repr, dup))}: give each an `id`, e.g. "
                             f"{{name: {dup[0]}, id: {dup[0]}_2, ...}} (the id keys logs and checkpoints)")
        return v

    def teacher_sections(self) -> list[ModelSection]:
        if self.teacher and self.teachers:
            raise ConfigError("give either 'teacher' or 'teachers' (an ensemble), not both")
        return list(self.teachers or ([self.teacher] if self.teacher else []))
