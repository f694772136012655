"""Named method recipes: the loss-term lists that the demo and the benchmark rows use.

A recipe is what a user would write under ``loss:`` in a config; each method declares its own
next to its term (``wdistill.losses.recipes``). They start from the published CIFAR-100
defaults in the classic form ``gamma*CE + alpha*KD + beta*method``
(RepDistiller: gamma=1, alpha=0 for the feature methods; CE 0.1 / KD 0.9 for KD; CRD+KD and
WCoRD+KD add KD with alpha=1). Epoch-valued settings are in CIFAR epochs (init stages 30 of 240,
DKD warm-up 20); ``scale_epoch_params`` scales them to a schedule.
WKD's decay start is a fraction of training, 150/240, whatever the schedule.
Small-data presets tuned on the FMNIST-KD v1 validation split live in ``configs/fmnist``.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import yaml

from wdistill.losses import recipes as published

WKD_DECAY_FRAC = 150 / 240
CIFAR_EPOCHS = 240  # the published recipes' length; epoch-valued settings scale by E / 240
# Epoch-valued parameters of the CIFAR-100 recipes, in CIFAR epochs.
EPOCH_PARAMS = {"init_epochs": 30, "warmup": 20}
CE = published.ce()

# Generated from the recipes each method publishes next to its term (wdistill/losses/*.py,
# ``published.publish``), in protocol order; live views, so a method published later shows up too.
RECIPES: Mapping[str, list[dict]] = published.recipes_view()
# Row labels of the benchmark tables, in protocol order (BENCHMARK.md A).
LABELS: Mapping[str, str] = published.labels_view()

# Shipped inside the package (the repo's top-level configs/ is a link to it), so a plain
# `pip install` finds the tuned presets too.
PRESET_DIR = Path(__file__).resolve().parent / "configs" / "fmnist"


def default_recipe(method: str) -> list[dict]:
    """The published (CIFAR-100) recipe of ``method``, ignoring any preset."""
    if method not in RECIPES:
        raise ValueError(f"unknown method recipe {method!r}; known: {', '.join(RECIPES)}")
    return [dict(t) for t in RECIPES[method]]


def recipe(method: str) -> list[dict]:
    """Loss terms of ``method``: configs/fmnist/<method>.yaml when present, else RECIPES."""
    preset = PRESET_DIR / f"{method}.yaml"
    if preset.is_file():
        return yaml.safe_load(preset.read_text())["loss"]
    return default_recipe(method)


def scale_epoch_params(terms: list[dict], epochs: int) -> list[dict]:
    """Epoch-valued settings (init stages of AB/FSP/FT: 30; DKD warm-up: 20, in CIFAR's 240
    epochs) set to the same fraction of an ``epochs``-long schedule, at least 1.
    WKD's decay start is already a fraction (``decay_start_frac``)."""
    out = copy.deepcopy(terms)
    for t in out:
        for key, cifar_value in EPOCH_PARAMS.items():
            if key in t:
                t[key] = max(1, round(cifar_value * epochs / CIFAR_EPOCHS))
    return out


def recipe_for(method: str, epochs: int) -> list[dict]:
    """``recipe(method)`` with its epoch-valued settings scaled to an ``epochs``-long run."""
    return scale_epoch_params(recipe(method), epochs)
