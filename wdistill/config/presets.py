"""The presets shipped in the package (``wdistill/config/presets``, linked as ``configs/`` in a
checkout): their names, their files, and the method recipes tuned on Fashion-MNIST.

A preset is an ordinary run config (``wdistill distill cifar100/resnet32x4-resnet8x4/wkd_l``).
``configs/fmnist/<method>.yaml`` holds the settings tuned on the FMNIST-KD v1 validation split
(written by the benchmark tooling, ``python -m benchtools accuracy --tune``); :func:`recipe` reads
them, and falls back to the method's published CIFAR-100 recipe.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import yaml

from wdistill.errors import ConfigError
from wdistill.losses.recipes import default_recipe, scale_epoch_params

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
FMNIST_DIR = PRESETS_DIR / "fmnist"


def list_presets() -> list[str]:
    """Names of the presets shipped with the package, e.g. ``cifar100/resnet32x4-resnet8x4/wkd_l``."""
    return sorted(p.relative_to(PRESETS_DIR).with_suffix("").as_posix() for p in PRESETS_DIR.rglob("*.yaml"))


def preset_path(name: str) -> Path:
    """The file of shipped preset ``name`` (with or without ``.yaml``, ``configs/`` prefix allowed)."""
    key = name.removeprefix("configs/").removesuffix(".yaml")
    path = PRESETS_DIR / f"{key}.yaml"
    if key and ".." not in Path(key).parts and path.is_file():
        return path
    close = difflib.get_close_matches(key, list_presets(), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"config {name!r} does not exist: it is neither a file nor a shipped preset.{hint} "
                      "`wdistill list --presets` prints the preset names (e.g. cifar100/resnet32x4-resnet8x4/kd)")


def recipe(method: str, preset_dir: Path | None = None) -> list[dict]:
    """Loss terms of ``method``: ``preset_dir/<method>.yaml`` (default: the shipped Fashion-MNIST
    presets) when present, else the published recipe."""
    preset = Path(preset_dir or FMNIST_DIR) / f"{method}.yaml"
    if preset.is_file():
        return yaml.safe_load(preset.read_text())["loss"]
    return default_recipe(method)


def recipe_for(method: str, epochs: int) -> list[dict]:
    """``recipe(method)`` with its epoch-valued settings scaled to an ``epochs``-long run."""
    return scale_epoch_params(recipe(method), epochs)
