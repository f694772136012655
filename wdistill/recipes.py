"""Named method recipes: the loss-term lists that the demo and the benchmark rows use.

A recipe is what a user would write under ``loss:`` in a config. They start from the CIFAR-100
defaults of REFERENCE.md in the classic form ``gamma*CE + alpha*KD + beta*method``
(RepDistiller: gamma=1, alpha=0 for the feature methods; CE 0.1 / KD 0.9 for KD; CRD+KD and
WCoRD+KD add KD with alpha=1). Epoch-valued settings are in CIFAR epochs (init stages 30 of 240,
DKD warm-up 20); ``scale_epoch_params`` scales them to a schedule.
WKD's decay start is a fraction of training, 150/240, whatever the schedule.
Small-data presets tuned on the FMNIST-KD v1 validation split live in ``configs/fmnist``.
"""
from __future__ import annotations

from pathlib import Path

import copy

import yaml

WKD_DECAY_FRAC = 150 / 240
CIFAR_EPOCHS = 240  # the published recipes' length; epoch-valued settings scale by E / 240
# Epoch-valued parameters of the CIFAR-100 recipes (REFERENCE.md), in CIFAR epochs.
EPOCH_PARAMS = {"init_epochs": 30, "warmup": 20}
CE = {"name": "ce", "weight": 1.0}

RECIPES: dict[str, list[dict]] = {
    "vanilla": [CE],
    "kd": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "T": 4}],
    "fitnet": [CE, {"name": "fitnet", "weight": 100.0}],
    "at": [CE, {"name": "at", "weight": 1000.0}],
    "sp": [CE, {"name": "sp", "weight": 3000.0}],
    "cc": [CE, {"name": "cc", "weight": 0.02}],
    "vid": [CE, {"name": "vid", "weight": 1.0}],
    "rkd": [CE, {"name": "rkd", "weight": 1.0}],
    "pkt": [CE, {"name": "pkt", "weight": 30000.0}],
    # AB / FSP: an init stage (30 CIFAR epochs) on the method's loss, then CE only (main_weight 0).
    "ab": [CE, {"name": "ab", "weight": 1.0, "init_epochs": 30, "main_weight": 0.0}],
    # FT: RepDistiller pre-trains the paraphraser at lr 0.01 for resnet students (pretrain.py).
    "ft": [CE, {"name": "ft", "weight": 200.0, "init_epochs": 30, "init_lr": 0.01}],
    "fsp": [CE, {"name": "fsp", "weight": 50.0, "init_epochs": 30, "main_weight": 0.0}],
    "nst": [CE, {"name": "nst", "weight": 50.0}],
    "crd": [CE, {"name": "crd", "weight": 0.8, "num_negatives": 4096}],
    "crd_kd": [CE, {"name": "kd", "weight": 1.0, "T": 4}, {"name": "crd", "weight": 0.8, "num_negatives": 4096}],
    "dkd": [CE, {"name": "dkd", "weight": 1.0, "alpha": 1.0, "beta": 8.0, "T": 4, "warmup": 20}],
    "wkd_l": [CE, {"name": "wkd_l", "weight": 1.0, "lambda_l": 600.0, "tau": 8.0, "kappa": 1.0,
                   "decay_start_frac": WKD_DECAY_FRAC}],
    "wkd_f": [CE, {"name": "wkd_f", "weight": 1.0, "lambda_f": 0.08, "gamma": 4.0, "grid": 1,
                   "decay_start_frac": WKD_DECAY_FRAC}],
    "wkd_lf": [CE, {"name": "wkd_l", "weight": 1.0, "lambda_l": 200.0, "tau": 8.0, "kappa": 1.0,
                    "decay_start_frac": WKD_DECAY_FRAC},
               {"name": "wkd_f", "weight": 1.0, "lambda_f": 0.08, "gamma": 8.0, "grid": 1,
                "decay_start_frac": WKD_DECAY_FRAC}],
    "wcord": [CE, {"name": "wcord", "weight": 1.0, "lambda1": 0.8, "lambda2": 0.1, "num_negatives": 4096,
                   "positives": "memory"}],
    "wcord_kd": [CE, {"name": "kd", "weight": 1.0, "T": 4},
                 {"name": "wcord", "weight": 1.0, "lambda1": 0.8, "lambda2": 0.1, "num_negatives": 4096,
                  "positives": "memory"}],
}

# Row labels of the benchmark tables, in protocol order (BENCHMARK.md A).
LABELS = {"vanilla": "vanilla", "kd": "KD", "fitnet": "FitNet", "at": "AT", "sp": "SP", "cc": "CC", "vid": "VID",
          "rkd": "RKD", "pkt": "PKT", "ab": "AB", "ft": "FT", "fsp": "FSP", "nst": "NST", "crd": "CRD",
          "crd_kd": "CRD+KD", "dkd": "DKD", "wkd_l": "WKD-L", "wkd_f": "WKD-F", "wkd_lf": "WKD-L+WKD-F",
          "wcord": "WCoRD", "wcord_kd": "WCoRD+KD"}

# Shipped inside the package (the repo's top-level configs/ is a link to it), so a plain
# `pip install` finds the tuned presets too.
PRESET_DIR = Path(__file__).resolve().parent / "configs" / "fmnist"


def default_recipe(method: str) -> list[dict]:
    """The REFERENCE.md (CIFAR-100) recipe of ``method``, ignoring any preset."""
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
