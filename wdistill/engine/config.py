"""Run configuration: one YAML file, validated by pydantic, with ``key=value`` overrides."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSection(_Strict):
    name: str = Field("run", description="Run name; the run directory is out_dir/name.")
    out_dir: str = Field("runs", description="Directory that holds run directories (and the WKD-L cost cache, "
                         "out_dir/cache).")
    seed: int = Field(0, description="Seed of weight initialisation, data order and augmentation.")
    device: str = Field("auto", description="auto (first GPU if any, else CPU) | cpu | cuda | cuda:N | mps.")


class DataSection(_Strict):
    name: str = Field("fmnist_sample", description="Data set: one of `wdistill list` (fmnist_sample is the "
                      "Fashion-MNIST sample bundled in the package).")
    root: str | None = Field(None, description="Directory (or archive) of the data set; not needed for "
                             "fmnist_sample.")
    train_subset: int | None = Field(None, description="Keep only the first N training images.")
    test_subset: int | None = Field(None, description="Keep only the first N test images.")
    batch_size: int = Field(64, gt=0, description="Training batch size (global: split over processes "
                            "under torchrun).")
    eval_batch_size: int = Field(256, gt=0, description="Batch size of evaluation and of statistics passes "
                                 "(e.g. the WKD-L cost).")
    crop_padding: int = Field(4, ge=0, description="Training augmentation: pad by this many pixels, then "
                              "random crop back to size (0: no crop).")
    flip: bool = Field(True, description="Training augmentation: random horizontal flip.")
    # ImageNet recipe: training RandomResizedCrop to this size, evaluation centre crop to it
    # (store the images larger, e.g. options.size 256 with random_resized_crop 224).
    random_resized_crop: int | None = Field(None, gt=0, description="ImageNet recipe: RandomResizedCrop to "
                                            "this size in training, centre crop in evaluation (needs "
                                            "crop_padding: 0).")
    rrc_scale: tuple[float, float] = Field((0.08, 1.0), description="RandomResizedCrop area range.")
    rrc_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop aspect-ratio range.")
    options: dict[str, Any] = Field(default_factory=dict, description="Options of the data set's loader "
                                    "(`wdistill list` shows each data set's), e.g. {protocol: kd_v1}.")

    @model_validator(mode="after")
    def _one_crop(self):
        if self.random_resized_crop is not None and self.crop_padding:
            raise ValueError(f"data.crop_padding={self.crop_padding} and data.random_resized_crop="
                             f"{self.random_resized_crop} both crop: set data.crop_padding: 0 for the ImageNet recipe")
        return self

    @model_validator(mode="after")
    def _known_data_and_options(self):
        # Checked here, before any work: a preset written for one data set (configs/fmnist/* set
        # protocol/quick/eval_split) must not fail deep inside the loader when data.name changes.
        from ..data.registry import DATASETS, options

        if self.name not in DATASETS:
            raise ValueError(f"unknown data set {self.name!r}; available: {', '.join(sorted(DATASETS))} "
                             "(`wdistill list` shows their options)")
        unknown = sorted(set(self.options) - set(options(self.name)))
        if unknown:
            raise ValueError(
                f"data.options sets {', '.join(unknown)}, which data set {self.name!r} does not take (its options: "
                f"{', '.join(options(self.name)) or 'none'}). They come from the config file, which was written for "
                f"another data set: delete them there, or override the whole mapping on the command line, e.g. "
                f"data.options={{}}")
        return self

    def crop_kwargs(self) -> dict[str, Any]:
        """The resized-crop settings every BatchLoader of a run takes (eval loaders centre-crop)."""
        return dict(resized_crop=self.random_resized_crop, rrc_scale=self.rrc_scale, rrc_ratio=self.rrc_ratio)


class ModelSection(_Strict):
    model: str = Field(description="Architecture: a zoo name from `wdistill list`.")
    checkpoint: str | None = Field(None, description="Weights to load (required for a teacher): a run's "
                                   "student.pt or a published checkpoint.")
    taps: dict[str, Any] | None = Field(None, description="Feature taps for a non-zoo model: {feats: [module "
                                        "names], preact: bool, embed: 'module:in'}; zoo models know theirs.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments of the model "
                                   "constructor.")


class TermSection(BaseModel):
    """One loss term: ``name``, ``weight`` and the term's own parameters as further keys."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="Loss term: ce or a method of `wdistill list`; its parameters are further "
                      "keys of the same item (see the method parameters below).")
    weight: float = Field(1.0, description="Weight of the term in the total loss.")

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OptimSection(_Strict):
    epochs: int = Field(240, ge=0, description="Training epochs (the CIFAR-100 recipe: 240).")
    lr: float = Field(0.05, gt=0, description="Initial SGD learning rate.")
    momentum: float = Field(0.9, description="SGD momentum.")
    nesterov: bool = Field(False, description="Nesterov momentum.")
    weight_decay: float = Field(5e-4, description="SGD weight decay.")
    schedule: Literal["multistep", "cosine", "constant"] = Field("multistep", description="Learning-rate "
                                                                 "schedule.")
    milestones: list[int] = Field(default_factory=lambda: [150, 180, 210], description="multistep: epochs "
                                  "at which the rate is multiplied by gamma.")
    gamma: float = Field(0.1, description="multistep: factor at each milestone.")
    warmup_epochs: int = Field(0, description="Linear warm-up epochs before the schedule.")


