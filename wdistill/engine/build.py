"""Building a run from its config: device, models, loss terms, the distiller (data:
``wdistill.data.build``), and the checks of ``wdistill config check``. Every error is a ConfigError
that names the key and the fix, raised before any long work starts."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from wdistill import losses, models
from wdistill.config.presets import list_presets
from wdistill.config.schema import RunConfig
from wdistill.config.schema_detection import DETECTOR_PREFIX
from wdistill.data.views import View
from wdistill.engine.distiller import Distiller
from wdistill.engine.rundir import CONFIG
from wdistill.errors import ConfigError
from wdistill.models.detection import DETECTOR_BACKBONES
from wdistill.models.teachers import missing_checkpoint_hint


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} but CUDA is not available here; use cpu (run.device=cpu, "
                              "or --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} but this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} but MPS is not available here; use cpu")
    return dev


# Where the teacher checkpoints of shipped presets come from, by path prefix (the CIFAR-100
# teachers live in wdistill's cache: `wdistill teachers fetch`).
_BENCH = "(from a wdistill checkout) `python -m benchtools"
_CHECKPOINT_SOURCES = {  # first matching prefix wins
    "runs/bench/fmnist-kd-v1/teacher-lowpass/": "`wdistill train configs/fmnist/settings/crossmodal_teacher.yaml` "
                                                f"or {_BENCH} settings --setting crossmodal` trains it there",
    "runs/bench/fmnist-kd-v1/vanilla/": "`wdistill train configs/fmnist/settings/selfdistill_teacher.yaml` or "
                                        f"{_BENCH} accuracy` trains it there",
    "runs/bench/fmnist-kd-v1/teacher/seed0/": f"{_BENCH} accuracy` trains and keeps the benchmark teacher there",
    "runs/bench/fmnist-kd-v1/teacher/": f"{_BENCH} settings --setting ensemble` trains the ensemble's "
                                        f"teachers there (seeds 1-3; seed 0 is {_BENCH} accuracy`'s)",
    "runs/bench/": f"{_BENCH} accuracy` trains and keeps the benchmark teacher there",
    "checkpoints/imagenet/": "configs/imagenet/README.md names the published files to put there",
}


def checkpoint_problem(section, role: str) -> str | None:
    """What is wrong with ``section.checkpoint`` (a file that does not exist, and where it comes from; a teacher
    without one), or None."""
    if not section.checkpoint and role == "teacher":
        return (f"teacher {section.model!r} has no checkpoint: train one first (`wdistill train CONFIG`) and set "
                "teacher.checkpoint=RUN_DIR/student.pt")
    if not section.checkpoint:
        return None
    path = models.resolve_path(section.checkpoint)
    if path.is_file():
        return None
    given = section.checkpoint.replace("\\", "/")
    hint = next((h for prefix, h in _CHECKPOINT_SOURCES.items() if given.startswith(prefix)),
                None) or _preset_hint(given) or missing_checkpoint_hint(section.model, path)
    return f"{role}.checkpoint {section.checkpoint!r} ({path}) does not exist: {hint}"


def _preset_hint(given: str) -> str | None:
    """For ``runs/NAME/<file>`` where NAME is a shipped preset (a teacher the presets name): the command that
    trains it there."""
    relative = given.removeprefix("./")
    run, _, file = relative.removeprefix("runs/").rpartition("/")
    if relative.startswith("runs/") and run in list_presets():
        return f"`wdistill train {run}` (a shipped preset) trains it and writes {file} there"
    return None


def build_model(section, num_classes: int, in_channels: int, role: str) -> nn.Module:
    """A zoo name, ``timm:<name>``, ``torchvision:<name>`` or ``pkg.module:factory`` (see
    ``wdistill.models.create``), with its checkpoint (``cache:`` paths resolve into wdistill's cache)."""
    try:
        model = models.create(section.model, num_classes, in_channels, section.pretrained, **section.kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{role}.model: {e}") from None
    problem = checkpoint_problem(section, role)
    if problem:
        raise ConfigError(problem)
    if section.checkpoint:
        try:
            models.load_checkpoint(model, models.resolve_path(section.checkpoint))
        except ValueError as e:
            raise ConfigError(f"{role}.checkpoint: {e}") from None
    return model


def check_teacher_view(section, role: str = "teacher") -> None:
    """Refuse a teacher trained on a view (its run's config.yaml says so) but fed the full image
    because ``view`` was left unset: a silent mismatch would distil from a confused teacher."""
    if section.view is not None or not section.checkpoint:
        return
    beside = models.resolve_path(section.checkpoint).parent / CONFIG
    try:
        recorded = ((yaml.safe_load(beside.read_text()) or {}).get("student") or {}).get("view")
    except (OSError, yaml.YAMLError, AttributeError):
        return
    if isinstance(recorded, dict) and recorded.get("name", "identity") != "identity":
        raise ConfigError(f"{role}.checkpoint {section.checkpoint!r} was trained on the view {recorded} ({beside}) "
                          f"but {role}.view is not set, so it would see the full image: set {role}.view to that view, "
                          f"or {role}.view: {{name: identity}} to feed it the full image on purpose")


def build_terms(cfg: RunConfig) -> list[tuple[str, float, losses.Term]]:
    """(id, weight, term) of every configured loss term; the id keys logs, metrics and checkpoints."""
    terms = []
    for t in cfg.loss:
        try:
            terms.append((t.id, t.weight, losses.create(t.name, **t.params)))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"loss term {t.id!r}: {e}") from None
    return terms


def check_teacher_needs(cfg: RunConfig) -> None:
    """ConfigError if a loss term needs a teacher (``Term.requires_teacher``) and the config names none."""
    if cfg.teacher_sections():
        return
    needy = [t.name for t in cfg.loss if losses.get(t.name).requires_teacher]
    if needy:
        raise ConfigError(f"loss terms {needy} need a teacher: add a 'teacher:' section (model + checkpoint), "
                          "or train with terms that need none (e.g. ce; det for a detector)")


def build_distiller(cfg: RunConfig, student: nn.Module, teachers: list[nn.Module], channels: int) -> Distiller:
    """The student, the teachers and the configured terms, with each model's taps and view."""
    t_sections = cfg.teacher_sections()
    for s in t_sections:
        check_teacher_view(s)
    views = [cfg.student.view, *(s.view for s in t_sections)]
    for role, view in zip(["student"] + ["teacher"] * len(t_sections), views):
        try:
            View(view).check(channels)  # the image size is checked on the probe batch (Trainer.setup_terms)
        except ValueError as e:
            raise ConfigError(f"{role}.view: {e}") from None
    try:
        return Distiller(student, teachers, build_terms(cfg), cfg.student.taps,
                         [s.taps for s in t_sections] if t_sections else None, student_view=cfg.student.view,
                         teacher_views=[s.view for s in t_sections] if t_sections else None)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"student/teacher taps: {e!s}. A tap spec needs 'feats' (module paths) and 'embed' "
                          "(e.g. 'fc:in'); `wdistill list` names the zoo models, which need none") from None


