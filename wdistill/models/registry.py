"""Every model a config can name: ``create(spec, num_classes, in_channels)``.

A spec is a zoo name (``resnet8``, registered by the files of ``wdistill.models.zoo`` with
:func:`register`), ``timm:<name>``, ``torchvision:<name>``, ``detection:<backbone>`` (a torchvision
Faster R-CNN with an FPN, ``wdistill.models.detection``) or ``"pkg.module:factory"`` (a Python
callable returning an ``nn.Module``). Nothing is downloaded: ``pretrained`` is a local file, or
``true`` for the file in wdistill's cache (``<cache>/pretrained/<library>/<name>.safetensors`` or
``.pth``; see :func:`cache_dir`). Errors are ``ValueError`` with the fix in the message (the engine
turns them into ConfigErrors).

>>> from wdistill import models
>>> net = models.create("resnet8", num_classes=10, in_channels=1)
>>> sum(p.numel() for p in net.parameters())
77754
"""
from __future__ import annotations

import difflib
import os
from functools import lru_cache
from typing import Callable

import torch
import torch.nn as nn

from wdistill.errors import ConfigError
from wdistill.models.detection import create_detector, require_torchvision
from wdistill.models.libraries import LIBRARIES, check_library_spec, factory_model, timm_model, torchvision_model
from wdistill.models.weights import (
    examples,
    extract_state_dict,
    first_last,
    key_set,
    load_pretrained,
    pretrained_path,
    read_safetensors,
    strip_module,
)

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a constructor under its own function name (timm style)."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def available() -> list[str]:
    """Names accepted by :func:`create`, sorted."""
    return sorted(_MODELS)


def check_zoo_name(name: str) -> None:
    """ValueError, naming the closest zoo models, unless ``name`` is one."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} Available: {', '.join(available())}. "
            "To use your own nn.Module, pass it directly and describe its stages with a TapSpec.")


def _zoo(name: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    check_zoo_name(name)
    return _MODELS[name](num_classes=num_classes, in_channels=in_channels, **kwargs)


DETECTION = "detection"


def kind_of(spec: str) -> str:
    """'zoo', 'timm', 'torchvision', 'detection' or 'factory'."""
    head, sep, _ = spec.partition(":")
    if sep and (head in LIBRARIES or head == DETECTION):
        return head
    if sep:
        return "factory"
    return "zoo"


def create(spec: str, num_classes: int = 100, in_channels: int = 3, pretrained: str | bool | None = None,
           **kwargs) -> nn.Module:
    """The model ``spec`` names, for ``num_classes`` outputs and ``in_channels`` input planes;
    ``kwargs`` go to its constructor (zoo function, timm/torchvision builder, detector builder or
    factory). For ``detection:<backbone>`` ``num_classes`` counts the object categories.

    ``pretrained``: a weights file (``.safetensors``/``.pt``/``.pth``), or ``True`` for
    ``<cache>/pretrained/<library>/<name>.(safetensors|pth)``. The classifier is kept only when its
    shape fits ``num_classes``; every other key must match.
    """
    kind = kind_of(spec)
    if kind == "zoo":
        model = _zoo(spec, num_classes, in_channels, kwargs)
    elif kind == "timm":
        model = timm_model(spec[len("timm:"):], num_classes, in_channels, kwargs)
    elif kind == "torchvision":
        model = torchvision_model(spec[len("torchvision:"):], num_classes, in_channels, kwargs)
    elif kind == DETECTION:  # its pretrained weights are the backbone's, loaded by the builder
        return create_detector(spec[len("detection:"):], num_classes, in_channels, pretrained, kwargs)
    else:
        model = factory_model(spec, num_classes, in_channels, kwargs)
    if pretrained:
        load_pretrained(model, _pretrained_file(spec, kind, pretrained))
    return model


def _pretrained_file(spec: str, kind: str, pretrained: str | bool):
    return pretrained_path(spec, pretrained, kind if kind in LIBRARIES else None)


def check_spec(spec: str, pretrained: str | bool | None = None) -> None:
    """ValueError, with the fix, unless what ``create(spec, pretrained=pretrained)`` looks up exists: the zoo
    name, the library and its model, the factory's module and callable, the pretrained file. Nothing is built;
    what depends on the data (classes, channels, kwargs) is checked when the model is. ``detection:`` specs
    are left to their builder."""
    kind = kind_of(spec)
    if kind == DETECTION:
        return
    if kind == "zoo":
        check_zoo_name(spec)
    else:
        check_library_spec(kind, spec)
    if pretrained:
        _pretrained_file(spec, kind, pretrained)


def io_shape(arch: str, kwargs: dict, sd: dict) -> tuple[int | None, int | None]:
    """(classes, input channels) the weights imply: rows of the last Linear, width of the first Conv."""
    if arch not in _MODELS:  # timm/torchvision/factory specs: shapes come from the weights' metadata
        return None, None
    with torch.device("meta"):
        m = _zoo(arch, 100, 3, kwargs)
    convs = [n for n, x in m.named_modules() if isinstance(x, nn.Conv2d)]
    linears = [n for n, x in m.named_modules() if isinstance(x, nn.Linear)]
    strip = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    nc = strip.get(f"{linears[-1]}.weight") if linears else None
    ch = strip.get(f"{convs[0]}.weight") if convs else None
    return (None if nc is None else int(nc.shape[0])), (None if ch is None else int(ch.shape[1]))


def output_classes(model: nn.Module) -> int | None:
    """The class count a classifier's last ``nn.Linear`` outputs (None without one)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


