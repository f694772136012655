"""Run configuration: one YAML file, validated by pydantic, with ``key=value`` overrides."""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSection(_Strict):
    name: str = "run"
    out_dir: str = "runs"
    seed: int = Field(0, ge=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps

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
    name: str = "fmnist_sample"  # a built-in data set, image_folder, or python (with factory)
    root: str | None = None
    train_subset: int | None = Field(None, gt=0)  # keep the first N training images
    test_subset: int | None = Field(None, gt=0)
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int = Field(256, gt=0)
    # Augmentation: None = the data set's own recipe (wdistill/data/recipe.py; the run log states it).
    crop_padding: int | None = Field(None, ge=0)
    flip: bool | None = None
    # ImageNet recipe: training RandomResizedCrop to this size, evaluation centre crop to it
    # (store/resize the images larger, e.g. options.size 256 with random_resized_crop 224).
    random_resized_crop: int | None = Field(None, gt=0)
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    options: dict[str, Any] = Field(default_factory=dict)  # extra keyword arguments for the loader
    # memory: uint8 tensors in RAM, batched augmentation (fast path); stream: DataLoader workers
    # decode and crop; auto: memory when the decoded split fits in memory_limit_gb, else stream.
    loader: Literal["auto", "memory", "stream"] = "auto"
    memory_limit_gb: float = Field(4.0, gt=0)
    workers: int | None = Field(None, ge=0)  # streaming worker processes; None = CPU cores, at most 8
    prefetch_factor: int = Field(2, gt=0)  # batches each streaming worker prepares ahead
    # name: python -- a user's datasets from `factory: "pkg.module:function"` returning (train, test)
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)  # keyword arguments for the factory
    num_classes: int | None = Field(None, gt=0)  # when the dataset has no `classes`/`targets`
    mean: tuple[float, ...] | None = None  # user data: per-channel normalisation of uint8/PIL images
    std: tuple[float, ...] | None = None

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

    model: str
    checkpoint: str | None = None
    pretrained: str | bool | None = None
    taps: dict[str, Any] | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)

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
    name: str
    weight: float = Field(1.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _typed_params(self):
        from ..losses import registry  # every term module registers itself on import
        try:
            resolved = registry.resolve_params(self.name, dict(self.model_extra or {}))
        except ValueError as e:
            raise ValueError(str(e)) from None
        self.__pydantic_extra__ = resolved
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OptimSection(_Strict):
    epochs: int = Field(240, ge=1)
    lr: float = Field(0.05, gt=0, allow_inf_nan=False)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0, allow_inf_nan=False)
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = Field(default_factory=lambda: [150, 180, 210])
    gamma: float = Field(0.1, gt=0, allow_inf_nan=False)
    warmup_epochs: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _schedule_fits(self):
        if any(m < 1 for m in self.milestones) or self.milestones != sorted(self.milestones):
            raise ValueError(f"optim.milestones {self.milestones} must be increasing epochs >= 1")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise ValueError(f"optim.warmup_epochs={self.warmup_epochs} must be below optim.epochs={self.epochs}")
        return self


class TrainSection(_Strict):
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False  # student BatchNorm statistics over all ranks (GPU runs under torchrun)
    tensorboard: bool = False
    progress: bool = True
    eval_every: int = Field(1, gt=0)
    # gradient accumulation: each optimiser step sums this many micro-batches (data.batch_size is
    # still the batch of one optimiser step; micro-batch = batch_size / (world size * accumulate))
    accumulate: int = Field(1, ge=1)
    # loss and accuracy are summed on the device and read (a host sync) every this many steps
    log_every: int = Field(50, ge=1)
    # stop each epoch after this many steps (smoke tests of large presets); None = the whole epoch
    max_steps: int | None = Field(None, gt=0)


class RunConfig(_Strict):
    run: RunSection = Field(default_factory=RunSection)
    data: DataSection = Field(default_factory=DataSection)
    student: ModelSection
    teacher: ModelSection | None = None
    teachers: list[ModelSection] | None = None  # an ensemble; logits are averaged
    loss: list[TermSection] = Field(default_factory=lambda: [TermSection(name="ce")])
    optim: OptimSection = Field(default_factory=OptimSection)
    train: TrainSection = Field(default_factory=TrainSection)

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
        elif e["type"] == "value_error":  # our own validators already name the value
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
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key part; write section.key=value, e.g. optim.lr=0.1")
        try:
            parsed = yaml.safe_load(value) if value != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]}); "
                              "quote it or fix the brackets, e.g. optim.milestones=[30,60]") from None
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {key!r}: {'.'.join(parts[:-1])!r} is a value, not a section")
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
    if node.get(p) is not None and not isinstance(node[p], (dict, list)):
        raise ConfigError(f"override {key!r}: {p!r} is a value ({node[p]!r}), not a section")
    if node.get(p) is None:
        node[p] = [] if nxt.isdigit() else {}
    return node[p]


PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"


def list_presets() -> list[str]:
    """Names of the presets shipped with the package, e.g. ``cifar100/resnet32x4-resnet8x4/wkd_l``."""
    return sorted(p.relative_to(PRESETS_DIR).with_suffix("").as_posix() for p in PRESETS_DIR.rglob("*.yaml"))


def preset_path(name: str) -> Path:
    """The file of shipped preset ``name`` (with or without ``.yaml``, ``configs/`` prefix allowed)."""
    key = name.removeprefix("configs/").removesuffix(".yaml")
    path = PRESETS_DIR / f"{key}.yaml"
    if key and ".." not in Path(key).parts and path.is_file():
        return path
    import difflib
    close = difflib.get_close_matches(key, list_presets(), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"config {name!r} does not exist: it is neither a file nor a shipped preset.{hint} "
                      "`wdistill list --presets` prints the preset names (e.g. cifar100/resnet32x4-resnet8x4/kd)")


def load_config(source: str | Path | dict, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (or a dict), apply overrides, validate. Errors name key and fix."""
    if isinstance(source, dict):
        raw, where = source, ""
    else:
        path = Path(source)
        if not path.is_file():
            path = preset_path(str(source))
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
