"""Model zoo: CIFAR and ImageNet architectures with reference parameter names, and hook-based taps.

Every module of this package is imported here, so a new architecture file registers itself.
"""
import importlib
import pkgutil

from wdistill.models.registry import available, create, register
from wdistill.models.weights import load_checkpoint, read_checkpoint, save_student_safetensors
from wdistill.models.specs import build, cache_dir, resolve_path
from wdistill.models.taps import FeatureTap, TapSpec, spec_for

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["available", "create", "register", "build", "cache_dir", "resolve_path", "load_checkpoint",
           "read_checkpoint", "save_student_safetensors", "FeatureTap", "TapSpec", "spec_for"]
