"""Every method learns on real data: Fashion-MNIST, teacher resnet14 -> student resnet8.

The teacher is trained once per session (2,000 training images, 3 epochs). Each method then trains
a resnet8 for 2 epochs on the same images through ``Trainer.fit`` and must reach a best-epoch test
top-1 well above chance (10 classes: > 40% on 1,000 test images) without a non-finite loss.

Method settings are the CIFAR-100 presets of configs/cifar100/resnet56-resnet20/ (same ResNet
widths as resnet14 -> resnet8), adapted only where a 100-class, 240-epoch value cannot apply:
- WKD-L: weight 30, tau 4 (docs/benchmarks.md: the CIFAR weight 600 collapses on 10 classes); WKD decay
  start as the preset's fraction of training (150/240) instead of epoch 150.
- CRD/WCoRD: 1,024 negatives, as the bank holds 2,000 rows (about 1,800 of other classes).
- DKD: warm-up 1 epoch instead of 20 (20 of 240 epochs is under one epoch of 2).
- AB, FSP, FT: 1 init epoch instead of 30.

Schedule: batch 32, SGD lr 0.05, and lr x0.1 for the last epoch. The drop matters: after an epoch at
full lr, BatchNorm's running statistics lag the weights so far that eval-mode accuracy reads about
20 points below what the same weights reach with recalibrated statistics (measured here: 35% vs
59% after one epoch); one epoch at lr/10 lets them settle, so the measured top-1 reflects learning.
"""
import json
import math
from pathlib import Path

import pytest
import yaml

from wdistill.config import load_config
from wdistill.data import load_dataset
from wdistill.engine import Trainer
from wdistill.losses.recipes import RECIPES

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "cifar100" / "resnet56-resnet20"
METHODS = list(RECIPES)  # every published row, generated from the terms' own declarations
TRAIN_IMAGES, TEST_IMAGES = 2000, 1000
CHANCE_MARGIN_TOP1 = 40.0  # chance is 10%


def _config(name: str, out_dir: Path, epochs: int, student: str, loss: list, teacher: str | None = None) -> dict:
    cfg = {"run": {"name": name, "out_dir": str(out_dir), "seed": 0, "device": "cpu"},
           "data": {"name": "fashion_mnist", "batch_size": 32, "crop_padding": 2, "flip": True},
           "student": {"model": student},
           "loss": loss,
           "optim": {"epochs": epochs, "lr": 0.05, "schedule": "multistep", "milestones": [epochs - 1],
                     "gamma": 0.1, "weight_decay": 5e-4},
           "train": {"progress": False}}
    if teacher:
        cfg["teacher"] = {"model": "resnet14", "checkpoint": teacher}
    return cfg


def method_loss(method: str) -> list[dict]:
    """The preset's loss terms with the 10-class / 2-epoch adaptations of the module docstring."""
    if method == "vanilla":
        return [{"name": "ce", "weight": 1.0}]
    loss = yaml.safe_load((PRESET_DIR / f"{method}.yaml").read_text())["loss"]
    for term in loss:
        name = term["name"]
        if name == "wkd_l":
            term.update(lambda_l=30, tau=4)
        if name in ("wkd_l", "wkd_f"):
            term["decay_start_frac"] = term.pop("decay_start") / 240
        if name in ("crd", "wcord"):
            term["num_negatives"] = 1024
        if name == "dkd":
            term["warmup"] = 1
        if name in ("ab", "fsp", "ft"):
            term["init_epochs"] = 1
    return loss


@pytest.fixture(scope="session")
def _session_store(tmp_path_factory):
    return {"dir": tmp_path_factory.mktemp("methods_learn")}


@pytest.fixture
def fmnist_teacher(fmnist_dir, _session_store):
    """(checkpoint path, teacher summary, (train, test)): trained on the first use in the session."""
    store = _session_store
    if "checkpoint" not in store:
        train, test = load_dataset("fashion_mnist", fmnist_dir)
        store["data"] = (train.subset(slice(0, TRAIN_IMAGES)), test.subset(slice(0, TEST_IMAGES)))
        cfg = load_config(_config("teacher", store["dir"], 3, "resnet14", [{"name": "ce", "weight": 1.0}]))
        store["summary"] = Trainer(cfg, data=store["data"], log=lambda *_: None).fit()
        store["checkpoint"] = str(store["dir"] / "teacher" / "student.pt")
    return store["checkpoint"], store["summary"], store["data"]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_method_learns_on_fashion_mnist(method, fmnist_teacher, _session_store):
    checkpoint, teacher, data = fmnist_teacher
    assert teacher["best_top1"] > 60, f"the teacher itself did not learn: {teacher}"
    cfg = load_config(_config(method, _session_store["dir"], 2, "resnet8", method_loss(method),
                              None if method == "vanilla" else checkpoint))
    trainer = Trainer(cfg, data=data, log=lambda *_: None)
    s = trainer.fit()
    assert s["best_top1"] > CHANCE_MARGIN_TOP1, f"{method}: {s}"
    _session_store.setdefault("top1", {})[method] = s["best_top1"]
    _terms_move_the_student(trainer, method)
    if method != "vanilla":
        assert s["teacher_top1"] == pytest.approx(teacher["final_top1"])
    rows = [json.loads(line) for line in
            (_session_store["dir"] / method / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(v) for r in rows for k, v in r.items()
                                  if k.startswith("train_") and isinstance(v, float)), rows
    for term in cfg.loss:  # each distillation term took part (AB/FSP act in their init stage only)
        if term.name not in ("ce", "ab", "fsp"):
            assert rows[0][f"train_{term.name}"] != 0, (term.name, rows[0])


# AB and FSP act in their init stage only (the published main stage is CE alone).
STAGE_ONLY = {"ab", "fsp"}
MIN_GRADIENT_RATIO = 0.01


def _terms_move_the_student(trainer, method: str) -> None:
    """A dead or mis-scaled term fails: on one fixed training batch, every distillation term's
    weighted gradient on the student is at least 1% of cross-entropy's (measured here: 0.1x to
    10x), and it points somewhere else than CE's (not a rescaled copy)."""
    import torch
    d = trainer.distiller
    d.train()
    batch = next(iter(trainer.train_loader))
    batch.update(epoch=0, num_epochs=trainer.cfg.optim.epochs, step=0)
    total, parts, _ = d(batch)
    params = [p for p in trainer.student.parameters() if p.requires_grad]

    def grad(value):
        g = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        return torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, params)])

    ce = grad(parts["ce"]) if "ce" in parts else None
    for name, value in parts.items():
        if name == "ce" or name in STAGE_ONLY:
            continue
        g = grad(value)
        assert torch.isfinite(g).all(), (method, name)
        if ce is not None:
            ratio = float(g.norm() / ce.norm())
            assert ratio > MIN_GRADIENT_RATIO, f"{method}: term {name}'s gradient is {ratio:.2e} of CE's (dead?)"
            cos = float(torch.nn.functional.cosine_similarity(g, ce, dim=0))
            assert cos < 0.999, f"{method}: term {name}'s gradient is CE's up to scale (cos {cos:.4f})"
        else:
            assert float(g.norm()) > 0, (method, name)
