"""wdistill: knowledge distillation in PyTorch built around optimal transport.

``wdistill.distill(student, teacher, train_data, test_data, ...)`` and ``wdistill.auto(...)`` are the
Python entry points (:mod:`wdistill.api`); they load on first use, so ``import wdistill`` stays light.
"""
import importlib

__version__ = "0.1.0"
_API = ("distill", "auto")


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module("wdistill.api"), name)
    raise AttributeError(f"module 'wdistill' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
