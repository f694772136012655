"""Automatic tap specs for models that do not declare one (timm, torchvision, user code).

Order of preference: what the library itself says (timm's ``feature_info``), known torchvision
layouts (ResNet, MobileNet), then a generic rule found by one dummy forward: a stage ends where the
spatial resolution changes, so each stage output is the last module output at its resolution, and
the embedding is the input of the last ``nn.Linear`` (the classifier).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from wdistill.models.taps import TapSpec


@dataclass
class Trace:
    """One module call seen in a dummy forward: its path, class, output shape and call count."""

    path: str
    kind: str
    shape: tuple | None  # None: the output is not a tensor
    calls: int


def trace(model: nn.Module, x: torch.Tensor) -> tuple[list[Trace], str | None]:
    """Run ``model`` once on ``x`` (eval mode, no grad: BatchNorm statistics stay untouched) with a
    hook on every module. Returns the calls in completion order (each module once, at its last call)
    and the path of the last ``nn.Linear`` called (None when there is none)."""
    order: dict[str, Trace] = {}
    last_linear = [None]
    handles = []

    def hook(path):
        def fn(module, args, out):
            prev = order.pop(path, None)
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
            order[path] = Trace(path, type(module).__name__, shape, (prev.calls if prev else 0) + 1)
            if isinstance(module, nn.Linear):
                last_linear[0] = path
        return fn

    for path, m in model.named_modules():
        if path:
            handles.append(m.register_forward_hook(hook(path)))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return list(order.values()), last_linear[0]


def generic_spec(model: nn.Module, x: torch.Tensor, prefix: str | None = None) -> TapSpec:
    """Stage outputs where the spatial resolution changes; embed at the last Linear's input.

    Only modules called exactly once qualify (a module reused at several places would be captured
    at its last call only); 1x1 outputs (global pooling, squeeze-and-excitation) are never stages.
    ``prefix`` restricts stage candidates to the direct children of that module path.
    """
    calls, last_linear = trace(model, x)
    if last_linear is None:
        raise ValueError(f"{type(model).__name__} calls no nn.Linear, so the embedding (the classifier's "
                         "input) cannot be found: give taps by hand (see `wdistill inspect`)")
    last_at: dict[tuple, str] = {}  # resolution -> last module output at it; insertion = first seen
    for c in calls:
        if c.calls != 1 or c.shape is None or len(c.shape) != 4 or c.shape[2] * c.shape[3] == 1:
            continue
        if prefix is not None and c.path.rpartition(".")[0] != prefix:
            continue
        last_at[c.shape[2:]] = c.path
    if not last_at:
        raise ValueError(f"{type(model).__name__}: no module returns a 4-D feature map for input "
                         f"{tuple(x.shape)}: give taps by hand (see `wdistill inspect`)")
    return TapSpec(feats=list(last_at.values()), embed=f"{last_linear}:in")


def _module_path(model: nn.Module, target: nn.Module) -> str | None:
    return next((n for n, m in model.named_modules() if m is target and n), None)


def _timm_spec(model: nn.Module) -> TapSpec | None:
    info = getattr(model, "feature_info", None)
    get_classifier = getattr(model, "get_classifier", None)
    if not info or get_classifier is None:
        return None
    modules = dict(model.named_modules())
    feats = [d["module"] for d in info if isinstance(d, dict) and d.get("module")]
    head = get_classifier()
    head_path = _module_path(model, head) if isinstance(head, nn.Linear) else None
    if not feats or head_path is None or any(f not in modules for f in feats):
        return None
    return TapSpec(feats=feats, embed=f"{head_path}:in")


def _library(model: nn.Module) -> str:
    return type(model).__module__.split(".")[0]


def auto_spec(model: nn.Module, x: torch.Tensor) -> TapSpec:
    """The tap spec for a model without one, given an input batch ``x`` of the right shape."""
    lib, name = _library(model), type(model).__name__
    if lib == "timm":
        spec = _timm_spec(model)
        if spec is not None:
            return spec
    if lib == "torchvision":
        if name == "ResNet":
            return TapSpec(feats=["relu", "layer1", "layer2", "layer3", "layer4"], embed="fc:in")
        if name in ("MobileNetV2", "MobileNetV3") and isinstance(getattr(model, "features", None), nn.Sequential):
            return generic_spec(model, x[:1], prefix="features")
    return generic_spec(model, x[:1])
