"""The recipes, tuning candidates, demo lists and benchmark run configs generated from the methods'
own declarations (wdistill/losses/*.py, ``published.publish``) are exactly what the hand-written
tables held before (tests/data/recipes_snapshot.json, written from those tables at commit 6261f6d):
same keys, same order, same values and the same int/float types, so the benchmark's finished
runs (reused by config) stay valid."""
import json
from pathlib import Path

import pytest

from benchtools import protocol, tuning
from wdistill.config import presets
from wdistill.losses import recipes as published
from wdistill.workflows import demo

SNAPSHOT = json.loads((Path(__file__).parent / "data" / "recipes_snapshot.json").read_text())


def _same(a, b) -> bool:
    # json.dumps keeps key order and tells 4 from 4.0: a byte-level comparison of the tables.
    return json.dumps(a) == json.dumps(b)


@pytest.mark.parametrize("name, value", [
    ("RECIPES", lambda: dict(published.RECIPES)), ("LABELS", lambda: dict(published.LABELS)),
    ("EPOCH_PARAMS", lambda: published.EPOCH_PARAMS), ("CANDIDATES", lambda: dict(tuning.CANDIDATES)),
    ("PRIORITY", lambda: list(tuning.PRIORITY)), ("QUICK_METHODS", lambda: list(demo.QUICK_METHODS)),
    ("DEMO_METHODS", lambda: list(demo.DEMO_METHODS))])
def test_generated_tables_equal_the_old_hand_tables(name, value):
    assert _same(value(), SNAPSHOT[name]), name


def test_benchmark_run_configs_are_unchanged():
    runs = {}
    for m, cands in tuning.CANDIDATES.items():
        for i, c in enumerate(cands):
            runs[f"tune/{m}/{i}"] = protocol.student_config(
                m, tuning.apply_candidate(published.default_recipe(m), c), protocol.TUNE, 0, "runs/bench",
                run_name=f"tune/{m}/c{i}")
    for m in published.RECIPES:
        for sched in (protocol.FULL, protocol.QUICK):
            runs[f"{sched.name}/{m}"] = protocol.student_config(m, presets.recipe(m), sched, 0, "runs/bench")
    assert list(runs) == list(SNAPSHOT["RUN_CONFIGS"])
    for key, cfg in runs.items():
        assert _same(cfg, SNAPSHOT["RUN_CONFIGS"][key]), key


def test_recipes_are_copies():
    published.RECIPES["kd"][1]["T"] = 99
    assert published.RECIPES["kd"][1]["T"] == 4 and published.default_recipe("kd")[1]["T"] == 4


def test_every_published_term_exists_and_the_budget_holds():
    from wdistill import losses

    for method, terms in published.RECIPES.items():
        for t in terms:
            losses.registry.resolve_params(t["name"], {k: v for k, v in t.items() if k not in ("name", "weight")})
    tuning.check_budget()
    assert set(tuning.PRIORITY) == set(tuning.CANDIDATES) == set(published.RECIPES) - {"vanilla"}


def test_bad_declarations_are_refused():
    with pytest.raises(ValueError, match="published twice"):
        published.publish("kd", label="KD again", terms=[published.ce()])
    with pytest.raises(ValueError, match="first tuning candidate"):
        published.publish("never_registered", label="x", terms=[published.ce()], grid=[{"kd.T": 2}])
    assert "never_registered" not in published.RECIPES
