"""A run whose loss becomes non-finite is a finding, not the end of the work around it: the run
directory remembers it (``diverged.json``), so neither this process nor another sharing the queue
replays the same steps into the same divergence, and ``wdistill auto`` drops the candidate, goes on,
and never recommends a recipe that diverged on any seed."""
from __future__ import annotations

import json

import pytest
import torch.nn.functional as F

from wdistill.config.schema import AutoSection
from wdistill.errors import NonFiniteLoss
from wdistill.workflows import reuse
from wdistill.workflows.auto import Search
from wdistill.workflows.auto_report import markdown, recommend, summarise

pytestmark = pytest.mark.usefixtures("one_thread")
SHIPPED = "wdistill/assets/demo_teacher_resnet20.pt"


@pytest.fixture
def exploding(plant_term):
    """A planted unstable recipe: its term (CE times NaN) is NaN from the first step."""
    return plant_term("exploding", lambda student, batch: F.cross_entropy(student["logits"], batch["target"])
                      * float("nan"), recipe="exploding")


def _base(tmp_path, epochs=3):
    return {"run": {"out_dir": str(tmp_path), "name": "unused"},
            "data": {"name": "fmnist_sample", "train_subset": 300, "test_subset": 100, "batch_size": 50},
            "student": {"model": "resnet8"}, "teacher": {"model": "resnet20", "checkpoint": SHIPPED},
            "optim": {"epochs": epochs, "lr": 0.05, "schedule": "cosine"}}


def _trainings(monkeypatch) -> list[str]:
    """The names of the runs that start training (not the ones read back or refused)."""
    names, real = [], reuse.make_trainer

    def counting(cfg, **kw):
        names.append(cfg.run.name)
        return real(cfg, **kw)
    monkeypatch.setattr(reuse, "make_trainer", counting)
    return names


def test_a_diverged_run_is_remembered_not_replayed(tmp_path, monkeypatch, exploding):
    trained = _trainings(monkeypatch)
    cfg = _base(tmp_path, epochs=1) | {"run": {"out_dir": str(tmp_path), "name": "x"},
                                       "loss": [{"name": "ce"}, {"name": "exploding"}]}
    with pytest.raises(NonFiniteLoss, match="exploding"):
        reuse.run_or_load(cfg, log=lambda m: None)
    marker = json.loads((tmp_path / "x" / "diverged.json").read_text())
    assert "became non-finite" in marker["error"] and trained == ["x"]
    assert reuse.load_diverged(cfg) == marker["error"] and reuse.load_finished(cfg) is None  # the tables read it
    assert reuse.load_diverged(cfg | {"loss": [{"name": "ce"}]}) is None  # only for exactly this config
    with pytest.raises(NonFiniteLoss, match=r"x diverged when it was trained \(delete .*diverged.json"):
        reuse.run_or_load(cfg, log=lambda m: None)  # asked again, in this process or another: refused at once
    assert trained == ["x"]
    stable = cfg | {"loss": [{"name": "ce"}]}  # another config in the same directory starts again
    summary = reuse.run_or_load(stable, log=lambda m: None)
    assert summary["final_top1"] > 0 and not (tmp_path / "x" / "diverged.json").exists() and trained == ["x", "x"]


def test_auto_drops_a_diverging_candidate_and_goes_on(tmp_path, monkeypatch, exploding):
    auto = AutoSection(methods=["kd", exploding], grid=False, finalists=1, seeds=2)
    record = Search(_base(tmp_path), auto, tmp_path / "s", log=lambda m: None).run()
    c = {c["key"]: c for c in record["candidates"]}
    assert c["exploding/0"]["status"] == "diverged before epoch 1" and c["exploding/0"]["values"] == {}
    assert "became non-finite" in c["exploding/0"]["diverged"]["0"]
    assert c["kd/0"]["status"] == "finalist" and set(record["final"]) == {"vanilla", "kd/0"}
    trained = _trainings(monkeypatch)
    again = Search(_base(tmp_path), auto, tmp_path / "s", log=lambda m: None).run()
    assert trained == [] and again["final"] == record["final"]  # read back, the diverged run not replayed
    assert "diverged" in {c["key"]: c for c in again["candidates"]}["exploding/0"]["diverged"]["0"]


def test_a_finalist_that_diverged_on_a_seed_is_reported_and_never_recommended():
    record = {"final": {"vanilla": {"0": 80.0, "1": 81.0, "2": 79.0}, "kd/0": {"0": 82.0, "1": 83.1, "2": 81.2},
                        "dkd/0": {"0": 90.0, "1": None, "2": 91.0}},
              "epoch_seconds": {"vanilla": 2.0, "kd/0": 3.0},
              "candidates": [{"key": "vanilla", "label": "vanilla", "method": "vanilla", "terms": [], "values": {},
                              "status": "reference"},
                             {"key": "kd/0", "label": "KD", "method": "kd", "terms": [], "values": {},
                              "status": "finalist"},
                             {"key": "dkd/0", "label": "DKD", "method": "dkd", "terms": [], "values": {"3": 90.0},
                              "status": "finalist", "diverged": {"1": "loss is nan"}}],
              "auto": {"holdout": 0.1, "eta": 3, "min_epochs": 1, "finalists": 2, "seeds": 3}, "notes": [],
              "wall_seconds": 60.0, "out_of_time": False, "epochs": 3}
    rows = summarise(record)
    dkd = rows[0]
    assert dkd["key"] == "dkd/0" and dkd["mean"] == pytest.approx(90.5) and dkd["seeds"] == 2
    assert dkd["verdict"] == "diverged on 1 of 3 seed(s)" and dkd["diverged"] == 1
    best = recommend(rows)
    assert best["key"] == "kd/0" and best["verdict"] == "beats vanilla"  # the best mean, but unstable: not chosen
    md = markdown(record, rows, best, {"recommended": "r.yaml"}, "wdistill auto x.yaml")
    assert "| DKD | 90.50 ± 0.71 (n=2) | +11.00 ± 1.00 | diverged on 1 of 3 seed(s) |" in md
    assert "| DKD | 3: 90.00 | finalist (diverged: seed 1) |" in md
    record["final"]["kd/0"]["2"] = None
    record["final"]["vanilla"]["0"] = None
    with pytest.raises(NonFiniteLoss, match="nothing to recommend; lower optim.lr"):
        recommend(summarise(record))
