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


def spec_for(model: nn.Module, spec: TapSpec | dict | None = None) -> TapSpec:
    """The spec to use: the one given, else the one a zoo model declares."""
    if isinstance(spec, dict):
        return TapSpec.from_dict(spec)
    if spec is not None:
        return spec
    declared = getattr(model, "tap_spec", None)
    if declared is None:
        raise ValueError(
            f"{type(model).__name__} is not a zoo model, so its feature layers are unknown: "
            "give a tap spec, e.g. {'feats': ['stem', 'layer1', 'layer2'], 'embed': 'fc:in'} "
            "with the module paths of model.named_modules()")
    return declared()


class FeatureTap:
    """Runs ``model`` once and returns ``{'feats', 'preact_feats', 'embed', 'logits'}``.

    The hooks stay registered until :meth:`remove`; tensors are those of the forward itself
    (gradients flow through them).
    """

    def __init__(self, model: nn.Module, spec: TapSpec | dict | None = None):
        self.model = model
        self.spec = spec_for(model, spec)
        self._store: dict[str, torch.Tensor] = {}
        self._handles = []
        modules = dict(model.named_modules())
        points = set(self.spec.feats) | set(self.spec.preact) | {self.spec.embed}
        for point in sorted(points):
            path, _, where = point.partition(":")
            if where not in ("", "in", "out"):
                raise ValueError(f"tap point {point!r}: suffix must be ':in' or ':out'")
            if path not in modules:
                close = [n for n in modules if n and (path in n or n in path)][:5]
                raise ValueError(
                    f"tap point {point!r}: no module {path!r} in {type(model).__name__}"
                    + (f" (similar: {close})" if close else "")
                    + "; paths come from model.named_modules()")
            self._handles.append(self._hook(modules[path], point, where == "in"))

    def _hook(self, module: nn.Module, key: str, at_input: bool):
        store = self._store
        if at_input:
            return module.register_forward_pre_hook(lambda m, args: store.__setitem__(key, args[0]))
        return module.register_forward_hook(lambda m, args, out: store.__setitem__(key, out))

    def __call__(self, x: torch.Tensor) -> dict:
        self._store.clear()
        logits = self.model(x)
        s = self._store
        missing = [p for p in set(self.spec.feats) | set(self.spec.preact) | {self.spec.embed} if p not in s]
        if missing:
            raise RuntimeError(f"tap points {missing} were not reached by the forward pass")
        feats = [s[p] for p in self.spec.feats]
        out = {
            "feats": feats,
            "preact_feats": [s[p] for p in self.spec.preact] if self.spec.preact else feats,
            "embed": s[self.spec.embed].flatten(1),
            "logits": logits,
        }
        s.clear()
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
