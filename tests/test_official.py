"""Against the official WKD code itself (github.com/JiamingLv/WKD), imported from a checkout named
by ``WDISTILL_OFFICIAL_WKD`` (never copied here; CI has no checkout and skips these), and the
side-by-side harness of the GPU benchmark (``benchtools.official``) in its CPU quick mode."""
import os

import pytest
import torch

from benchtools import official
from benchtools.gpu import GpuSetup
from wdistill import ot
from wdistill.losses.wkd.wkd_l import wkd_l_parts

CHECKOUT = os.environ.get("WDISTILL_OFFICIAL_WKD")
needs_checkout = pytest.mark.skipif(not CHECKOUT, reason="WDISTILL_OFFICIAL_WKD names no WKD checkout")


def test_a_folder_that_is_not_the_checkout_is_named_before_anything_is_measured(tmp_path, monkeypatch, capsys):
    from benchtools import gpu_report
    from benchtools.__main__ import main
    from wdistill.errors import ConfigError

    with pytest.raises(ConfigError, match="not a checkout of the WKD repository.*mdistiller/distillers/WKD.py"):
        official.load_official(tmp_path)
    monkeypatch.setattr(gpu_report, "parity", lambda *a: pytest.fail("measured before checking --official"))
    code = main(["gpu", "--device", "cpu", "--quick", "--official", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and "not a checkout of the WKD repository" in capsys.readouterr().err


@pytest.fixture(scope="module")
def off():
    return official.load_official(CHECKOUT)


@needs_checkout
@pytest.mark.parametrize("classes", [10, 100])
def test_wkd_l_matches_the_official_loss_and_gradient(off, classes):
    """Our full-(C, C) WKD-L with the target's mass at zero against the official per-sample
    (C-1) x (C-1) problem, on the same logits and cost (the official cost file's recipe: CKA, sharpened)."""
    from mdistiller.distillers.WKD import wkd_logit_loss_with_speration

    g = torch.Generator().manual_seed(classes)
    s = (3 * torch.randn(16, classes, generator=g)).requires_grad_(True)
    t = 3 * torch.randn(16, classes, generator=g)
    y = torch.randint(0, classes, (16,), generator=g)
    cost = ot.cka_cost(ot.class_cka_matrix(torch.randn(classes, 30, 12, generator=g)), 1.0)
    gamma, tau = 600.0, 8.0
    theirs = wkd_logit_loss_with_speration(s, t, y, tau, gamma, cost.clone(), 0.05, 10)
    (g_theirs,) = torch.autograd.grad(theirs, s)
    lt, wd = wkd_l_parts(s, t, y, cost, tau)
    ours = lt + gamma * wd
    (g_ours,) = torch.autograd.grad(ours, s)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-4)
    assert float((g_ours - g_theirs).norm() / g_theirs.norm()) < 1e-4


@needs_checkout
def test_step_side_by_side_quick(off):
    """Both sides build the same architecture (parameter counts equal) and take timed steps."""
    rows = official.step_side_by_side(off, GpuSetup(device="cpu", quick=True, steps=2, warmup=1), batch_size=8)
    assert [r["method"] for r in rows] == list(official.ROWS)
    for r in rows:
        assert r["params_ours"] == r["params_official"] == 1_233_540  # resnet8x4 on both sides
        assert r["ours_img_s"] > 0 and r["official_img_s"] > 0 and r["official_bare_img_s"] > 0


@needs_checkout
def test_epoch_side_by_side_quick_says_where_the_official_epoch_waits(off, tmp_path):
    pytest.importorskip("torchvision")  # the official data pipeline's
    e = official.epoch_side_by_side(off, GpuSetup(device="cpu", quick=True), workers=2, work=tmp_path)
    assert e["images"] == 256 and e["ours_s"] > 0 and e["ratio"] == pytest.approx(e["official_s"] / e["ours_s"])
    assert 0 < e["official_data_wait_s"] < e["official_s"]


@needs_checkout
def test_the_kernel_section_times_the_official_wkd_l_kernel_beside_ours():
    from benchtools.gpu_kernel import variants, wkd_l_kernel
    assert variants(torch.device("cuda"), True, CHECKOUT) == ["eager", "compiled", "cuda_graph", "CUDA graph, captured",
                                                              "official"]
    assert variants(torch.device("cpu"), True, None) == ["eager", "compiled"]
    assert variants(torch.device("cpu"), False, None) == ["eager"]
    setup = GpuSetup(device="cpu", quick=True, steps=2, warmup=1)
    rows = [wkd_l_kernel(8, 10, setup, v, CHECKOUT) for v in ("eager", "official")]
    assert [r["variant"] for r in rows] == ["eager", "official"] and all(r["us"] > 0 for r in rows)
