"""``wdistill inspect MODEL``: a model's module paths, classes and output shapes of one forward,
and the taps wdistill would use (declared by a zoo model, else found automatically)."""
from __future__ import annotations

import torch

from wdistill import models
from wdistill.errors import ConfigError
from wdistill.models.taps import auto_spec, trace


def inspect_model(spec: str, input_size: tuple[int, int, int], num_classes: int, kwargs: dict | None = None) -> str:
    """The report as text: one line per module called, then the taps."""
    c, h, w = input_size
    try:
        model = models.create(spec, num_classes=num_classes, in_channels=c, **(kwargs or {}))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model {spec!r}: {e}") from None
    x = torch.zeros(1, c, h, w)
    calls, _ = trace(model, x)
    width = max([len(t.path) for t in calls] + [6])
    lines = [f"{spec}: input {tuple(x.shape)}, {sum(p.numel() for p in model.parameters()):,} parameters",
             f"{'module':<{width}}  {'class':<22} output shape"]
    for t in calls:
        shape = "x".join(map(str, t.shape)) if t.shape is not None else "(not a tensor)"
        reused = f"  (called {t.calls}x: not usable as a tap)" if t.calls > 1 else ""
        lines.append(f"{t.path:<{width}}  {t.kind:<22} {shape}{reused}")
    declared = models.spec_for(model)
    try:
        taps, source = (declared, "declared by the zoo model") if declared else (auto_spec(model, x), "automatic")
        lines += ["", f"taps ({source}):", f"  feats: {taps.feats}", f"  embed: {taps.embed}"]
        if taps.preact:
            lines.append(f"  preact: {taps.preact}")
    except ValueError as e:
        lines += ["", f"no automatic taps: {e}"]
    lines.append("Override in YAML: student: {model: ..., taps: {feats: [...], embed: 'PATH:in'}}")
    return "\n".join(lines)
