"""Building a run from its config: device, models, loss terms (data: ``wdistill.data.build``). Every error is a
ConfigError that names the key and the fix, raised before any long work starts."""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from wdistill import losses
from wdistill.config.schema import ConfigError, RunConfig


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
_CHECKPOINT_SOURCES = {  # first matching prefix wins
    "runs/bench/fmnist-kd-v1/teacher-lowpass/": "`wdistill train configs/fmnist/settings/crossmodal_teacher.yaml` "
                                                "(or `wdistill bench settings --setting crossmodal`) trains it there",
    "runs/bench/fmnist-kd-v1/vanilla/": "`wdistill train configs/fmnist/settings/selfdistill_teacher.yaml` (or "
                                        "`wdistill bench accuracy`) trains it there",
    "runs/bench/fmnist-kd-v1/teacher/seed0/": "`wdistill bench accuracy` trains and keeps the benchmark teacher there",
    "runs/bench/fmnist-kd-v1/teacher/": "`wdistill bench settings --setting ensemble` trains the ensemble's teachers "
                                        "there (seeds 1-3; seed 0 is `wdistill bench accuracy`'s)",
    "runs/bench/": "`wdistill bench accuracy` trains and keeps the benchmark teacher there",
    "checkpoints/imagenet/": "configs/imagenet/README.md names the published files to put there",
}


def missing_checkpoint(section, role: str) -> str | None:
    """What is wrong with ``section.checkpoint`` and where the file comes from, or None if it exists."""
    from wdistill.models.specs import resolve_path
    from wdistill.models.teachers import missing_checkpoint_hint
    path = resolve_path(section.checkpoint)
    if path.is_file():
        return None
    given = section.checkpoint.replace("\\", "/")
    hint = next((h for prefix, h in _CHECKPOINT_SOURCES.items() if given.startswith(prefix)),
                None) or missing_checkpoint_hint(section.model, path)
    return f"{role}.checkpoint {section.checkpoint!r} ({path}) does not exist: {hint}"


def build_model(section, num_classes: int, in_channels: int, role: str) -> nn.Module:
    """A zoo name, ``timm:<name>``, ``torchvision:<name>`` or ``pkg.module:factory`` (see
    ``wdistill.models.specs``), with its checkpoint (``cache:`` paths resolve into wdistill's cache)."""
    from wdistill.models.weights import load_checkpoint
    from wdistill.models.specs import build, resolve_path
    try:
        model = build(section.model, num_classes, in_channels, section.kwargs, section.pretrained)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{role}.model: {e}") from None
    if section.checkpoint:
        path = resolve_path(section.checkpoint)
        problem = missing_checkpoint(section, role)
        if problem:
            raise ConfigError(problem)
        try:
            load_checkpoint(model, path)
        except ValueError as e:
            raise ConfigError(f"{role}.checkpoint: {e}") from None
    elif role == "teacher":
        raise ConfigError(f"teacher {section.model!r} has no checkpoint: train one first "
                          "(`wdistill train CONFIG`) and set teacher.checkpoint=RUN_DIR/student.pt")
    return model


def check_teacher_view(section, role: str = "teacher") -> None:
    """Refuse a teacher trained on a view (its run's config.yaml says so) but fed the full image
    because ``view`` was left unset: a silent mismatch would distil from a confused teacher."""
    import yaml

    from wdistill.models.specs import resolve_path
    if section.view is not None or not section.checkpoint:
        return
    beside = resolve_path(section.checkpoint).parent / "config.yaml"
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
                          "or train with terms that need none (e.g. ce)")
