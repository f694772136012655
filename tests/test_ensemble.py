"""Ensembles of teachers: logit terms read the mean distribution, representation terms get one
instance per teacher (own bank / connector, fed its own teacher), weighted 1/n; resume."""
import json

import pytest
import torch
import torch.nn.functional as F
from builders import random_teacher, small_run

from wdistill.config import load_config
from wdistill.engine import Trainer
from wdistill.losses.base import mean_distribution_logits


class _Stop(Exception):
    pass


def _base(tmp_path, teachers, loss, **over):
    return small_run(tmp_path, seed=2, schedule="constant", extra_data={"crop_padding": 2},
                     extra_train={"max_steps": 2}, teachers=teachers, loss=loss, **over)


@pytest.fixture
def teachers(tmp_path):
    # different widths of embedding: own connectors
    return [{"model": arch, "checkpoint": random_teacher(tmp_path / f"t{seed}.pt", arch, seed)}
            for seed, arch in ((0, "resnet8"), (1, "resnet14"))]


def test_mean_distribution_against_a_hand_computation():
    torch.manual_seed(0)
    z = [torch.randn(4, 5, dtype=torch.float64) * 3 for _ in range(3)]
    for T in (1.0, 4.0):
        hand = sum(F.softmax(x / T, dim=1) for x in z) / 3
        assert torch.allclose(F.softmax(mean_distribution_logits(z, T) / T, dim=1), hand, atol=1e-12)


def test_per_teacher_instances_banks_and_weights(tmp_path, teachers, monkeypatch):
    cfg = load_config(_base(tmp_path, teachers, [{"name": "ce"}, {"name": "kd", "weight": 0.9},
                                                 {"name": "crd", "weight": 0.8, "num_negatives": 64}]))
    tr = Trainer(cfg, log=lambda m: None)
    d = tr.distiller
    assert list(d.terms) == ["ce", "kd", "crd@t0", "crd@t1"]
    assert d.weights["crd@t0"] == d.weights["crd@t1"] == pytest.approx(0.4) and d.weights["kd"] == 0.9
    tr.setup_terms()
    c0, c1 = d.terms["crd@t0"], d.terms["crd@t1"]
    assert c0 is not c1 and c0.bank_t.data_ptr() != c1.bank_t.data_ptr()
    # own connectors and banks: separate tensors, initialised independently
    assert not torch.equal(c0.bank_t, c1.bank_t)
    assert c0.embed_t.linear.weight.data_ptr() != c1.embed_t.linear.weight.data_ptr()
    assert not torch.equal(c0.embed_t.linear.weight, c1.embed_t.linear.weight)
    # each instance sees its own teacher's features; kd sees the mean distribution at its T
    seen = {}
    for key in ("crd@t0", "crd@t1", "kd"):
        term = d.terms[key]
        original = type(term).forward

        def spy(student, teacher, batch, key=key, term=term, original=original):
            seen[key] = teacher
            return original(term, student, teacher, batch)

        monkeypatch.setattr(term, "forward", spy)
    batch = next(iter(tr.train_loader))
    batch = dict(batch, epoch=0, num_epochs=2, step=0)
    total, parts, _ = d(batch)
    with torch.no_grad():
        own = [tap(batch["image"]) for tap in d.teacher_taps]
    assert torch.equal(seen["crd@t0"]["embed"], own[0]["embed"])
    assert torch.equal(seen["crd@t1"]["embed"], own[1]["embed"])
    assert not torch.equal(own[0]["embed"], own[1]["embed"])
    T = d.terms["kd"].T
    hand = (F.softmax(own[0]["logits"] / T, 1) + F.softmax(own[1]["logits"] / T, 1)) / 2
    assert torch.allclose(F.softmax(seen["kd"]["logits"] / T, 1), hand, atol=1e-6)


