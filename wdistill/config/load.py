"""Reading a run config: a YAML file, a shipped preset name or a dict, with ``key=value``
overrides, validated against :mod:`wdistill.config.schema`; every error names the key and the fix."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from wdistill.config.presets import preset_path
from wdistill.config.schema import RunConfig
from wdistill.errors import ConfigError


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config{f' ({source})' if source else ''}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            section = _section_model(e["loc"][:-1])
            valid = sorted(section.model_fields) if section else []
            msg = f"unknown key; valid keys here: {', '.join(valid)}"
        elif e["type"] == "value_error":  # our own validators already name the value
            msg = msg.removeprefix("Value error, ")
        elif "input" in e and e["type"] != "missing":
            msg += f" (got {e['input']!r})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _section_model(loc) -> type[BaseModel] | None:
    model: Any = RunConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        model = next((a for a in _flatten_annotation(field.annotation)
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model


def _flatten_annotation(a):
    args = getattr(a, "__args__", None)
    if not args:
        return [a]
    return [x for arg in args for x in _flatten_annotation(arg)]


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings (value parsed as YAML; list items by index) to a raw dict."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. optim.lr=0.1")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for i, p in enumerate(parts[:-1]):
            node = _child(node, p, parts[i + 1], key)
        last = parts[-1]
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key part; write section.key=value, e.g. optim.lr=0.1")
        try:
            parsed = yaml.safe_load(value) if value != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]}); "
                              "quote it or fix the brackets, e.g. optim.milestones=[30,60]") from None
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {key!r}: {'.'.join(parts[:-1])!r} is a value, not a section")
        if isinstance(node, list):
            idx = _index(node, last, key, allow_append=True)
            node[idx:idx + 1] = [parsed]
        else:
            node[last] = parsed
    return raw


def _index(node: list, p: str, key: str, allow_append: bool = False) -> int:
    if not p.isdigit() or int(p) > len(node) - (0 if allow_append else 1):
        raise ConfigError(f"override {key!r}: {p!r} is not an index of a list of {len(node)} items")
    return int(p)


def _child(node, p, nxt, key):
    if isinstance(node, list):
        idx = _index(node, p, key, allow_append=True)
        if idx == len(node):
            node.append({})
        return node[idx]
    if not isinstance(node, dict):
        raise ConfigError(f"override {key!r}: {p!r} is not a section")
    if node.get(p) is not None and not isinstance(node[p], (dict, list)):
        raise ConfigError(f"override {key!r}: {p!r} is a value ({node[p]!r}), not a section")
    if node.get(p) is None:
        node[p] = [] if nxt.isdigit() else {}
    return node[p]


def load_config(source: str | Path | dict, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (or a dict), apply overrides, validate. Errors name key and fix."""
    if isinstance(source, dict):
        raw, where = source, ""
    else:
        path = Path(source)
        if not path.is_file():
            path = preset_path(str(source))
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        where = str(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"config {where} must be a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, where)) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
