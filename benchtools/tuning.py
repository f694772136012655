"""The tuning budget of FMNIST-KD v1: at most 4 candidate settings per method of its main weight
(and temperature where it has one), chosen by final-epoch top-1 on the validation split (training
images 10,000..14,999), seed 0, quick schedule. The test set is never looked at.

A candidate is a dict ``{"term.param": value}`` applied to the method's CIFAR-100 recipe
(``wdistill.losses.recipes.RECIPES``); the first candidate of every method is that recipe unchanged. Each method
declares its candidates next to its term (``grid=`` of ``wdistill.losses.recipes.publish``). Every method
gets the same budget, 3 candidates: the published setting and, for a weight, x0.3 and x3 of it
(a bracket: from 100 to 10 classes CE shrinks from ~log 100 to ~log 10, so the best weight may
move either way). Where a method has a temperature or a recipe-specific choice the two others
move that instead: KD T in {2, 8}; DKD beta 2 (the reference's value for small-gap pairs) at T 4
and 2; WKD-L / WKD-L+F weight 30 tau 4 (the protocol's independent data point, 89.5%) and one
neighbour; AB / FSP (CE-only main stage as published) keep their loss on in the main stage.
"""
from __future__ import annotations

from wdistill.losses import recipes as published
from wdistill.losses.recipes import apply_candidate, describe  # noqa: F401  (the protocol's names)

# Each method's ``grid`` (``published.publish`` next to its term), in protocol order; a live view.
CANDIDATES = published.GRIDS
MAX_CANDIDATES = 4
# Order in which `bench accuracy --tune` works through the methods when time is short (each
# method's ``tune_priority``).
PRIORITY = published.priority_view()


def check_budget() -> None:
    for m, cands in CANDIDATES.items():
        if not 1 <= len(cands) <= MAX_CANDIDATES:
            raise ValueError(f"{m}: {len(cands)} candidates, the budget is 1..{MAX_CANDIDATES}")