def test_weighting_is_one_over_n_of_the_configured_weight(tmp_path, teachers):
    """The total is sum over terms of weight * value, per-teacher instances at weight / n: checked
    against the terms called directly on their own teachers' outputs."""
    cfg = load_config(_base(tmp_path, teachers, [{"name": "ce"}, {"name": "kd", "weight": 0.9},
                                                 {"name": "fitnet", "weight": 3.0}]))
    tr = Trainer(cfg, log=lambda m: None)
    tr.setup_terms()
    d = tr.distiller
    batch = dict(next(iter(tr.train_loader)), epoch=0, num_epochs=2, step=0)
    total, parts, _ = d(batch)
    with torch.no_grad():
        own = [tap(batch["image"]) for tap in d.teacher_taps]
        s = d.student_forward(batch["image"])
        mean_t = {"logits": mean_distribution_logits([o["logits"] for o in own], d.terms["kd"].T)}
        hand = (F.cross_entropy(s["logits"], batch["target"])
                + 0.9 * d.terms["kd"](s, mean_t, batch)
                + 3.0 / 2 * d.terms["fitnet@t0"](s, own[0], batch)
                + 3.0 / 2 * d.terms["fitnet@t1"](s, own[1], batch))
    assert total.item() == pytest.approx(hand.item(), rel=1e-5)


def test_ensemble_run_resumes_exactly(tmp_path, teachers):
    loss = [{"name": "ce"}, {"name": "wkd_l", "lambda_l": 30.0},
            {"name": "wcord", "weight": 0.5, "num_negatives": 32}]
    full = Trainer(load_config(_base(tmp_path, teachers, loss)), log=lambda m: None).fit()

    def stop_after_one(msg):
        if msg.startswith("epoch 1/2"):
            raise _Stop

    cfg2 = load_config(_base(tmp_path, teachers, loss), ["run.name=r2"])
    with pytest.raises(_Stop):
        Trainer(cfg2, log=stop_after_one).fit()
    resumed = Trainer(cfg2, resume=True, log=lambda m: None).fit()
    assert resumed["final_top1"] == full["final_top1"]
    runs = tmp_path / "runs"
    a, b = (torch.load(runs / n / "last.pt", weights_only=True)["distiller"] for n in ("r", "r2"))
    assert {k.split(".")[1] for k in a if k.startswith("terms.")} == {"wkd_l", "wcord@t0", "wcord@t1"}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(l) for l in (runs / "r2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_wkd_l_ensemble_cost_is_the_mean_of_the_members_costs(tmp_path, teachers):
    from wdistill.losses.wkd.cost import build_cost_matrix
    cfg = load_config(_base(tmp_path, teachers, [{"name": "ce"}, {"name": "wkd_l"}]))
    tr = Trainer(cfg, log=lambda m: None)
    tr.setup_terms()
    d = tr.distiller
    costs = [build_cost_matrix(d.member_tap(i), tr.data.plain_batches(), 10, progress=False) for i in range(2)]
    assert not torch.allclose(costs[0], costs[1], atol=1e-3)
    assert torch.allclose(d.terms["wkd_l"].cost.cpu(), (costs[0] + costs[1]) / 2, atol=1e-5)


def test_wkd_l_reads_each_part_at_its_own_temperature():
    """With an ensemble, WKD-L's target part uses the mean of the members' T=1 softmaxes and its
    non-target part the mean of their softmaxes at tau, renormalised over the non-target classes."""
    from wdistill import losses, ot
    from wdistill.engine.distiller import mean_output
    torch.manual_seed(0)
    B, C, tau = 6, 5, 4.0
    s = torch.randn(B, C, dtype=torch.float64)
    members = [{"logits": torch.randn(B, C, dtype=torch.float64) * 3} for _ in range(3)]
    y = torch.randint(0, C, (B,))
    cost = torch.rand(C, C, dtype=torch.float64)
    cost = (cost + cost.T) / 2 * (1 - torch.eye(C, dtype=torch.float64))
    term = losses.create("wkd_l", tau=tau, cost=cost, decay_start_frac=None, lambda_l=2.0)
    got = term({"logits": s}, mean_output(members, term.ensemble_T), {"target": y, "epoch": 0, "num_epochs": 1})
    p1 = sum(F.softmax(m["logits"], 1) for m in members) / 3
    loss_t = -(p1[torch.arange(B), y] * F.log_softmax(s, 1)[torch.arange(B), y]).mean()
    ptau = sum(F.softmax(m["logits"] / tau, 1) for m in members) / 3
    keep = torch.ones(B, C, dtype=torch.bool).scatter(1, y[:, None], False)
    pt_nt = torch.where(keep, ptau, 0) / (ptau * keep).sum(1, keepdim=True)
    ps_nt = F.softmax(s.scatter(1, y[:, None], float("-inf")) / tau, 1)
    wd = ot.sinkhorn2(ps_nt, pt_nt, term.cost.to(torch.float64), term.reg, term.num_iters).mean()
    assert got.item() == pytest.approx((loss_t + 2.0 * wd).item(), rel=1e-6)
