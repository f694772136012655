"""Load a reference-codebase or torchvision checkpoint into a model, strictly, with errors that
say what went wrong and which zoo model the checkpoint belongs to."""
from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn

from wdistill.models.registry import available, create

_WRAPPER_KEYS = ("model", "state_dict")


def _extract_state_dict(obj) -> dict[str, torch.Tensor]:
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


def _strip_module(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = OrderedDict((_strip(k), v) for k, v in sd.items())
    meta = getattr(sd, "_metadata", None)
    if meta is not None:  # per-module versions steer how old checkpoints are upgraded
        out._metadata = OrderedDict(("" if k == "module" else _strip(k), v) for k, v in meta.items())
    return out


def _first_last(model: nn.Module) -> tuple[str | None, str | None]:
    """Paths of the first conv (its width follows in_channels) and the last linear layer
    (its height follows num_classes)."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return (convs[0] if convs else None), (linears[-1] if linears else None)


def _key_set(sd) -> frozenset:
    # PyTorch fills in num_batches_tracked when an old checkpoint lacks it, so it never decides.
    return frozenset(k for k in sd if not k.endswith("num_batches_tracked"))


@lru_cache(maxsize=None)
def _zoo_layout(name: str) -> tuple[frozenset, str | None, str | None]:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        m = create(name)
    first, last = _first_last(m)
    return _key_set(m.state_dict()), first, last


def _shapes_of(name: str, num_classes: int, in_channels: int) -> dict[str, tuple]:
    with torch.device("meta"):
        m = create(name, num_classes=num_classes, in_channels=in_channels)
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def _zoo_matches(state_dict: dict[str, torch.Tensor]) -> list[tuple[str, int, int]]:
    sd = _strip_module(state_dict)
    keys = _key_set(sd)
    found = []
    for name in available():
        zkeys, first, last = _zoo_layout(name)
        if zkeys != keys:
            continue
        num_classes = sd[f"{last}.weight"].shape[0] if last else 100
        in_channels = sd[f"{first}.weight"].shape[1] if first else 3
        shapes = _shapes_of(name, num_classes, in_channels)
        if all(tuple(v.shape) == shapes[k] for k, v in sd.items()):
            found.append((name, num_classes, in_channels))
    return found


def matching_zoo_models(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Zoo model names whose parameter names and shapes equal those of ``state_dict``, for the
    class count and input channels the checkpoint itself implies."""
    return [name for name, _, _ in _zoo_matches(state_dict)]


def _examples(keys, n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def load_checkpoint(model: nn.Module, path_or_dict, name: str | None = None,
                    trusted: bool = False) -> nn.Module:
    """Load weights into ``model`` with strict=True and return it.

    ``path_or_dict``: a file written by ``torch.save`` or an in-memory dict: a bare state_dict,
    or a dict holding one under ``'model'`` (RepDistiller, mdistiller) or ``'state_dict'``.
    A ``'module.'`` prefix (DataParallel) is removed. ``name`` is the model's zoo name, used in
    messages. ``trusted=True`` allows pickled non-tensor objects in the file (only for files you
    trust: unpickling can run code).
    Raises ValueError listing missing, unexpected and wrongly-shaped keys, and naming the zoo
    models whose layout the checkpoint does match.
    """
    if isinstance(path_or_dict, (str, os.PathLike)) and str(path_or_dict).endswith(".safetensors"):
        obj = read_safetensors(path_or_dict)[0]
    elif isinstance(path_or_dict, (str, os.PathLike)):
        try:
            obj = torch.load(path_or_dict, map_location="cpu", weights_only=not trusted)
        except FileNotFoundError:
            raise ValueError(f"checkpoint file not found: {path_or_dict}") from None
        except Exception as e:  # the safe unpickler refuses arbitrary objects
            if trusted:
                raise
            raise ValueError(
                f"could not load {path_or_dict} with the safe (weights-only) loader: {e}. If you "
                "trust this file, call load_checkpoint(..., trusted=True).") from e
    else:
        obj = path_or_dict
    sd = _strip_module(_extract_state_dict(obj))

    own = model.state_dict()
    missing = [k for k in _key_set(own) if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong_shape = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                   if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        name = name or "/".join(matching_zoo_models(own)) or None
        arch = f"{name} ({type(model).__name__})" if name else type(model).__name__
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {_examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {_examples(unexpected)})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} keys with another shape, checkpoint vs model "
                         f"(e.g. {_examples(wrong_shape, 3)})")
        matches = _zoo_matches(sd)
        if matches:
            calls = " or ".join(f"create({n!r}, num_classes={c}, in_channels={i})" for n, c, i in matches)
            parts.append(f"the checkpoint matches zoo model {'/'.join(n for n, _, _ in matches)}: "
                         f"build it with {calls}")
        else:
            parts.append("no zoo model matches it either; check which architecture produced it")
        raise ValueError(f"checkpoint does not fit {arch}: " + "; ".join(parts))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"loading into {name or type(model).__name__} failed: {e}") from e
    return model


# ---- safetensors export and reading ---------------------------------------------------------------

def save_student_safetensors(model: nn.Module, path: str | os.PathLike, meta: dict) -> Path:
    """Write ``model``'s state_dict to ``path`` (.safetensors), atomically. ``meta`` (e.g. arch,
    num_classes, in_channels) is stored as string metadata; non-strings are JSON-encoded."""
    from safetensors.torch import save_file

    tensors, seen = {}, set()
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        key = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        if key in seen:  # safetensors refuses tensors sharing memory (tied weights): store a copy
            v = v.clone()
        seen.add(key)
        tensors[k] = v
    metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items() if v is not None}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state_dict, metadata) of a .safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

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
    from wdistill.io import safe_load
    obj = safe_load(path, what="checkpoint", fix="use a file written by wdistill or a plain state_dict")
    return obj if isinstance(obj, dict) and "model" in obj else {"model": _extract_state_dict(obj)}


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load pretrained weights (e.g. ImageNet) into ``model``: every key must match, except the
    final classifier, which is left at its initialisation when its shape differs (another class
    count). Safe loaders only (safetensors or ``weights_only=True``)."""
    if str(path).endswith(".safetensors"):
        sd = read_safetensors(path)[0]
    else:
        try:
            sd = _extract_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:
            raise ValueError(f"could not load pretrained weights {path} with the safe loader: {e}") from e
    sd = _strip_module(sd)
    own = model.state_dict()
    _, last = _first_last(model)
    head = {f"{last}.weight", f"{last}.bias"} if last else set()
    skipped = [k for k in head if k in sd and k in own and sd[k].shape != own[k].shape]
    for k in skipped:
        del sd[k]
    missing = [k for k in _key_set(own) if k not in sd and k not in skipped]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"pretrained weights {path} do not fit {type(model).__name__}: "
                         f"missing {_examples(missing) or 'none'}; unexpected {_examples(unexpected) or 'none'}; "
                         f"other shape {_examples(wrong, 3) or 'none'}")
    model.load_state_dict(sd, strict=not skipped)
    return model
