"""Adding a method is one file: a term defined here, with its recipe declared next to it, appears
in the named recipes, the benchmark's tuning candidates and priority list, the demo's lists, and
the CIFAR-100 preset generator, and its recipe builds and differentiates, without editing anything else."""
import functools
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from benchtools import tuning
from wdistill import losses
from wdistill.config import presets
from wdistill.losses import recipes as published
from wdistill.losses.base import Term
from wdistill.losses.registry import _TERMS, register
from wdistill.workflows import demo

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def toy_method():
    # ----------------------------------------- what a new method file holds, and nothing more
    @register
    class LogitMSE(Term):
        """Toy: mean squared error between student and teacher logits."""

        name = "toy_mse"

        def __init__(self, scale: float = 1.0):
            super().__init__()
            self.scale = scale

        def forward(self, student, teacher, batch):
            return self.scale * (student["logits"] - teacher["logits"].detach()).pow(2).mean()

    published.publish("toy_mse", label="Toy-MSE", terms=[published.ce(), {"name": "toy_mse", "weight": 0.5}],
                      grid=published.bracket("toy_mse", "weight", 0.5), demo=10)
    # ------------------------------------------------------------------------------------------
    yield LogitMSE
    published.unpublish("toy_mse")
    _TERMS.pop("toy_mse", None)


@functools.lru_cache(maxsize=None)
def _make_presets():
    spec = importlib.util.spec_from_file_location("make_presets", ROOT / "scripts" / "make_presets.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_presets"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_a_new_term_file_reaches_every_generated_list(toy_method):
    assert published.RECIPES["toy_mse"] == [{"name": "ce", "weight": 1.0}, {"name": "toy_mse", "weight": 0.5}]
    assert list(published.RECIPES)[-1] == "toy_mse" and published.LABELS["toy_mse"] == "Toy-MSE"
    assert presets.recipe_for("toy_mse", 12) == published.RECIPES["toy_mse"]
    assert tuning.CANDIDATES["toy_mse"] == [{}, {"toy_mse.weight": 0.15}, {"toy_mse.weight": 1.5}]
    assert tuning.PRIORITY[-1] == "toy_mse"
    tuning.check_budget()
    assert demo.DEMO_METHODS[-1] == "toy_mse" and "toy_mse" not in demo.QUICK_METHODS
    assert "toy_mse" in demo.demo_methods("all") and demo.demo_methods("kd,toy_mse") == ["kd", "toy_mse"]
    mp = _make_presets()
    assert "toy_mse" in mp.cifar_methods()
    pair = next(p for p in mp.pairs() if p.key == ("resnet56", "resnet20"))
    terms, notes, _ = mp.cifar_recipe("toy_mse", pair)
    assert terms == published.RECIPES["toy_mse"] and any("Toy-MSE" in n for n in notes)


def test_the_new_terms_recipe_trains(toy_method):
    torch.manual_seed(0)
    terms = [losses.create(t["name"], **{k: v for k, v in t.items() if k not in ("name", "weight")})
             for t in tuning.apply_candidate(published.default_recipe("toy_mse"), tuning.CANDIDATES["toy_mse"][2])]
    assert isinstance(terms[1], toy_method)
    s = torch.randn(4, 10, requires_grad=True)
    t = torch.randn(4, 10)
    loss = terms[1]({"logits": s}, {"logits": t}, {})
    loss.backward()
    assert torch.allclose(s.grad, 2 * (s - t).detach() / s.numel())


def test_gone_after_the_fixture():
    assert "toy_mse" not in published.RECIPES and "toy_mse" not in tuning.CANDIDATES