class TrainSection(_Strict):
    amp: bool = Field(False, description="Mixed precision (bfloat16 on CPU, float16 with loss scaling on GPU).")
    channels_last: bool = Field(False, description="channels_last memory format (usually faster on CPU and GPU).")
    compile: bool = Field(False, description="torch.compile the student.")
    sync_bn: bool = Field(False, description="SyncBatchNorm over all processes (GPU runs under torchrun).")
    tensorboard: bool = Field(False, description="Also log to run_dir/tb (needs the tensorboard extra).")
    progress: bool = Field(True, description="Progress bars (shown on a terminal only).")
    eval_every: int = Field(1, gt=0, description="Evaluate on the test split every N epochs (and after the last).")


class RunConfig(_Strict):
    run: RunSection = Field(default_factory=RunSection, description="Name, output directory, seed, device.")
    data: DataSection = Field(default_factory=DataSection, description="Data set, batches and augmentation.")
    student: ModelSection = Field(description="The model trained (required).")
    teacher: ModelSection | None = Field(None, description="The frozen teacher (distill needs it).")
    teachers: list[ModelSection] | None = Field(None, description="An ensemble of teachers instead; "
                                                "their logits are averaged.")
    loss: list[TermSection] = Field(default_factory=lambda: [TermSection(name="ce")],
                                    description="Weighted loss terms, summed.")
    optim: OptimSection = Field(default_factory=OptimSection, description="SGD and its schedule.")
    train: TrainSection = Field(default_factory=TrainSection, description="Precision, memory format, "
                                "logging.")

    @field_validator("loss")
    @classmethod
    def _non_empty(cls, v):
        if not v:
            raise ValueError("loss needs at least one term, e.g. [{name: ce}]")
        return v

    def teacher_sections(self) -> list[ModelSection]:
        if self.teacher and self.teachers:
            raise ConfigError("give either 'teacher' or 'teachers' (an ensemble), not both")
        return list(self.teachers or ([self.teacher] if self.teacher else []))


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the key and the fix."""


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config{f' ({source})' if source else ''}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            section = _section_model(e["loc"][:-1])
            valid = sorted(section.model_fields) if section else []
            msg = f"unknown key; valid keys here: {', '.join(valid)}"
        elif e["type"] == "value_error":  # our validators' messages already name the values
            msg = msg.removeprefix("Value error, ")
        elif "input" in e and e["type"] != "missing":
            msg += f" (got {e['input']!r})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _section_model(loc) -> type[BaseModel] | None:
    model: Any = RunConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        model = next((a for a in _flatten_annotation(field.annotation)
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model


def _flatten_annotation(a):
    args = getattr(a, "__args__", None)
    if not args:
        return [a]
    return [x for arg in args for x in _flatten_annotation(arg)]


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings (value parsed as YAML; list items by index) to a raw dict."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. optim.lr=0.1")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for i, p in enumerate(parts[:-1]):
            node = _child(node, p, parts[i + 1], key)
        last = parts[-1]
        parsed = yaml.safe_load(value) if value != "" else None
        if isinstance(node, list):
            idx = _index(node, last, key, allow_append=True)
            node[idx:idx + 1] = [parsed]
        else:
            node[last] = parsed
    return raw


def _index(node: list, p: str, key: str, allow_append: bool = False) -> int:
    if not p.isdigit() or int(p) > len(node) - (0 if allow_append else 1):
        raise ConfigError(f"override {key!r}: {p!r} is not an index of a list of {len(node)} items")
    return int(p)


def _child(node, p, nxt, key):
    if isinstance(node, list):
        idx = _index(node, p, key, allow_append=True)
        if idx == len(node):
            node.append({})
        return node[idx]
    if not isinstance(node, dict):
        raise ConfigError(f"override {key!r}: {p!r} is not a section")
    if node.get(p) is None:
        node[p] = [] if nxt.isdigit() else {}
    return node[p]


def load_config(source: str | Path | dict, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (or a dict), apply overrides, validate. Errors name key and fix."""
    if isinstance(source, dict):
        raw, where = source, ""
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (configs live under configs/, e.g. "
                              "configs/fmnist/kd.yaml)")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        where = str(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"config {where} must be a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, where)) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
