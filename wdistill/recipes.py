"""Named method recipes: the loss-term lists that the demo and the benchmark rows use.

A recipe is what a user would write under ``loss:`` in a config. Weights follow REFERENCE.md
(CE/KD 0.1/0.9 in the classic recipe) unless a small-data preset in configs/fmnist overrides them.
"""
from __future__ import annotations

from pathlib import Path

import yaml

RECIPES: dict[str, list[dict]] = {
    "vanilla": [{"name": "ce", "weight": 1.0}],
    "kd": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "T": 4}],
}

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "fmnist"


def recipe(method: str) -> list[dict]:
    """Loss terms of ``method``: configs/fmnist/<method>.yaml when present, else RECIPES."""
    preset = PRESET_DIR / f"{method}.yaml"
    if preset.is_file():
        return yaml.safe_load(preset.read_text())["loss"]
    if method not in RECIPES:
        raise ValueError(f"unknown method recipe {method!r}; known: {', '.join(sorted(RECIPES))}")
    return [dict(t) for t in RECIPES[method]]
