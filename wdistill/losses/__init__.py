"""Distillation loss terms: ``create(name, **params)``, ``available()``.

Every module of this package is imported here, so a new method file registers itself.
"""
import importlib
import pkgutil

from wdistill.losses.base import ConfigError, SetupContext, Stage, Term
from wdistill.losses.registry import available, create, get, register

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["ConfigError", "SetupContext", "Stage", "Term", "available", "create", "get", "register"]
