"""Distillation loss terms: ``create(name, **params)``, ``available()``, ``register``.

Every module of this package (the ``wkd`` and ``wcord`` families included) is imported here, so a
new method file registers itself.
"""
import importlib
import pkgutil

from wdistill.losses.base import SetupContext, Stage, Term
from wdistill.losses.registry import available, create, get, register

for _m in pkgutil.walk_packages(__path__, prefix=f"{__name__}."):
    importlib.import_module(_m.name)

__all__ = ["SetupContext", "Stage", "Term", "available", "create", "get", "register"]