def check_models(cfg: RunConfig, student: bool = True, teachers: bool = True) -> None:
    """Before the data loads, of the models built from the config (``student``/``teachers`` False: the caller
    passes them): model names (zoo, timm:, torchvision:, factories) and pretrained files, detector backbones,
    checkpoints (that they exist, and for zoo models that they fit); and a teacher for the terms that need one."""
    sections = ([("student", cfg.student)] if student else []) + [("teacher", s) for s in cfg.teacher_sections()
                                                                  if teachers]
    for role, section in sections:
        try:
            models.check_spec(section.model, section.pretrained)
        except ValueError as e:
            raise ConfigError(f"{role}.model: {e}") from None
        backbone = section.model.removeprefix(DETECTOR_PREFIX)
        if section.model.startswith(DETECTOR_PREFIX) and backbone not in DETECTOR_BACKBONES:
            raise ConfigError(f"{role}.model {section.model!r}: detectors are detection:<backbone> with backbone "
                              f"one of {', '.join(DETECTOR_BACKBONES)}")
        problem = checkpoint_problem(section, role)
        if problem:
            raise ConfigError(problem)
        if section.checkpoint:
            try:
                models.check_checkpoint(section.model, models.resolve_path(section.checkpoint), section.kwargs)
            except ValueError as e:
                raise ConfigError(f"{role}.checkpoint: {e}") from None
    if teachers:
        check_teacher_needs(cfg)


def check_buildable(arch: str, path) -> None:
    """ConfigError unless ``arch``, recorded by checkpoint ``path``, names a model the command line can build."""
    if ":" in arch or arch in models.available():
        return
    raise ConfigError(f"{path} records the student model {arch!r}, which is not a zoo name nor a timm:, "
                      "torchvision: or pkg.module:factory spec, so the command line cannot build it. A model handed "
                      "to wdistill.distill() in Python records only its class name: load the weights into your "
                      f"model in Python (wdistill.models.load_checkpoint(model, '{path}')), or give `wdistill eval` a "
                      "function that builds it (--model pkg.module:factory). `wdistill list` names the zoo models")


def check_config(cfg: RunConfig) -> list[str]:
    """Checks beyond the schema that need no training: model names, loss terms and their parameters,
    teacher checkpoints. Returns what was checked; raises ConfigError naming the problem and fix."""
    check_models(cfg)
    for i, t in enumerate(cfg.loss):
        try:
            losses.create(t.name, **t.params)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"loss.{i} ({t.name}): {e}") from None
    return ["schema", "task", "data set and options", "models", "loss terms", "checkpoints (exist, load, fit)"]


def tensorboard_writer(cfg: RunConfig, run_dir):
    """A SummaryWriter in ``run_dir/tb`` when ``train.tensorboard`` (the optional tensorboard package)."""
    if not cfg.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("train.tensorboard=true needs the tensorboard package: "
                          "pip install 'wdistill[tensorboard]'") from None
    return SummaryWriter(str(Path(run_dir) / "tb"))
