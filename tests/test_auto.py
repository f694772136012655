"""`wdistill auto` and the frictions of a user's own models (issue 29): the held-out split, the
successive halving that cuts a planted bad recipe early, the resume of an interrupted search, the
report's statistics, "is it helping?" in every run, and the user-model frictions."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from torch.utils.data import Dataset

import wdistill
from wdistill.config import load_config
from wdistill.config.schema import AutoSection
from wdistill.data import bundled_sample
from wdistill.data.build import build_loaders
from wdistill.data.subsets import stratified_holdout
from wdistill.engine import Trainer
from wdistill.engine.helping import grad_share_row, helping_warnings
from wdistill.engine.loop import term_grad_norms
from wdistill.errors import ConfigError
from wdistill.workflows import auto as auto_mod
from wdistill.workflows.auto import Search, candidates, fit_budget, plan_cost, rungs
from wdistill.workflows.auto_report import summarise, t975, verdict

pytestmark = pytest.mark.usefixtures("one_thread")
SHIPPED = "wdistill/assets/demo_teacher_resnet20.pt"


# ---- the held-out split ---------------------------------------------------------------------------
def test_holdout_is_stratified_disjoint_and_deterministic():
    g = torch.Generator().manual_seed(0)
    counts = [50, 30, 20, 7, 2]
    targets = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])[torch.randperm(109, generator=g)]
    kept, held = stratified_holdout(targets, 0.2, seed=3)
    assert set(kept.tolist()).isdisjoint(held.tolist()) and len(kept) + len(held) == 109
    per_class = torch.bincount(targets[held], minlength=5).tolist()
    assert per_class == [10, 6, 4, 1, 1]  # round(0.2 n_c), at least 1 where a class has 2+ items, never all
    again, _ = stratified_holdout(targets, 0.2, seed=3)
    other, _ = stratified_holdout(targets, 0.2, seed=4)
    assert torch.equal(kept, again) and not torch.equal(kept, other)


def test_holdout_replaces_the_test_split_with_training_images(tmp_path):
    d = load_config({"student": {"model": "resnet8"},
                     "data": {"name": "fmnist_sample", "train_subset": 400, "holdout": 0.25}}).data
    data = build_loaders(d, log=lambda m: None)
    train = bundled_sample("train").subset(slice(0, 400))
    test = bundled_sample("test")
    held = data.test_set.images
    assert len(data.train_set) == 300 and len(held) == 100
    pool = {bytes(x.flatten().tolist()) for x in train.images}
    assert all(bytes(x.flatten().tolist()) in pool for x in held)  # every evaluation image is a training one
    assert not {bytes(x.flatten().tolist()) for x in test.images[:200]} & {bytes(x.flatten().tolist())
                                                                            for x in data.train_set.images}
    assert torch.bincount(data.test_set.targets, minlength=10).min() >= 8  # stratified: every class held out


# ---- successive halving ---------------------------------------------------------------------------
def test_plan_cost_and_budget_shrinking_by_hand():
    auto = AutoSection(eta=3, min_epochs=1, finalists=3, seeds=3)
    assert rungs(12, 1, 3) == [1, 3, 9]
    # 24 candidates: rung 1 all 24 x 1; keep 8 -> rung 3 adds 8 x 2; last rung keeps 3 -> 3 x 6 to epoch 9;
    # the 3 finish (3 x 3); seeds 1-2 of the 3 finalists (2 x 3 x 12) and vanilla's 3 seeds (3 x 12).
    assert plan_cost(24, 12, auto) == 24 + 16 + 18 + 9 + 72 + 36
    fitted, cands, notes = fit_budget(auto.model_copy(update={"budget": 100}), ["kd", "dkd", "wkd_l"], 12)
    assert not fitted.grid and len(cands) == 4 and "published setting only" in notes[0]
    assert plan_cost(len(cands) - 1, 12, fitted) <= 100
    with pytest.raises(ConfigError, match="auto.budget=10 student epochs is too small"):
        fit_budget(auto.model_copy(update={"budget": 10}), ["kd"], 12)


@pytest.fixture
def sabotage(plant_term):
    """A planted bad recipe: cross-entropy towards the next class (label + 1), heavily weighted. At 20x CE it is
    below chance after the first rung's 12 steps (7.5 on torch 2.11 and 2.13, KD 17.5); at 5x it was still at
    chance there, and on torch 2.11 tied with KD."""
    def wrong_labels(student, batch):
        return F.cross_entropy(student["logits"], (batch["target"] + 1) % student["logits"].shape[1])
    return plant_term("wrong_labels", wrong_labels, recipe="sabotage", weight=20.0)


def _base(tmp_path, epochs=3, n=600):
    return {"run": {"out_dir": str(tmp_path), "name": "unused"},
            "data": {"name": "fmnist_sample", "train_subset": n, "test_subset": 100, "batch_size": 50},
            "student": {"model": "resnet8"}, "teacher": {"model": "resnet20", "checkpoint": SHIPPED},
            "optim": {"epochs": epochs, "lr": 0.05, "schedule": "cosine"}}


def test_a_planted_bad_recipe_is_cut_at_the_first_rung(tmp_path, sabotage):
    auto = AutoSection(methods=["kd", sabotage], grid=False, finalists=1, seeds=2)
    record = Search(_base(tmp_path), auto, tmp_path / "search", log=lambda m: None).run()
    status = {c["key"]: c["status"] for c in record["candidates"]}
    assert status == {"vanilla": "reference", "kd/0": "finalist", "sabotage/0": "pruned after epoch 1"}
    values = {c["key"]: c["values"] for c in record["candidates"]}
    assert values["sabotage/0"][1] < values["kd/0"][1]
    assert not (tmp_path / "search" / "sabotage" / "0" / "seed1").exists()  # a pruned recipe gets no seeds
    assert set(record["final"]) == {"vanilla", "kd/0"} and all(len(v) == 2 for v in record["final"].values())


def test_an_interrupted_search_resumes_and_reuses_what_finished(tmp_path, monkeypatch):
    auto = AutoSection(methods=["kd", "dkd"], grid=False, finalists=1, seeds=1)
    real, calls = auto_mod.run_or_load, []

    def counting(cfg, **kw):
        calls.append(cfg["run"]["name"])
        if len(calls) == 3:
            raise KeyboardInterrupt  # the search is stopped in its third trial
        return real(cfg, **kw)

    monkeypatch.setattr(auto_mod, "run_or_load", counting)
    with pytest.raises(KeyboardInterrupt):
        Search(_base(tmp_path), auto, tmp_path / "s", log=lambda m: None).run()
    assert calls[:2] == ["kd/0/seed0", "dkd/0/seed0"]  # the first rung of both recipes finished
    metrics = {k: (tmp_path / "s" / k / "seed0" / "metrics.jsonl").read_text() for k in ("kd/0", "dkd/0")}
    calls.clear()
    def recording(cfg, **kw):
        calls.append(cfg["run"]["name"])
        return real(cfg, **kw)

    monkeypatch.setattr(auto_mod, "run_or_load", recording)
    resumed = Search(_base(tmp_path), auto, tmp_path / "s", log=lambda m: None).run()
    # the finished rung trials were read back, not trained again: the pruned one is never touched and
    # the finalist continues from its checkpoint, its first epoch's record unchanged
    assert "dkd/0/seed0" not in calls and calls.count("kd/0/seed0") == 1
    assert (tmp_path / "s" / "dkd/0/seed0" / "metrics.jsonl").read_text() == metrics["dkd/0"]
    after = (tmp_path / "s" / "kd/0/seed0" / "metrics.jsonl").read_text().splitlines()
    assert after[0] == metrics["kd/0"].splitlines()[0] and len(after) == 3
    fresh = Search(_base(tmp_path), auto, tmp_path / "fresh", log=lambda m: None).run()
    assert resumed["final"] == fresh["final"] and [c["values"] for c in resumed["candidates"]] == \
        [c["values"] for c in fresh["candidates"]]


def test_a_paused_run_continued_equals_an_uninterrupted_one(tmp_path):
    def run(name, stops):
        for stop in stops:
            cfg = load_config({**_base(tmp_path, epochs=3, n=200), "run": {"out_dir": str(tmp_path), "name": name},
                               "train": {"stop_after": stop, "progress": False},
                               "loss": [{"name": "ce"}, {"name": "kd", "weight": 0.9}]})
            summary = Trainer(cfg, resume=stop != stops[0], log=lambda m: None).fit()
        return summary, torch.load(tmp_path / name / "student.pt", weights_only=True)["model"]

    (paused, a), (_, b) = run("paused", [1, 2, None]), run("straight", [None])
    assert "paused_after" not in paused and all(torch.equal(a[k], b[k]) for k in a)


# ---- the report's statistics ----------------------------------------------------------------------
def test_verdict_is_a_paired_t_test_checked_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for diffs in ([0.5, 0.7, 0.6], [0.5, -0.2, 0.9], [-1.0, -1.2, -0.9, -1.1], [0.3, 0.31], [0.2, 0.6, 1.0]):
        say, se = verdict(diffs)
        p = stats.ttest_1samp(diffs, 0.0).pvalue
        assert (say != "within noise") == (p < 0.05), (diffs, say, p)
        assert se == pytest.approx(stats.sem(diffs))
    for df in (1, 2, 5, 10):
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)
    assert verdict([0.4])[0] == "one seed: not resolved"


def test_summary_rows_pair_seeds_and_rank_by_mean():
    record = {"final": {"vanilla": {"0": 80.0, "1": 81.0, "2": 79.0}, "kd/0": {"0": 82.0, "1": 83.1, "2": 81.2}},
              "epoch_seconds": {"vanilla": 2.0, "kd/0": 3.0},
              "candidates": [{"key": "vanilla", "label": "vanilla", "method": "vanilla", "terms": []},
                             {"key": "kd/0", "label": "KD", "method": "kd", "terms": []}]}
    rows = summarise(record)
    assert [r["key"] for r in rows] == ["kd/0", "vanilla"]
    assert rows[0]["gain"] == pytest.approx(2.1) and rows[0]["verdict"] == "beats vanilla"
    assert rows[0]["cost"] == pytest.approx(1.5) and rows[1]["verdict"] == "reference"


def test_candidates_come_from_the_published_grids():
    cands = candidates(["kd", "wkd_l"], grid=True, epochs=12)
    assert cands[0].key == "vanilla" and [c.key for c in cands[1:4]] == ["kd/0", "kd/1", "kd/2"]
    assert {t["name"] for t in cands[1].terms} == {"ce", "kd"} and cands[2].terms[1]["T"] == 2
    with pytest.raises(ConfigError, match="unknown recipe"):
        candidates(["no_such_recipe"], True, 12)


# ---- "is it helping?" -----------------------------------------------------------------------------
def test_term_grad_norms_by_hand():
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    v = torch.tensor([1.0], requires_grad=True)
    parts = {"a": 2.0 * (w * torch.tensor([1.0, 1.0])).sum(), "b": (w * w).sum() / 2 + 0 * v.sum(),
             "c": torch.zeros((), requires_grad=False)}
    norms = term_grad_norms(parts, [w, v])
    assert norms["a"].item() == pytest.approx(2 * math.sqrt(2)) and norms["b"].item() == pytest.approx(5.0)
    assert norms["c"].item() == 0.0
    row = grad_share_row({"gradnorm_ce": 4.0, "gradnorm_kd": 0.02, "n": 9.0}, world_size=2)
    assert row["grad_norm_ce"] == 2.0 and row["grad_share_kd"] == pytest.approx(0.01 / 2.01)


def test_helping_warnings_name_the_term_and_its_weight():
    row = {"grad_norm_ce": 1.0, "grad_norm_kd": 0.005, "grad_norm_wkd_l": 150.0, "grad_norm_at": 1.0}
    lines = helping_warnings(row, {"ce": 1.0, "kd": 0.9, "wkd_l": 600.0, "at": 1000.0}, ["ce"])
    assert len(lines) == 2
    assert "'kd' (weight 0.9) has 0.5% of the cross-entropy's gradient" in lines[0]
    assert "'wkd_l' (weight 600) has 150x the cross-entropy's gradient" in lines[1]
    assert helping_warnings(row, {"kd": 0.9}, []) == []  # no CE term: nothing to compare with


def test_every_run_records_shares_and_warns_of_a_dominant_term(tmp_path):
    said = []
    base = _base(tmp_path, epochs=2, n=200)
    cfg = load_config({**base, "run": {"out_dir": str(tmp_path), "name": "g"}, "optim": {**base["optim"], "lr": 1e-4},
                       "train": {"progress": False}, "loss": [{"name": "ce"}, {"name": "kd", "weight": 5000.0}]})
    Trainer(cfg, log=said.append).fit()
    rows = [json.loads(line) for line in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["grad_share_ce"] + r["grad_share_kd"] == pytest.approx(1.0) for r in rows)
    assert any("loss term 'kd' (weight 5000)" in s and "the labels hardly count" in s for s in said)
    from wdistill.workflows.plots import curves_figure
    assert len(curves_figure(tmp_path / "g").axes) == 3  # `wdistill plot` shows the shares


# ---- the frictions of a user's own models ---------------------------------------------------------
class Shapes(Dataset):
    """A map-style Dataset with no `classes` nor `targets` attribute."""

    def __init__(self, n, seed, classes=4):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, classes, (n,), generator=g)
        self.x = torch.rand(n, 1, 16, 16, generator=g) * 0.3

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i].clone()
        r, c = divmod(int(self.y[i]), 2)
        x[:, 8 * r:8 * r + 8, 8 * c:8 * c + 8] += 0.7
        return x, int(self.y[i])


def two_conv_teacher():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))


def tiny_student():
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 4))


def test_user_models_wkd_f_and_fitnet_across_spatial_sizes_num_classes_from_the_student(tmp_path):
    """The student's last map is 8x8 after its stride-2 conv (2x2 after its pooling); the teacher's
    16x16: WKD-F (channel statistics) and FitNet (pooled to a common grid) train; the class count
    comes from the student's head (the Dataset lists none) and is checked against the labels."""
    taps_s = {"feats": ["1"], "embed": "4:in"}
    taps_t = {"feats": ["3"], "embed": "6:in"}
    for term in ({"name": "wkd_f", "weight": 1.0, "lambda_f": 1.0}, {"name": "fitnet", "hint_layer": 0, "weight": 1}):
        out = wdistill.distill(tiny_student(), two_conv_teacher(), Shapes(128, 0), Shapes(64, 1), epochs=1,
                               loss=[{"name": "ce"}, term], student_taps=taps_s, teacher_taps=taps_t,
                               out_dir=str(tmp_path), name=term["name"], train={"progress": False})
        assert math.isfinite(out["final_top1"])
    with pytest.raises(ConfigError, match=r"labels span \[0, 4\] but num_classes=4"):
        wdistill.distill(tiny_student(), None, Shapes(64, 0, classes=5), Shapes(32, 1), epochs=1,
                         out_dir=str(tmp_path), name="five", train={"progress": False})


