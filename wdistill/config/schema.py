"""The run configuration as pydantic sections: every key, its type, default and meaning.

Loading a file with overrides is ``wdistill.config.load``; docs/config.md is generated from these
sections (``wdistill.config.reference``). The data section is in ``schema_data.py``."""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from wdistill import losses  # importing the package registers every term
from wdistill.config.schema_data import DataSection, Strict
from wdistill.data.views import ViewSpec
from wdistill.errors import ConfigError

# The recipes `wdistill auto` tries by default: the logit, Wasserstein and contrastive families.
AUTO_METHODS = ("kd", "dkd", "wkd_l", "wkd_f", "wkd_lf", "crd_kd", "wcord_kd", "fitnet")


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


class OptimSection(Strict):
    epochs: int = Field(240, ge=1, description="Training epochs (the CIFAR-100 recipe: 240).")
    lr: float = Field(0.05, gt=0, allow_inf_nan=False, description="Initial SGD learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(False, description="Nesterov momentum.")
    weight_decay: float = Field(5e-4, ge=0, allow_inf_nan=False, description="SGD weight decay.")
    schedule: Literal["multistep", "cosine", "constant"] = Field("multistep", description="Learning-rate "
                                                                 "schedule.")
    milestones: list[int] = Field(default_factory=lambda: [150, 180, 210], description="multistep: increasing "
                                  "epochs at which the rate is multiplied by gamma.")
    gamma: float = Field(0.1, gt=0, allow_inf_nan=False, description="multistep: factor at each milestone.")
    warmup_epochs: int = Field(0, ge=0, description="Linear warm-up epochs before the schedule (< epochs).")

    @model_validator(mode="after")
    def _schedule_fits(self):
        if any(m < 1 for m in self.milestones) or self.milestones != sorted(self.milestones):
            raise ValueError(f"optim.milestones {self.milestones} must be increasing epochs >= 1")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise ValueError(f"optim.warmup_epochs={self.warmup_epochs} must be below optim.epochs={self.epochs}")
        return self


class TrainSection(Strict):
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Arithmetic of the forward pass. auto: bfloat16 autocast on a CUDA GPU that has it "
        "(Ampere and later), float16 autocast with loss scaling on older CUDA GPUs, float32 on CPU and MPS. "
        "fp16 always scales the loss. The OT solvers run in float32 inside any of them.")
    tf32: bool = Field(False, description="TensorFloat-32 for float32 matrix products and convolutions on CUDA "
                       "(Ampere and later). Off: float32 stays float32, so the OT solvers' products (Sinkhorn, "
                       "CKA, covariances), which run in float32 inside autocast, keep their 23-bit mantissa and a "
                       "precision=fp32 run matches the CPU; under bf16/fp16 autocast it changes little else.")
    channels_last: bool = Field(False, description="channels_last memory format (usually faster on CPU and GPU).")
    compile: bool = Field(False, description="torch.compile the student.")
    sync_bn: bool = Field(False, description="SyncBatchNorm over all processes (GPU runs under torchrun).")
    tensorboard: bool = Field(False, description="Also log to run_dir/tb (needs the tensorboard extra).")
    progress: bool = Field(True, description="Progress bars (shown on a terminal only).")
    eval_every: int = Field(1, gt=0, description="Evaluate on the test split every N epochs (and after the last).")
    accumulate: int = Field(1, ge=1, description="Gradient accumulation: each optimiser step sums this many "
                            "micro-batches (batch_size stays the batch of one step).")
    log_every: int = Field(50, ge=1, description="Loss, accuracy and the non-finite check are read from the "
                           "device (a host sync) every this many steps.")
    max_steps: int | None = Field(None, gt=0, description="Stop each epoch after this many steps (smoke tests "
                                  "of large presets); None: the whole epoch.")
    stop_after: int | None = Field(None, gt=0, description="Pause after this many epochs: last.pt is written and "
                                   "the run continues later (--resume, or a larger value); the schedule still spans "
                                   "optim.epochs (`wdistill auto` trains candidates rung by rung this way).")
    grad_share: bool = Field(True, description="Once per epoch, measure each loss term's gradient norm on the "
                             "student (one extra backward per term) and record its share (metrics grad_share_<id>); "
                             "warn when a term's is under 1% or over 100x the cross-entropy's.")

    @model_validator(mode="before")
    @classmethod
    def _amp_is_precision(cls, data):
        """``amp``, precision's earlier name: true meant half precision (now bf16), false float32."""
        if isinstance(data, dict) and "amp" in data:
            data = dict(data)
            amp = data.pop("amp")
            if "precision" in data:
                raise ValueError("train.amp and train.precision both given: keep precision (amp is its old name)")
            data["precision"] = "bf16" if amp else "fp32"
        return data


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
