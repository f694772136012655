"""The README's engineering claims and the simplest terms, each held by a test that a plausible
bug fails (issue 16): KD's T^2, CE's label smoothing, AMP really autocasting, resume restoring the
best-so-far, the learning-rate schedule and the RNG."""
import json
import math

import pytest
import torch
from builders import small_run

from wdistill import losses
from wdistill.config import load_config
from wdistill.engine import Trainer


def _batch(b=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
    t = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, c, (b,), generator=g)
    return {"logits": s}, {"logits": t}, {"target": y}


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kd_value_is_t_squared_kl_by_hand(T):
    """Hinton et al.: T^2 * KL(p_t^T || p_s^T), batch mean; written out in float64."""
    s, t, batch = _batch()
    got = losses.create("kd", T=T)(s, t, batch)
    want = 0.0
    for zs, zt in zip(s["logits"].tolist(), t["logits"].tolist()):
        ps = [math.exp(v / T) for v in zs]
        pt = [math.exp(v / T) for v in zt]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        want += sum(q * math.log(q / p) for p, q in zip(ps, pt))
    want = want / len(s["logits"]) * T * T
    assert got.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_ce_with_label_smoothing_by_hand(eps):
    """(1 - eps) * (-log p_y) + eps * mean_c(-log p_c), batch mean."""
    s, t, batch = _batch()
    got = losses.create("ce", label_smoothing=eps)(s, t, batch)
    want = 0.0
    for z, y in zip(s["logits"].tolist(), batch["target"].tolist()):
        lse = math.log(sum(math.exp(v) for v in z))
        nll = [lse - v for v in z]
        want += (1 - eps) * nll[y] + eps * sum(nll) / len(z)
    assert got.item() == pytest.approx(want / len(batch["target"]), rel=1e-10)


def _cfg(tmp_path, **over):
    return small_run(tmp_path, seed=2, extra_data={"crop_padding": 2}, loss=[{"name": "ce"}], **over)


@pytest.mark.parametrize("setting,dtype", [("precision=auto", torch.float32), ("precision=bf16", torch.bfloat16),
                                           ("precision=fp32", torch.float32), ("amp=true", torch.bfloat16)])
def test_precision_really_autocasts_the_forward(tmp_path, setting, dtype):
    """train.precision: the student's convolutions run in the dtype asked for (auto is float32 on the
    CPU); amp, its earlier name, still means half precision. Every step stays finite."""
    cfg = load_config(_cfg(tmp_path), ["optim.epochs=1", f"train.{setting}", "train.max_steps=2"])
    tr = Trainer(cfg)
    seen = []
    hook = tr.student.conv1.register_forward_hook(lambda m, a, out: seen.append(out.dtype) if m.training else None)
    summary = tr.fit()
    hook.remove()
    assert seen and set(seen) == {dtype}
    assert math.isfinite(tr.history[-1]["train_loss"]) and summary["final_top1"] is not None


def test_resume_restores_best_so_far_and_schedule(tmp_path):
    """A finished run resumed (nothing left to train) reports the stored best-so-far, not a fresh
    one; the cosine schedule is the published one. (Bit-exact resume of weights, term state and
    RNG: tests/test_engine.py::test_resume_equals_uninterrupted_run.)"""
    full = Trainer(load_config(_cfg(tmp_path, run={"name": "full", "out_dir": str(tmp_path / "runs"), "seed": 2}),
                               ["optim.epochs=3"])).fit()
    again = Trainer(load_config(_cfg(tmp_path, run={"name": "full", "out_dir": str(tmp_path / "runs"), "seed": 2}),
                                ["optim.epochs=3"]), resume=True).fit()
    rows = [json.loads(x) for x in (tmp_path / "runs" / "full" / "metrics.jsonl").read_text().splitlines()]
    assert again["best_top1"] == full["best_top1"] == max(r["test_top1"] for r in rows)
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.05 * 0.75, 0.05 * 0.25], rel=1e-12)
