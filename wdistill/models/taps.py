"""Feature capture by forward hooks: any nn.Module, one forward, no special ``forward``.

A :class:`TapSpec` names module paths (as in ``model.named_modules()``). A path means that
module's output; ``path:in`` means its first input (used for pre-activations, taken at the input
of a final ReLU module, and for the pooled embedding, taken at the input of the classifier).
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
    automatically at the first forward, see :mod:`wdistill.models.autotap`)."""
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
        from wdistill.models.autotap import auto_spec

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