def test_python_errors_name_the_python_spelling(tmp_path):
    headless = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())  # no Linear: the class count is unknown
    with pytest.raises(ConfigError) as e:
        wdistill.distill(headless, None, Shapes(32, 0), Shapes(16, 1), epochs=1, out_dir=str(tmp_path),
                         name="x", data={"train_subset": 0})
    assert "data={'train_subset': ...}" in str(e.value) and "data.train_subset" not in str(e.value)
    with pytest.raises(ConfigError, match=r"  batch_size: Input should be greater than 0 \(got 0\)"):
        wdistill.distill(tiny_student(), None, Shapes(32, 0), Shapes(16, 1), batch_size=0, out_dir=str(tmp_path))


def test_train_subset_of_a_folder_decodes_only_the_subset(tmp_path, monkeypatch):
    from wdistill.data import folder
    from wdistill.data.synthetic import make_image_folder

    make_image_folder(tmp_path / "f", 10, classes=4, size=(20, 20))  # 40 training images
    decoded = []
    real = folder._decode
    monkeypatch.setattr(folder, "_decode", lambda p, size: (decoded.append(p), real(p, size))[1])
    d = load_config({"student": {"model": "resnet8"}, "data": {"name": "image_folder", "root": str(tmp_path / "f"),
                     "train_subset": 6, "test_subset": 4, "batch_size": 2, "loader": "memory",
                     "options": {"size": 16}}}).data
    data = build_loaders(d, log=lambda m: None)
    assert len(data.train_set) == 6 and len(decoded) == 10  # 6 training + 4 test images, not the whole folder


