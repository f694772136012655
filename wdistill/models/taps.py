"""Feature capture by forward hooks: any nn.Module, one forward, no special ``forward``.

A :class:`TapSpec` names module paths (as in ``model.named_modules()``). A path means that
module's output; ``path:in`` means its first input (used for pre-activations, taken at the input
of a final ReLU module, and for the pooled embedding, taken at the input of the classifier).

A model that declares no spec (timm, torchvision, user code) gets one found automatically at its
first forward (:func:`auto_spec`). Order of preference: what the library itself says (timm's
``feature_info``), known torchvision layouts (ResNet, MobileNet), then a generic rule found by one
dummy forward: a stage ends where the spatial resolution changes, so each stage output is the last
module output at its resolution, and the embedding is the input of the last ``nn.Linear``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn


@dataclass
class TapSpec:
    """Where a model's features live.

    feats:  stem then each stage's output (post-activation).
    preact: the same points before each stage's final ReLU (empty: reuse ``feats``).
    embed:  the pooled penultimate vector, usually ``"<classifier>:in"``.
    """

    feats: list[str]
    embed: str
    preact: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> "TapSpec":
        unknown = set(d) - {"feats", "embed", "preact"}
        if unknown:
            raise ValueError(f"unknown TapSpec keys {sorted(unknown)}; use feats, preact, embed")
        return cls(feats=list(d["feats"]), embed=d["embed"], preact=list(d.get("preact") or []))


def spec_for(model: nn.Module, spec: TapSpec | dict | None = None) -> TapSpec | None:
    """The spec to use: the one given, else the one a zoo model declares, else None (found
    automatically at the first forward, see :func:`auto_spec`)."""
    if isinstance(spec, dict):
        return TapSpec.from_dict(spec)
    if spec is not None:
        return spec
    declared = getattr(model, "tap_spec", None)
    return declared() if declared is not None else None


class TapOutputs(dict):
    """Forward outputs; a key the taps could not provide raises an error that says why."""

    why: str = ""

    def __missing__(self, key):
        raise ValueError(f"this loss term needs the model's {key!r}, but no taps are known: {self.why}")


class FeatureTap:
    """Runs ``model`` once and returns ``{'feats', 'preact_feats', 'embed', 'logits'}``.

    The hooks stay registered until :meth:`remove`; tensors are those of the forward itself
    (gradients flow through them).
    """

    def __init__(self, model: nn.Module, spec: TapSpec | dict | None = None):
        self.model = model
        self._store: dict[str, torch.Tensor] = {}
        self._handles = []
        self.spec: TapSpec | None = None
        self._why = ""  # why automatic taps failed (logit-only methods do not care)
        given = spec_for(model, spec)
        if given is not None:
            self._attach(given)

    def _base(self) -> nn.Module:
        # torch.compile wraps the model: paths and hooks belong to the original module
        return getattr(self.model, "_orig_mod", self.model)

    def _attach(self, spec: TapSpec) -> None:
        modules = dict(self._base().named_modules())
        points = set(spec.feats) | set(spec.preact) | {spec.embed}
        for point in sorted(points):
            path, _, where = point.partition(":")
            if where not in ("", "in", "out"):
                raise ValueError(f"tap point {point!r}: suffix must be ':in' or ':out'")
            if path not in modules:
                close = [n for n in modules if n and (path in n or n in path)][:5]
                raise ValueError(
                    f"tap point {point!r}: no module {path!r} in {type(self._base()).__name__}"
                    + (f" (similar: {close})" if close else "")
                    + "; paths come from model.named_modules()")
        self.spec = spec
        for point in sorted(points):
            path, _, where = point.partition(":")
            self._handles.append(self._hook(modules[path], point, where == "in"))

    def _resolve(self, x: torch.Tensor) -> None:
        """Find taps automatically on the first call (one extra dummy forward, no grad)."""
        try:
            self._attach(auto_spec(self._base(), x))
        except ValueError as e:
            self._why = (f"{e}. {type(self._base()).__name__} is not a zoo model: give taps, e.g. "
                         "taps: {feats: [layer1, layer2], embed: 'fc:in'} with paths from `wdistill inspect`")

    def _hook(self, module: nn.Module, key: str, at_input: bool):
        store = self._store
        if at_input:
            return module.register_forward_pre_hook(lambda m, args: store.__setitem__(key, args[0]))
        return module.register_forward_hook(lambda m, args, out: store.__setitem__(key, out))

    def __call__(self, x: torch.Tensor) -> dict:
        if self.spec is None and not self._why:
            self._resolve(x)
        if self.spec is None:  # logits only: enough for KD, DKD, WKD-L
            out = TapOutputs(logits=self.model(x))
            out.why = self._why
            return out
        self._store.clear()
        logits = self.model(x)
        s = self._store
        missing = [p for p in set(self.spec.feats) | set(self.spec.preact) | {self.spec.embed} if p not in s]
        if missing:
            raise RuntimeError(f"tap points {missing} were not reached by the forward pass")
        feats = [s[p] for p in self.spec.feats]
        out = TapOutputs(
            feats=feats,
            preact_feats=[s[p] for p in self.spec.preact] if self.spec.preact else feats,
            embed=s[self.spec.embed].flatten(1),
            logits=logits,
        )
        s.clear()
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


# ---- automatic taps ----------------------------------------------------------------------------
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
