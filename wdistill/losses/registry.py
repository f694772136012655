"""Name -> loss-term class registry."""
from __future__ import annotations

import difflib
import inspect

from .base import Term

_TERMS: dict[str, type[Term]] = {}


def register(cls: type[Term]) -> type[Term]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a class attribute 'name'")
    if cls.name in _TERMS:
        raise ValueError(f"loss term {cls.name!r} registered twice")
    _TERMS[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(_TERMS)


def get(name: str) -> type[Term]:
    if name not in _TERMS:
        close = difflib.get_close_matches(name, _TERMS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown method {name!r}.{hint} Available: {', '.join(available())}")
    return _TERMS[name]


def create(name: str, **params) -> Term:
    """Instantiate term ``name``; unknown parameters raise an error listing the valid ones."""
    cls = get(name)
    sig = inspect.signature(cls.__init__)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    valid = [p for p in sig.parameters if p != "self"]
    bad = [k for k in params if k not in valid]
    if bad and not accepts_any:
        raise ValueError(f"method {name!r} has no parameter(s) {bad}; valid: {valid}")
    return cls(**params)