def test_auto_cli_end_to_end_writes_the_report_and_a_recommended_config(tmp_path, capsys):
    from wdistill.cli import main

    cfg = {**_base(tmp_path, epochs=2, n=400), "run": {"out_dir": str(tmp_path), "name": "a"},
           "auto": {"methods": ["kd"], "grid": False, "finalists": 1, "seeds": 2}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["auto", str(tmp_path / "a.yaml"), "--train", "1"]) == 0
    out = capsys.readouterr().out
    assert "recommended:" in out and "test top-1" in out
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert {r["key"] for r in report["rows"]} == {"vanilla", "kd/0"} and report["trained"][0]["seed"] == 0
    rec = yaml.safe_load((tmp_path / "a" / "recommended.yaml").read_text())
    assert load_config(rec).data.holdout is None and (tmp_path / "a" / "report.png").stat().st_size > 10_000
    md = (tmp_path / "a" / "report.md").read_text()
    assert "never the test split" in md and "| vanilla |" in md


def test_auto_refuses_a_missing_teacher_checkpoint_before_the_search_starts(tmp_path, capsys):
    from wdistill.cli import main

    cfg = {**_base(tmp_path), "run": {"out_dir": str(tmp_path), "name": "a"},
           "teacher": {"model": "resnet20", "checkpoint": str(tmp_path / "missing.pt")}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["auto", str(tmp_path / "a.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"teacher.checkpoint '{tmp_path / 'missing.pt'}'" in err and "does not exist" in err, err
    assert "auto: student epochs" not in err and not (tmp_path / "a").exists(), err  # no search, no trial directory
