"""Name -> constructor registry for the model zoo."""
from __future__ import annotations

import difflib
from typing import Callable

import torch.nn as nn

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


def create(name: str, num_classes: int = 100, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build zoo model ``name`` for ``num_classes`` outputs and ``in_channels`` input planes."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} Available: {', '.join(available())}. "
            "To use your own nn.Module, pass it directly and describe its stages with a TapSpec.")
    return _MODELS[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
