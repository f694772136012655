"""Build a model from the string a config names: a zoo name, ``timm:<name>``,
``torchvision:<name>`` or ``"pkg.module:factory"`` (a Python callable returning an ``nn.Module``).

Nothing is downloaded: ``pretrained`` is a local file, or ``true`` for the file in wdistill's cache
(``<cache>/pretrained/<library>/<name>.safetensors`` or ``.pth``; see :func:`cache_dir`).
Errors are ``ValueError`` with the fix in the message (the engine turns them into ConfigErrors).
"""
from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path

import torch.nn as nn

from wdistill.models.registry import create

LIBRARIES = ("timm", "torchvision")


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
        return cache_dir() / value[len("cache:"):]
    return Path(value).expanduser()


def kind_of(spec: str) -> str:
    """'zoo', 'timm', 'torchvision' or 'factory'."""
    head, sep, _ = spec.partition(":")
    if sep and head in LIBRARIES:
        return head
    if sep:
        return "factory"
    return "zoo"


def _import_library(lib: str):
    try:
        return importlib.import_module(lib)
    except ImportError as e:
        raise ValueError(
            f"model '{lib}:...' needs the {lib} package, which is not importable here ({e}). Install torch "
            f"first, then `pip install 'wdistill[{lib}]'` (the extra never replaces your torch; it must "
            f"be a {lib} release built for your torch version)") from None
    except Exception as e:  # e.g. a torchvision built for another torch: "operator torchvision::nms does not exist"
        raise ValueError(f"importing {lib} failed ({type(e).__name__}: {e}); this usually means {lib} was "
                         "built for another torch version: install the release that matches your torch") from None


def _timm(name: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    timm = _import_library("timm")
    if name not in timm.list_models():
        close = timm.list_models(f"*{name}*")[:5]
        raise ValueError(f"timm has no model {name!r}" + (f" (similar: {', '.join(close)})" if close else ""))
    # pretrained=False: weights come only from a local file (load_pretrained), never from the hub.
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)


def _torchvision(name: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    tv = _import_library("torchvision")
    names = tv.models.list_models(module=tv.models)
    if name not in names:
        import difflib
        close = difflib.get_close_matches(name, names, n=3)
        raise ValueError(f"torchvision has no classification model {name!r}"
                         + (f" (did you mean {', '.join(close)}?)" if close else ""))
    if in_channels != 3:
        raise ValueError(f"torchvision:{name} takes 3-channel images, the data has {in_channels}: "
                         "use a timm model (in_chans adapts the stem) or a factory")
    return tv.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def _factory(spec: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        missing = getattr(e, "name", None) or module_name
        extra = f" (`pip install 'wdistill[{missing}]'`)" if missing in LIBRARIES else ""
        raise ValueError(f"model {spec!r}: cannot import module {module_name!r} ({e}). Install the package "
                         f"that provides {missing!r}{extra}, or put the module on PYTHONPATH") from None
    fn = getattr(module, attr, None) if attr else None
    if not callable(fn):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ValueError(f"model {spec!r}: module {module_name!r} has no callable {attr!r} "
                         f"(its callables: {', '.join(public[:10]) or 'none'})")
    # Pass num_classes / in_channels only to factories that accept them.
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    auto = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels))
            if (k in params or takes_any) and k not in kwargs}
    try:
        model = fn(**auto, **kwargs)
    except TypeError as e:
        raise ValueError(f"model {spec!r}: calling {attr}(**{sorted({**auto, **kwargs})}) failed: {e}; "
                         "fix model kwargs") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {spec!r}: {attr}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def build(spec: str, num_classes: int = 100, in_channels: int = 3, kwargs: dict | None = None,
          pretrained: str | bool | None = None) -> nn.Module:
    """The model ``spec`` names, for ``num_classes`` outputs and ``in_channels`` input planes.

    ``pretrained``: a weights file (``.safetensors``/``.pt``/``.pth``), or ``True`` for
    ``<cache>/pretrained/<library>/<name>.(safetensors|pth)``. The classifier is kept only when its
    shape fits ``num_classes``; every other key must match.
    """
    kwargs = dict(kwargs or {})
    kind = kind_of(spec)
    if kind == "zoo":
        model = create(spec, num_classes=num_classes, in_channels=in_channels, **kwargs)
    elif kind == "timm":
        model = _timm(spec[len("timm:"):], num_classes, in_channels, kwargs)
    elif kind == "torchvision":
        model = _torchvision(spec[len("torchvision:"):], num_classes, in_channels, kwargs)
    else:
        model = _factory(spec, num_classes, in_channels, kwargs)
    if pretrained:
        from wdistill.models.weights import load_pretrained
        load_pretrained(model, pretrained_path(spec, pretrained))
    return model


def pretrained_path(spec: str, pretrained: str | bool) -> Path:
    if pretrained is not True:
        path = resolve_path(pretrained)
        if not path.is_file():
            raise ValueError(f"pretrained weights {str(path)!r} do not exist: put the file there")
        return path
    kind = kind_of(spec)
    name = spec.partition(":")[2] if kind in LIBRARIES else spec.replace(":", ".")
    folder = cache_dir() / "pretrained" / (kind if kind in LIBRARIES else "factory")
    for ext in (".safetensors", ".pth", ".pt"):
        if (folder / f"{name}{ext}").is_file():
            return folder / f"{name}{ext}"
    raise ValueError(f"pretrained: true for {spec!r} looks for {folder / name}.safetensors (or .pth): no such "
                     "file. Nothing is downloaded at run time: put the weights file there, or set pretrained "
                     "to the file's path")