# ---- strict loading, naming the zoo model a checkpoint fits ----------------------------------------
@lru_cache(maxsize=None)
def _zoo_layout(name: str) -> tuple[frozenset, str | None, str | None]:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        m = _zoo(name, 100, 3, {})
    first, last = first_last(m)
    return key_set(m.state_dict()), first, last


def _shapes_of(name: str, num_classes: int, in_channels: int) -> dict[str, tuple]:
    with torch.device("meta"):
        m = _zoo(name, num_classes, in_channels, {})
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def _zoo_matches(state_dict: dict[str, torch.Tensor]) -> list[tuple[str, int, int]]:
    sd = strip_module(state_dict)
    keys = key_set(sd)
    found = []
    for name in available():
        zkeys, first, last = _zoo_layout(name)
        if zkeys != keys:
            continue
        num_classes = sd[f"{last}.weight"].shape[0] if last else 100
        in_channels = sd[f"{first}.weight"].shape[1] if first else 3
        shapes = _shapes_of(name, num_classes, in_channels)
        if all(tuple(v.shape) == shapes[k] for k, v in sd.items()):
            found.append((name, num_classes, in_channels))
    return found


def matching_zoo_models(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Zoo model names whose parameter names and shapes equal those of ``state_dict``, for the
    class count and input channels the checkpoint itself implies."""
    return [name for name, _, _ in _zoo_matches(state_dict)]


def _read_state_dict(path_or_dict, trusted: bool = False) -> dict[str, torch.Tensor]:
    """The state_dict a checkpoint file (or in-memory dict) holds, without a ``module.`` prefix."""
    if isinstance(path_or_dict, (str, os.PathLike)) and str(path_or_dict).endswith(".safetensors"):
        obj = read_safetensors(path_or_dict)[0]
    elif isinstance(path_or_dict, (str, os.PathLike)):
        try:
            obj = torch.load(path_or_dict, map_location="cpu", weights_only=not trusted)
        except FileNotFoundError:
            raise ValueError(f"checkpoint file not found: {path_or_dict}") from None
        except Exception as e:  # the safe unpickler refuses arbitrary objects
            if trusted:
                raise
            raise ValueError(
                f"could not load {path_or_dict} with the safe (weights-only) loader: {e}. If you "
                "trust this file, call load_checkpoint(..., trusted=True).") from e
    else:
        obj = path_or_dict
    return strip_module(extract_state_dict(obj))


def _check_fit(model: nn.Module, sd: dict[str, torch.Tensor], name: str | None, shapes: bool = True) -> None:
    """ValueError listing the missing, unexpected and (``shapes``) wrongly-shaped keys of ``sd`` for ``model``,
    naming the zoo models the weights do fit."""
    own = model.state_dict()
    missing = [k for k in key_set(own) if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong_shape = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                   if shapes and k in sd and sd[k].shape != v.shape]
    if not (missing or unexpected or wrong_shape):
        return
    name = name or "/".join(matching_zoo_models(own)) or None
    arch = f"{name} ({type(model).__name__})" if name else type(model).__name__
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {examples(unexpected)})")
    if wrong_shape:
        parts.append(f"{len(wrong_shape)} keys with another shape, checkpoint vs model "
                     f"(e.g. {examples(wrong_shape, 3)})")
    matches = _zoo_matches(sd)
    if matches:
        calls = " or ".join(f"create({n!r}, num_classes={c}, in_channels={i})" for n, c, i in matches)
        names = "/".join(n for n, _, _ in matches)
        parts.append(f"the checkpoint matches zoo model {names}: in a config, model: {names}; in Python, "
                     f"build it with {calls}")
    else:
        parts.append("no zoo model matches it either; check which architecture produced it")
    raise ValueError(f"checkpoint does not fit {arch}: " + "; ".join(parts))


def load_checkpoint(model: nn.Module, path_or_dict, name: str | None = None,
                    trusted: bool = False) -> nn.Module:
    """Load weights into ``model`` with strict=True and return it.

    ``path_or_dict``: a file written by ``torch.save`` or an in-memory dict: a bare state_dict,
    or a dict holding one under ``'model'`` (RepDistiller, mdistiller) or ``'state_dict'``.
    A ``'module.'`` prefix (DataParallel) is removed. ``name`` is the model's zoo name, used in
    messages. ``trusted=True`` allows pickled non-tensor objects in the file (only for files you
    trust: unpickling can run code).
    Raises ValueError listing missing, unexpected and wrongly-shaped keys, and naming the zoo
    models whose layout the checkpoint does match.
    """
    sd = _read_state_dict(path_or_dict, trusted)
    _check_fit(model, sd, name)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"loading into {name or type(model).__name__} failed: {e}") from e
    return model


def _has_torchvision() -> bool:
    try:
        require_torchvision()
    except ConfigError:
        return False
    return True


def check_checkpoint(spec: str, path, kwargs: dict | None = None) -> None:
    """ValueError, as :func:`load_checkpoint` raises it, when the weights in ``path`` cannot fit ``spec`` whatever
    the data: a file that does not load; for a zoo model or a detector, other parameter names or other shapes than
    the model has at the class count and input channels the weights themselves imply; for a timm: or
    torchvision: model, other parameter names. Nothing is built but on the meta device; factories (and
    detectors where torchvision is missing) are checked when they are built, once the data are known."""
    kind, kwargs = kind_of(spec), kwargs or {}
    if kind == "factory" or (kind == DETECTION and not _has_torchvision()):
        return
    sd, name = _read_state_dict(path), spec.partition(":")[2]
    if kind in LIBRARIES:  # which layer a class count or a channel count shapes is not known: names only
        try:
            with torch.device("meta"):
                model = (timm_model if kind == "timm" else torchvision_model)(name, 100, 3, kwargs)
        except Exception:  # noqa: BLE001 - a model that cannot be made on the meta device is checked when built
            return
        if key_set(model.state_dict()) != key_set(sd):
            _check_fit(model, sd, spec, shapes=False)
        return
    with torch.device("meta"):
        if kind == DETECTION:  # the box predictor scores the categories and the background
            scores = sd.get("roi_heads.box_predictor.cls_score.weight")
            built = {k: v for k, v in kwargs.items() if k not in ("backbone_weights", "weights")}  # not read here
            model = create_detector(name, 1 if scores is None else scores.shape[0] - 1, 3, None, built)
        else:
            classes, channels = io_shape(spec, kwargs, sd)
            model = _zoo(spec, classes or 100, channels or 3, kwargs)
    _check_fit(model, sd, spec)
