"""Models: ``create(spec)`` for zoo names, ``timm:``, ``torchvision:`` and ``pkg.module:factory``;
hook-based feature taps; weight files; the published CIFAR-100 teachers.

The zoo (``wdistill.models.zoo``) is imported here, so every architecture file registers itself.
"""
from wdistill.models import zoo  # noqa: F401  (registers the zoo architectures)
from wdistill.models.registry import (
                                      available,
                                      check_checkpoint,
                                      check_spec,
                                      check_zoo_name,
                                      create,
                                      io_shape,
                                      load_checkpoint,
                                      matching_zoo_models,
                                      output_classes,
                                      register,
)
from wdistill.models.taps import FeatureTap, TapSpec, spec_for
from wdistill.models.weights import cache_dir, read_checkpoint, resolve_path, save_student_safetensors

__all__ = ["available", "check_checkpoint", "check_spec", "check_zoo_name", "create", "register", "io_shape",
           "output_classes", "load_checkpoint", "matching_zoo_models", "cache_dir", "resolve_path",
           "read_checkpoint", "save_student_safetensors", "FeatureTap", "TapSpec", "spec_for"]
