"""Weight files: state_dicts inside checkpoints of the reference codebases, safetensors export and
reading, pretrained initial weights, and wdistill's cache directory. Strict loading into a zoo
model, with the zoo model a checkpoint does fit named in the error, is ``registry.load_checkpoint``."""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

from wdistill.io import atomic_write_bytes, safe_load

_WRAPPER_KEYS = ("model", "state_dict")


def extract_state_dict(obj) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                return obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        raise ValueError(
            "checkpoint is neither a state_dict nor a dict holding one under "
            f"{' or '.join(repr(k) for k in _WRAPPER_KEYS)}; its top-level keys are "
            f"{sorted(map(str, obj))[:10]}")
    raise ValueError(f"checkpoint must be a path or a dict, got {type(obj).__name__}")


def _strip(key: str) -> str:
    # DataParallel/DistributedDataParallel save every key under "module.".
    return key[len("module."):] if key.startswith("module.") else key


def strip_module(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = OrderedDict((_strip(k), v) for k, v in sd.items())
    meta = getattr(sd, "_metadata", None)
    if meta is not None:  # per-module versions steer how old checkpoints are upgraded
        out._metadata = OrderedDict(("" if k == "module" else _strip(k), v) for k, v in meta.items())
    return out


def first_last(model: nn.Module) -> tuple[str | None, str | None]:
    """Paths of the first conv (its width follows in_channels) and the last linear layer
    (its height follows num_classes)."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return (convs[0] if convs else None), (linears[-1] if linears else None)


def key_set(sd) -> frozenset:
    # PyTorch fills in num_batches_tracked when an old checkpoint lacks it, so it never decides.
    return frozenset(k for k in sd if not k.endswith("num_batches_tracked"))


def examples(keys, n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


# ---- safetensors export and reading ---------------------------------------------------------------

def save_student_safetensors(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, meta: dict) -> Path:
    """Write ``state_dict`` to ``path`` (.safetensors), atomically. ``meta`` (e.g. arch,
    num_classes, in_channels) is stored as string metadata; non-strings are JSON-encoded."""
    tensors, seen = {}, set()
    for k, v in state_dict.items():
        v = v.detach().cpu().contiguous()
        key = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        if key in seen:  # safetensors refuses tensors sharing memory (tied weights): store a copy
            v = v.clone()
        seen.add(key)
        tensors[k] = v
    metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items() if v is not None}
    atomic_write_bytes(save(tensors, metadata=metadata), path)
    return Path(path)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state_dict, metadata) of a .safetensors file."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(str(path)), meta
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable .safetensors file: {e}") from None


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A student checkpoint as a dict: ``model`` (state_dict) plus what the file records
    (``arch``, ``num_classes``, ``in_channels``, ``kwargs``...), from a .pt written by
    ``torch.save`` (weights-only load) or a .safetensors file (its metadata)."""
    if str(path).endswith(".safetensors"):
        sd, meta = read_safetensors(path)
        out = {"model": sd}
        for k, v in meta.items():
            try:
                out[k] = v if k == "arch" else json.loads(v)
            except json.JSONDecodeError:
                out[k] = v
        return out
    obj = safe_load(path, what="checkpoint", fix="use a file written by wdistill or a plain state_dict")
    return obj if isinstance(obj, dict) and "model" in obj else {"model": extract_state_dict(obj)}


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load pretrained weights (e.g. ImageNet) into ``model``: every key must match, except the
    final classifier, which is left at its initialisation when its shape differs (another class
    count). Safe loaders only (safetensors or ``weights_only=True``)."""
    if str(path).endswith(".safetensors"):
        sd = read_safetensors(path)[0]
    else:
        try:
            sd = extract_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:
            raise ValueError(f"could not load pretrained weights {path} with the safe loader: {e}") from e
    sd = strip_module(sd)
    own = model.state_dict()
    _, last = first_last(model)
    head = {f"{last}.weight", f"{last}.bias"} if last else set()
    skipped = [k for k in head if k in sd and k in own and sd[k].shape != own[k].shape]
    for k in skipped:
        del sd[k]
    missing = [k for k in key_set(own) if k not in sd and k not in skipped]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd
             if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"pretrained weights {path} do not fit {type(model).__name__}: "
            f"missing {examples(missing) or 'none'}; unexpected {examples(unexpected) or 'none'}; "
            f"other shape {examples(wrong, 3) or 'none'}"
        )
    model.load_state_dict(sd, strict=not skipped)
    return model


def cache_dir() -> Path:
    """wdistill's cache: ``$WDISTILL_CACHE``, else ``$XDG_CACHE_HOME/wdistill``, else ``~/.cache/wdistill``."""
    if os.environ.get("WDISTILL_CACHE"):
        return Path(os.environ["WDISTILL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "wdistill"


def resolve_path(value: str | os.PathLike) -> Path:
    """``cache:REL`` means ``cache_dir()/REL`` (presets name fetched teachers this way); any other
    value is an ordinary path (``~`` expanded)."""
    value = str(value)
    if value.startswith("cache:"):
        return cache_dir() / value[len("cache:") :]
    return Path(value).expanduser()


def pretrained_path(spec: str, pretrained: str | bool, library: str | None) -> Path:
    """The weights file ``pretrained`` names for ``spec``: a path, or (``True``) the file in the cache
    folder of its ``library`` (timm, torchvision, or None for a factory)."""
    if pretrained is not True:
        path = resolve_path(pretrained)
        if not path.is_file():
            raise ValueError(f"pretrained weights {str(path)!r} do not exist: put the file there")
        return path
    name = spec.partition(":")[2] if library else spec.replace(":", ".")
    folder = cache_dir() / "pretrained" / (library or "factory")
    for ext in (".safetensors", ".pth", ".pt"):
        if (folder / f"{name}{ext}").is_file():
            return folder / f"{name}{ext}"
    raise ValueError(
        f"pretrained: true for {spec!r} looks for {folder / name}.safetensors (or .pth): no such "
        "file. Nothing is downloaded at run time: put the weights file there, or set pretrained "
        "to the file's path"
    )
