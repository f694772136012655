"""Published recipes, declared by each method next to its term: the one source that the named
recipes (``wdistill.config.presets``), the benchmark's tuning candidates, the demo's method lists and the
CIFAR-100 preset generator read.

A method file calls :func:`publish` once per benchmark row it defines (a term's own row, or a
combination such as CRD+KD next to CRD)::

    publish("kd", label="KD", order=1, terms=[ce(0.1), {"name": "kd", "weight": 0.9, "T": 4}],
            grid=[{}, {"kd.T": 2}, {"kd.T": 8}], tune_priority=0)

so adding a method is one file. Nothing here depends on the engine or the benchmark.

The recipes are in the classic form ``gamma*CE + alpha*KD + beta*method`` of the CIFAR-100 papers
(RepDistiller: gamma=1, alpha=0 for the feature methods; CE 0.1 / KD 0.9 for KD; CRD+KD and
WCoRD+KD add KD with alpha=1). Epoch-valued settings are in CIFAR epochs (init stages 30 of 240,
DKD warm-up 20); :func:`scale_epoch_params` scales them to a schedule. WKD's decay start is a
fraction of training, 150/240, whatever the schedule. Presets tuned on a data set (the files in
``wdistill/config/presets``) are read by ``wdistill.config.presets.recipe``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Published:
    """One benchmark row: its loss terms (as written under ``loss:`` in a config) and how to tune it.

    method: row name (``wdistill distill``'s recipe name, e.g. ``"crd_kd"``); label: its table label.
    terms: the CIFAR-100 recipe in the classic ``gamma*CE + alpha*KD + beta*method`` form, epoch
      settings in CIFAR epochs (scaled by :func:`scale_epoch_params`).
    grid: tuning candidates, ``{"term.param": value}`` applied to ``terms``; the first is ``{}``
      (the recipe unchanged). None: the row is not tuned (vanilla).
    order: position in the protocol's tables (rows sort by it, then by declaration).
    tune_priority: order in which ``bench accuracy --tune`` works through rows when time is short.
    demo: position in ``wdistill demo --full``'s list (None: not in it); quick: in the quick demo too.
    """

    method: str
    label: str
    terms: tuple
    grid: tuple | None = None
    order: float = math.inf
    tune_priority: float = math.inf
    demo: float | None = None
    quick: bool = False
    seq: int = field(default=0, compare=False)


_PUBLISHED: dict[str, Published] = {}


def ce(weight: float = 1.0) -> dict:
    """The cross-entropy term of a recipe."""
    return {"name": "ce", "weight": weight}


def bracket(term: str, key: str, value: float) -> list[dict]:
    """The published value, and x0.3 and x3 of it (the tuning budget's default grid)."""
    return [{}, {f"{term}.{key}": round(value * 0.3, 6)}, {f"{term}.{key}": round(value * 3, 6)}]


def publish(method: str, *, label: str, terms: list[dict], grid: list[dict] | None = None,
            order: float = math.inf, tune_priority: float = math.inf, demo: float | None = None,
            quick: bool = False) -> Published:
    """Declare benchmark row ``method``; a second declaration of one name is an error."""
    if method in _PUBLISHED:
        raise ValueError(f"recipe {method!r} published twice")
    if grid is not None and (not grid or grid[0] != {}):
        raise ValueError(f"recipe {method!r}: the first tuning candidate must be {{}} (the recipe unchanged)")
    entry = Published(method, label, tuple(copy.deepcopy(terms)), None if grid is None else tuple(grid),
                      order, tune_priority, demo, quick, len(_PUBLISHED))
    _PUBLISHED[method] = entry
    return entry


_DETECTION: dict[str, Published] = {}


def det(weight: float = 1.0) -> dict:
    """The detector's own losses, the term every detection recipe starts from (CE's counterpart)."""
    return {"name": "det", "weight": weight}


def publish_detection(method: str, *, label: str, terms: list[dict], order: float = math.inf) -> Published:
    """Declare detection row ``method`` (``task: detection``): its terms on Faster R-CNN, beside
    the method's classification row. The COCO presets (``wdistill/config/presets/coco``) and the
    FMNIST-Det benchmark read these."""
    if method in _DETECTION:
        raise ValueError(f"detection recipe {method!r} published twice")
    entry = Published(method, label, tuple(copy.deepcopy(terms)), None, order, math.inf, None, False, len(_DETECTION))
    _DETECTION[method] = entry
    return entry


def detection_rows() -> list[Published]:
    """Every detection row in protocol order."""
    return sorted(_DETECTION.values(), key=lambda p: (p.order, p.seq))


def detection_recipe(method: str) -> list[dict]:
    """The terms of detection row ``method`` (fresh copies)."""
    if method not in _DETECTION:
        raise ValueError(f"no detection recipe {method!r}; known: {', '.join(p.method for p in detection_rows())}")
    return [dict(t) for t in _DETECTION[method].terms]


def unpublish(method: str) -> None:
    """Remove a row (tests that declare a toy method clean up with this)."""
    _PUBLISHED.pop(method, None)


def rows() -> list[Published]:
    """Every published row in protocol order."""
    return sorted(_PUBLISHED.values(), key=lambda p: (p.order, p.seq))


class _View(Mapping):
    """A read-only mapping computed from the registry at every access, so a method published
    after import (a plugin, a test's toy term) shows up everywhere at once."""

    def __init__(self, build):
        self._build = build

    def _data(self) -> dict:
        return self._build()

    def __getitem__(self, key):
        return self._data()[key]

    def __iter__(self):
        return iter(self._data())

    def __len__(self):
        return len(self._data())

    def __or__(self, other):
        return {**self._data(), **other}

    def __ror__(self, other):
        return {**other, **self._data()}

    def __repr__(self):
        return repr(self._data())


class _ListView(Sequence):
    def __init__(self, build):
        self._build = build

    def __getitem__(self, i):
        return self._build()[i]

    def __len__(self):
        return len(self._build())

    def __eq__(self, other):
        return list(self) == list(other)

    def __repr__(self):
        return repr(self._build())


def recipes_view() -> Mapping:
    """method -> list of term dicts (fresh copies), in protocol order."""
    return _View(lambda: {p.method: [dict(t) for t in p.terms] for p in rows()})


def labels_view() -> Mapping:
    return _View(lambda: {p.method: p.label for p in rows()})


def grids_view() -> Mapping:
    """method -> tuning candidates, for the rows that are tuned, in protocol order."""
    return _View(lambda: {p.method: [dict(c) for c in p.grid] for p in rows() if p.grid is not None})


def priority_view() -> Sequence:
    """Tuned rows in tuning-priority order."""
    return _ListView(lambda: [p.method for p in sorted((p for p in rows() if p.grid is not None),
                                                       key=lambda p: (p.tune_priority, p.order, p.seq))])


def demo_view(quick: bool) -> Sequence:
    """The demo's rows (``quick``: the quick demo's subset) in demo order."""
    return _ListView(lambda: [p.method for p in sorted((p for p in rows() if p.demo is not None
                                                        and (p.quick or not quick)), key=lambda p: p.demo)])


CIFAR_EPOCHS = 240  # the published recipes' length; epoch-valued settings scale by E / 240
# Epoch-valued parameters of the CIFAR-100 recipes, in CIFAR epochs.
EPOCH_PARAMS = {"init_epochs": 30, "warmup": 20}

# Live views of the registry, in protocol order, so a method published later shows up too.
RECIPES: Mapping[str, list[dict]] = recipes_view()
LABELS: Mapping[str, str] = labels_view()
GRIDS: Mapping[str, list[dict]] = grids_view()


def default_recipe(method: str) -> list[dict]:
    """The published (CIFAR-100) recipe of ``method``, ignoring any preset."""
    if method not in RECIPES:
        raise ValueError(f"unknown method recipe {method!r}; known: {', '.join(RECIPES)}")
    return [dict(t) for t in RECIPES[method]]


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


def apply_candidate(terms: list[dict], candidate: dict) -> list[dict]:
    """``terms`` with ``{"term.param": value}`` set; naming a term not in the recipe is an error."""
    out = copy.deepcopy(terms)
    by_name = {t["name"]: t for t in out}
    for key, value in candidate.items():
        term, _, param = key.partition(".")
        if term not in by_name or not param:
            raise ValueError(f"candidate key {key!r} must be 'term.param' with term one of {sorted(by_name)}")
        by_name[term][param] = value
    return out


def describe(terms: list[dict]) -> str:
    """Short settings string of the non-CE terms, e.g. ``kd w=0.9 T=4``."""
    keys = ("T", "lambda_l", "tau", "lambda_f", "gamma", "beta", "main_weight", "lambda1", "lambda2", "num_negatives",
            "positives")
    parts = []
    for t in terms:
        if t["name"] == "ce":
            continue
        extra = " ".join(f"{k}={t[k]:g}" if isinstance(t[k], float) else f"{k}={t[k]}" for k in keys if k in t)
        parts.append(f"{t['name']} w={t.get('weight', 1.0):g}" + (f" {extra}" if extra else ""))
    return "; ".join(parts)
