"""Name -> loss-term class registry, and typed term parameters.

A term's ``__init__`` signature is its parameter schema: :func:`resolve_params` validates and
coerces configured values against the annotations (``T: float`` accepts ``10``, ``1e1`` and the
string ``"1e1"`` that YAML reads from ``T=1e1``; ``T=abc`` is an error naming the term, the
parameter and its type) and fills in the defaults, so a run's config records every value in force.
"""
from __future__ import annotations

import difflib
import inspect
import typing
import warnings
from typing import Any

from pydantic import ConfigDict, ValidationError, create_model

from wdistill.losses.base import Term

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


def _schema(cls: type[Term]):
    """(pydantic model of the parameters, accepts **kwargs) from ``cls.__init__``."""
    sig = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - an unresolvable annotation is simply not checked
        hints = {}
    fields, var_kw = {}, False
    for p in list(sig.parameters.values())[1:]:
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
            continue
        if p.kind is p.VAR_POSITIONAL:
            continue
        fields[p.name] = (hints.get(p.name, Any), ... if p.default is p.empty else p.default)
    model = create_model(f"{cls.__name__}Params", __config__=ConfigDict(extra="allow" if var_kw else "forbid",
                                                                         arbitrary_types_allowed=True), **fields)
    return model, var_kw


def _type_name(ann) -> str:
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def _renamed(name: str, cls: type[Term], params: dict[str, Any]) -> dict[str, Any]:
    """Old parameter names (``cls.renamed_params``: old -> (new, {old value: new value})) mapped to
    the new ones, with a warning that names the new spelling."""
    params = dict(params)
    for old, (new, values) in getattr(cls, "renamed_params", {}).items():
        if old not in params:
            continue
        if new in params:
            raise ValueError(f"method {name!r}: {old!r} is the old name of {new!r}; give only {new!r}")
        value = params.pop(old)
        params[new] = values.get(value, value) if isinstance(value, str) else value
        warnings.warn(f"method {name!r}: parameter {old}={value!r} is deprecated; write {new}={params[new]!r}",
                      FutureWarning, stacklevel=3)
    return params


def resolve_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` validated and coerced against term ``name``'s signature, defaults included."""
    cls = get(name)
    params = _renamed(name, cls, params)
    model, _ = _schema(cls)
    valid = list(model.model_fields)
    try:
        return model.model_validate(params).model_dump()
    except ValidationError as err:
        msgs = []
        for e in err.errors():
            key = ".".join(str(x) for x in e["loc"])
            if e["type"] == "extra_forbidden":
                msgs.append(f"method {name!r} has no parameter(s) [{key!r}]; valid: {valid}")
            elif e["type"] == "missing":
                msgs.append(f"method {name!r} needs parameter {key!r}")
            else:
                ann = model.model_fields[e["loc"][0]].annotation if e["loc"] and e["loc"][0] in model.model_fields \
                    else None
                msgs.append(f"method {name!r} parameter {key!r} must be {_type_name(ann)}, got {e.get('input')!r} "
                            f"({e['msg']})")
        raise ValueError("; ".join(msgs)) from None


def create(name: str, **params) -> Term:
    """Instantiate term ``name`` with validated, typed parameters."""
    return get(name)(**resolve_params(name, params))
