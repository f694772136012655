"""The models that come from outside the zoo: ``timm:<name>``, ``torchvision:<name>`` and
``pkg.module:factory``. Errors are ``ValueError`` with the fix in the message."""
from __future__ import annotations

import difflib
import importlib
import inspect

import torch.nn as nn

LIBRARIES = ("timm", "torchvision")


def import_library(lib: str):
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


def _timm_having(name: str):
    """The timm module, after checking it has model ``name``."""
    timm = import_library("timm")
    if name not in timm.list_models():
        close = timm.list_models(f"*{name}*")[:5]
        raise ValueError(f"timm has no model {name!r}" + (f" (similar: {', '.join(close)})" if close else ""))
    return timm


def timm_model(name: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    timm = _timm_having(name)
    kwargs = dict(kwargs)
    for key, value in (("in_chans", in_channels), ("num_classes", num_classes)):  # timm's own spelling, accepted
        given = kwargs.pop(key, value)
        if given != value:
            raise ValueError(f"timm:{name} kwargs {key}={given} but the data have {value} "
                             f"{'channels' if key == 'in_chans' else 'classes'}: drop {key} from the kwargs (wdistill "
                             "sets it from the data) or use data that match")
    # pretrained=False: weights come only from a local file (load_pretrained), never from the hub.
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)


def _torchvision_having(name: str):
    """The torchvision module, after checking it has classification model ``name``."""
    tv = import_library("torchvision")
    names = tv.models.list_models(module=tv.models)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        raise ValueError(f"torchvision has no classification model {name!r}"
                         + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return tv


def torchvision_model(name: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    tv = _torchvision_having(name)
    if in_channels != 3:
        raise ValueError(f"torchvision:{name} takes 3-channel images, the data has {in_channels}: "
                         "use a timm model (in_chans adapts the stem) or a factory")
    return tv.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def _factory_function(spec: str):
    """The callable ``pkg.module:factory`` names, imported."""
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
    return fn


def factory_model(spec: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    fn = _factory_function(spec)
    attr = spec.partition(":")[2]
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


def check_library_spec(kind: str, spec: str) -> None:
    """ValueError, with the fix, unless ``spec`` (of ``kind`` 'timm', 'torchvision' or 'factory') names a model
    that can be built: its library imports and has the name, or its module imports and has the callable."""
    name = spec.partition(":")[2]
    if kind == "timm":
        _timm_having(name)
    elif kind == "torchvision":
        _torchvision_having(name)
    else:
        _factory_function(spec)
