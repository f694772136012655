"""WKD-L and WKD-F terms against per-sample / float64 brute-force formulations and POT."""
import math
import os

import numpy as np
import ot as pot
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from benchtools.kernels import wkd_l_reference  # the per-sample formulation (project tooling)
from wdistill import losses, ot
from wdistill.losses import SetupContext
from wdistill.losses._shared.heads import ConvReg
from wdistill.losses.wkd.cost import build_cost_matrix, load_or_build_cka, teacher_checksum
from wdistill.losses.wkd.wkd_l import cosine_decayed, wkd_l_parts

D64 = torch.float64


def random_cost(C, seed=0):
    feats = torch.randn(C, 12, 4, generator=torch.Generator().manual_seed(seed), dtype=D64)
    return ot.cka_cost(ot.class_cka_matrix(feats), kappa=1.0)


def logits(B, C, seed, scale=3.0, dtype=D64):
    return torch.randn(B, C, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


def ctx_for(s_out, t_out, C, N=20, **kw):
    return SetupContext(student_out=s_out, teacher_out=t_out, num_classes=C, num_samples=N,
                        train_targets=torch.arange(N) % C, device=torch.device("cpu"), **kw)


def batch(y, epoch=0, num_epochs=240):
    return {"target": y, "index": torch.arange(len(y)), "epoch": epoch, "num_epochs": num_epochs}


# --------------------------------------------------------------------------------------- WKD-L
def per_sample_loop(s, t, y, cost, tau, reg=0.05, iters=10):
    """Independent float64 loop: one (C-1)x(C-1) problem per sample, Python lists for the masses."""
    B, C = s.shape
    loss_t, wd = 0.0, 0.0
    for i in range(B):
        yi = int(y[i])
        ps1 = torch.softmax(s[i], 0)
        pt1 = torch.softmax(t[i], 0)
        loss_t -= float(pt1[yi]) * math.log(float(ps1[yi]))
        keep = [k for k in range(C) if k != yi]
        es = [math.exp(float(s[i, k]) / tau) for k in keep]
        et = [math.exp(float(t[i, k]) / tau) for k in keep]
        a = [x / sum(es) for x in es]
        b = [x / sum(et) for x in et]
        M = [[float(cost[p, q]) for q in keep] for p in keep]
        n = C - 1
        K = [[math.exp(-M[p][q] / reg) for q in range(n)] for p in range(n)]
        u, v = [1.0 / n] * n, [0.0] * n
        for _ in range(iters):
            v = [b[q] / (sum(K[p][q] * u[p] for p in range(n)) + 1e-8) for q in range(n)]
            u = [a[p] / (sum(K[p][q] * v[q] for q in range(n)) + 1e-8) for p in range(n)]
        wd += sum(u[p] * K[p][q] * v[q] * M[p][q] for p in range(n) for q in range(n))
    return loss_t / B, wd / B


@pytest.mark.parametrize("tau", [1.0, 4.0, 8.0])
def test_wkd_l_equals_per_sample_formulation(tau):
    B, C = 6, 7
    s, t, y = logits(B, C, 1), logits(B, C, 2), torch.tensor([0, 3, 6, 2, 2, 5])
    cost = random_cost(C)
    loss_t, wd = wkd_l_parts(s, t, y, cost, tau)
    ref_t, ref_wd = per_sample_loop(s, t, y, cost, tau)
    assert abs(float(loss_t) - ref_t) < 1e-10 and abs(float(wd) - ref_wd) < 1e-10
    # the vectorised (C-1)x(C-1) reference used for speed comparisons agrees too, gradients included
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    ours, ref = wkd_l_parts(s1, t, y, cost, tau), wkd_l_reference(s2, t, y, cost, tau)
    torch.testing.assert_close(torch.stack(ours), torch.stack(ref), atol=1e-6, rtol=0)
    (ours[0] + 30 * ours[1]).backward()
    (ref[0] + 30 * ref[1]).backward()
    torch.testing.assert_close(s1.grad, s2.grad, atol=1e-6, rtol=0)


def test_target_mass_is_exactly_zero_in_the_plan():
    B, C = 5, 6
    s, t, y = logits(B, C, 3), logits(B, C, 4), torch.tensor([0, 1, 2, 3, 5])
    rows = torch.arange(B)
    ps = torch.softmax(s.scatter(1, y[:, None], float("-inf")) / 4, 1)
    pt = torch.softmax(t.scatter(1, y[:, None], float("-inf")) / 4, 1)
    assert (ps[rows, y] == 0).all() and (pt[rows, y] == 0).all()
    P = ot.sinkhorn(ps, pt, random_cost(C), 0.05, 10)
    assert (P[rows, y, :] == 0).all() and (P[rows, :, y] == 0).all()


def test_wkd_l_term_weighting_and_gradient_flow():
    B, C = 8, 5
    cost = random_cost(C).float()
    term = losses.create("wkd_l", cost=cost, lambda_l=600.0, tau=8.0)
    s_logits = logits(B, C, 5, dtype=torch.float32).requires_grad_()
    t_logits = logits(B, C, 6, dtype=torch.float32).requires_grad_()
    term.setup(ctx_for({"logits": s_logits.detach()}, {"logits": t_logits.detach()}, C))
    y = torch.arange(B) % C
    # 0-based epochs; the official 1-based epoch is one more (151 is the first decayed, 240 weighs 0)
    for epoch, factor in [(0, 1.0), (149, 1.0), (150, 0.5 * (1 + math.cos(math.pi / 90))), (194, 0.5), (239, 0.0)]:
        value = term({"logits": s_logits}, {"logits": t_logits}, batch(y, epoch))
        loss_t, wd = wkd_l_parts(s_logits.detach().double(), t_logits.detach().double(), y, cost.double(), 8.0)
        assert abs(float(value.detach()) - float(loss_t + 600 * factor * wd)) < 1e-4 * float(value.detach())
    value.backward()
    assert s_logits.grad is not None and s_logits.grad.abs().sum() > 0
    assert t_logits.grad is None
    for w in (0.0, 0.25):  # the named option target_weight scales the target part only
        scaled = losses.create("wkd_l", cost=cost, lambda_l=600.0, tau=8.0, target_weight=w)
        value = scaled({"logits": s_logits}, {"logits": t_logits}, batch(y, 0))
        assert abs(float(value.detach()) - float(w * loss_t + 600 * wd)) < 1e-4 * float(value.detach())
    with pytest.raises(ValueError, match="target_weight must be >= 0"):
        losses.create("wkd_l", target_weight=-1.0)


def test_wkd_l_keeps_its_two_parts_only_when_asked():
    """Tooling (benchtools/step_trace.py) reads WKD-L as its two parts: each with its own weight (the target
    part's target_weight, the Wasserstein part's decayed lambda_l), summing to the term's value."""
    B, C = 8, 5
    cost = random_cost(C).float()
    s_logits = logits(B, C, 5, dtype=torch.float32).requires_grad_()
    t_logits = logits(B, C, 6, dtype=torch.float32)
    y = torch.arange(B) % C
    term = losses.create("wkd_l", cost=cost, lambda_l=600.0, tau=8.0, target_weight=0.25)
    term.setup(ctx_for({"logits": s_logits.detach()}, {"logits": t_logits}, C))
    term({"logits": s_logits}, {"logits": t_logits}, batch(y, 194))
    assert term.last_parts is None  # not asked: nothing kept
    term.keep_parts = True
    value = term({"logits": s_logits}, {"logits": t_logits}, batch(y, 194))  # weight halved by the decay
    parts = term.last_parts
    loss_t, wd = wkd_l_parts(s_logits.detach().double(), t_logits.double(), y, cost.double(), 8.0)
    assert set(parts) == {"target", "wd"}
    assert float(parts["target"]) == pytest.approx(0.25 * float(loss_t), rel=1e-5)
    assert float(parts["wd"]) == pytest.approx(300 * float(wd), rel=1e-5)
    assert torch.equal(parts["target"] + parts["wd"], value)
    assert parts["wd"].requires_grad  # with their graphs, for per-part gradients


def official_weight(w: float, epoch1: int, num_epochs: int, s: float) -> float:
    """The official trainer's weight (mdistiller/distillers/WKD.py): epochs counted from 1,
    decayed only once epoch > s."""
    if epoch1 > s:
        return 0.5 * w * (1 + math.cos((epoch1 - s) / (num_epochs - s) * math.pi))
    return w


def test_cosine_decay_matches_the_official_weight_at_every_epoch():
    # Our epochs are 0-based: epoch e here is the official trainer's epoch e + 1.
    for e0 in range(240):
        assert cosine_decayed(600, e0, 240, 150) == pytest.approx(official_weight(600, e0 + 1, 240, 150), abs=1e-12)
    assert cosine_decayed(600, 149, 240, 150) == 600        # official epoch 150: not yet decayed
    assert cosine_decayed(600, 150, 240, 150) < 600         # official epoch 151: decayed
    assert cosine_decayed(600, 239, 240, 150) == pytest.approx(0, abs=1e-9)  # the last epoch: 0
    term = losses.create("wkd_l", cost=torch.zeros(3, 3))  # default: decay from 150/240 of training
    for e0 in range(12):
        assert term.weight_at({"epoch": e0, "num_epochs": 12}) == pytest.approx(official_weight(600, e0 + 1, 12, 7.5))
    assert losses.create("wkd_l", cost=torch.zeros(3, 3), decay_start=0).weight_at({"epoch": 5, "num_epochs": 12}) == \
        pytest.approx(300)


def test_wkd_f_weight_follows_the_official_schedule_at_every_epoch():
    torch.manual_seed(0)
    s_feat, t_feat = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    student, teacher = {"feats": [s_feat]}, {"feats": [t_feat]}
    plain = losses.create("wkd_f", projector="none", lambda_f=1.0, decay_start_frac=None)
    decayed = losses.create("wkd_f", projector="none", lambda_f=0.006, decay_start=150)
    for term in (plain, decayed):
        term.setup(ctx_for(student, teacher, 3))
    base = plain(student, teacher, {"epoch": 0, "num_epochs": 240}).item()
    for e0 in (0, 148, 149, 150, 151, 194, 200, 238, 239):
        got = decayed(student, teacher, {"epoch": e0, "num_epochs": 240}).item()
        assert got == pytest.approx(official_weight(0.006, e0 + 1, 240, 150) * base, rel=1e-5, abs=1e-12)


def test_log_solver_option_and_bad_config():
    B, C = 4, 5
    s, t, y = logits(B, C, 7), logits(B, C, 8), torch.arange(B)
    cost = random_cost(C)
    _, wd_log = wkd_l_parts(s, t, y, cost, 4.0, solver="log", tol=1e-11, max_iters=3000)
    expected = 0.0
    for i in range(B):  # converged entropic OT of each (C-1)x(C-1) problem, by POT
        keep = torch.arange(C) != y[i]
        a, b = torch.softmax(s[i, keep] / 4.0, 0).numpy(), torch.softmax(t[i, keep] / 4.0, 0).numpy()
        expected += float(pot.sinkhorn2(a, b, cost[keep][:, keep].numpy(), 0.05, numItermax=20000, stopThr=1e-13)) / B
    assert abs(float(wd_log) - expected) < 1e-8
    with pytest.raises(ValueError, match="solver"):
        losses.create("wkd_l", solver="exact")
    with pytest.raises(ValueError, match="classes"):
        wkd_l_parts(s, t, y, random_cost(C + 1), 4.0)


@settings(max_examples=25, deadline=None)
@given(tau=st.floats(1.0, 10.0), scale=st.floats(0.1, 60.0), seed=st.integers(0, 1000), bf16=st.booleans())
def test_wkd_l_finite_for_any_temperature_and_autocast(tau, scale, seed, bf16):
    B, C = 6, 10
    s = logits(B, C, seed, scale, torch.float32).requires_grad_()
    t = logits(B, C, seed + 1, scale, torch.float32)
    term = losses.create("wkd_l", cost=random_cost(C, seed % 5).float(), tau=tau, decay_start_frac=None)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        value = term({"logits": s.to(torch.bfloat16) if bf16 else s}, {"logits": t}, batch(torch.arange(B) % C))
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(s.grad).all()


# ---------------------------------------------------------------------------- WKD-L cost matrix
class TinyTeacher(nn.Module):
    def __init__(self, C=3, D=3):
        super().__init__()
        self.conv = nn.Conv2d(1, D, 3, padding=1, stride=2)
        self.fc = nn.Linear(D, C)

    def tap(self, x):
        f = torch.relu(self.conv(x))
        return {"feats": [f], "logits": self.fc(f.mean((2, 3)))}


def dataset(N=13, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images, targets = torch.randn(N, 1, 4, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0][:N])
    perm = torch.randperm(N, generator=g)  # batches arrive shuffled; pairing must follow dataset index
    return [{"image": images[perm[i:i + 4]], "target": targets[perm[i:i + 4]], "index": perm[i:i + 4]}
            for i in range(0, N, 4)], images, targets


def test_build_cost_matrix_matches_hand_cka():
    torch.manual_seed(0)
    teacher = TinyTeacher()
    batches, images, targets = dataset()
    with torch.no_grad():
        fmap = teacher.tap(images)["feats"][0]
    for mode in ("features", "logits"):
        cost = build_cost_matrix(teacher.tap, batches, 3, kappa=2.0, mode=mode, progress=False)
        rows = []
        for c in range(3):
            idx = [i for i in range(len(targets)) if targets[i] == c][:4]  # class 0 has 5: cut to 4
            if mode == "features":
                rows.append(torch.cat([fmap[i].reshape(3, -1).T for i in idx]).double())
            else:
                rows.append(teacher.tap(images[idx])["logits"].detach().double())
        for i in range(3):
            for j in range(3):
                Xi, Xj = rows[i] - rows[i].mean(0), rows[j] - rows[j].mean(0)
                cka = (Xj.T @ Xi).norm() ** 2 / ((Xi.T @ Xi).norm() * (Xj.T @ Xj).norm())
                expected = 0.0 if i == j else 1 - math.exp(-2.0 * (1 - float(cka)))
                assert abs(float(cost[i, j]) - expected) < 1e-5, (mode, i, j)


def test_cka_cache_keyed_by_teacher_checksum(tmp_path):
    torch.manual_seed(1)
    teacher = TinyTeacher()
    batches, _, targets = dataset()
    calls = []

    def train_batches():
        calls.append(1)
        return iter(batches)

    def make_ctx():
        return SetupContext(student_out={}, teacher_out={}, num_classes=3, num_samples=13, train_targets=targets,
                            device=torch.device("cpu"), teacher=teacher, teacher_tap=teacher.tap,
                            train_batches=train_batches, cache_dir=str(tmp_path))

    first = load_or_build_cka(make_ctx(), "features", None)
    again = load_or_build_cka(make_ctx(), "features", None)
    assert len(calls) == 1 and torch.equal(first, again) and len(os.listdir(tmp_path)) == 1
    checksum = teacher_checksum(teacher)
    with torch.no_grad():
        teacher.conv.weight.add_(0.1)
    assert teacher_checksum(teacher) != checksum
    load_or_build_cka(make_ctx(), "features", None)
    assert len(calls) == 2 and len(os.listdir(tmp_path)) == 2
    for name in os.listdir(tmp_path):  # a corrupt cache (truncated write, tampering) is rebuilt, not trusted
        with open(tmp_path / name, "wb") as f:
            f.write(b"garbage")
    rebuilt = load_or_build_cka(make_ctx(), "features", None)
    assert len(calls) == 3 and torch.isfinite(rebuilt).all()


def test_cosine_classifier_cost_and_setup():
    teacher = TinyTeacher(C=4)
    term = losses.create("wkd_l", cost="cosine_classifier")
    term.setup(ctx_for({"logits": torch.zeros(1, 4)}, {"logits": torch.zeros(1, 4)}, 4, teacher=teacher))
    W = teacher.fc.weight.detach()
    for i in range(4):
        for j in range(4):
            # kappa (default 1) sharpens the classifier distance too, as in the official code
            expected = 0.0 if i == j else 1 - math.exp(-(1 - float(W[i] @ W[j] / W[i].norm() / W[j].norm())))
            assert abs(float(term.cost[i, j]) - expected) < 1e-6
    with pytest.raises(ValueError, match="cost file /no/such/cost.pt does not exist: give cost='cka'"):
        losses.create("wkd_l", cost="/no/such/cost.pt").setup(ctx_for({}, {}, 4))


def test_saved_cost_file(tmp_path):
    cost = random_cost(4).float()
    torch.save(cost, tmp_path / "cost.pt")
    term = losses.create("wkd_l", cost=str(tmp_path / "cost.pt"))
    term.setup(ctx_for({}, {}, 4))
    assert torch.equal(term.cost, cost)
    with pytest.raises(ValueError, match="classes"):
        losses.create("wkd_l", cost=str(tmp_path / "cost.pt")).setup(ctx_for({}, {}, 5))
    torch.save({"cost": cost}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match="not a"):
        losses.create("wkd_l", cost=str(tmp_path / "dict.pt")).setup(ctx_for({}, {}, 4))


# --------------------------------------------------------------------------------------- WKD-F
def wkd_f_loop(fs, ft, grid):
    """float64 loop over samples, cells and channels (adaptive-pool cells), autograd-able."""
    B, C, H, W = fs.shape
    cells = lambda n: [(i * n // grid, -(-(i + 1) * n // grid)) for i in range(grid)]  # noqa: E731
    mean_loss, cov_loss = 0.0, 0.0
    for b in range(B):
        for h0, h1 in cells(H):
            for w0, w1 in cells(W):
                for c in range(C):
                    xs = [fs[b, c, i, j] for i in range(h0, h1) for j in range(w0, w1)]
                    xt = [ft[b, c, i, j] for i in range(h0, h1) for j in range(w0, w1)]
                    n = len(xs)
                    ms, mt = sum(xs) / n, sum(xt) / n
                    ss = (sum((x - ms) ** 2 for x in xs) / (n - 1) + 1e-5) ** 0.5
                    st_ = (sum((x - mt) ** 2 for x in xt) / (n - 1) + 1e-5) ** 0.5
                    mean_loss = mean_loss + (ms - mt) ** 2
                    cov_loss = cov_loss + (ss - st_) ** 2
    return mean_loss / (B * grid ** 2), cov_loss / (B * grid ** 2)


@pytest.mark.parametrize("grid,hw", [(1, 4), (2, 4), (2, 5)])
def test_wkd_f_matches_bruteforce_loop(grid, hw):
    g = torch.Generator().manual_seed(grid * 10 + hw)
    fs = torch.randn(2, 3, hw, hw, generator=g, dtype=D64, requires_grad=True)
    ft = torch.randn(2, 3, hw, hw, generator=g, dtype=D64)
    term = losses.create("wkd_f", projector="none", grid=grid, lambda_f=0.5, gamma=3.0, decay_start_frac=None)
    term.setup(ctx_for({"feats": [fs.detach()]}, {"feats": [ft]}, 3))
    value = term({"feats": [fs]}, {"feats": [ft]}, batch(torch.zeros(2, dtype=torch.long)))
    m, c = wkd_f_loop(fs, ft, grid)
    expected = 0.5 * (3.0 * m + c)
    assert abs(float(value.detach()) - float(expected.detach())) < 1e-10
    (g1,) = torch.autograd.grad(value, fs)
    (g2,) = torch.autograd.grad(expected, fs)
    torch.testing.assert_close(g1, g2, atol=1e-10, rtol=1e-8)


def test_wkd_f_zero_for_identical_features_and_teacher_detached():
    f = torch.randn(3, 4, 4, 4)
    for cov in ("diag", "full"):
        term = losses.create("wkd_f", projector="none", cov=cov)
        term.setup(ctx_for({"feats": [f]}, {"feats": [f]}, 3))
        assert abs(float(term({"feats": [f]}, {"feats": [f]}, batch(torch.zeros(3, dtype=torch.long))))) < 1e-5
    fs, ft = torch.randn(3, 4, 4, 4, requires_grad=True), torch.randn(3, 4, 4, 4, requires_grad=True)
    term({"feats": [fs]}, {"feats": [ft]}, batch(torch.zeros(3, dtype=torch.long))).backward()
    assert fs.grad is not None and ft.grad is None


@pytest.mark.parametrize("cov", ["diag", "full"])
def test_wkd_f_statistics_stay_float32_under_bfloat16_autocast(cov):
    """The Gaussians are the W2's input: under autocast they are computed in float32 from the (bfloat16) map, the
    same numbers as float32 arithmetic on that map gives (a bfloat16 covariance moved the full form's gradient by
    8% at resnet32x4's shapes: benchtools/gpu_solvers.py)."""
    from wdistill.losses.wkd.wkd_f import channel_gaussians
    f = torch.randn(4, 8, 4, 4, generator=torch.Generator().manual_seed(0)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mu, second = channel_gaussians(f, 2, 1e-5, cov)
    ref_mu, ref_second = channel_gaussians(f.float(), 2, 1e-5, cov)
    assert mu.dtype == second.dtype == torch.float32
    assert torch.equal(mu, ref_mu) and torch.equal(second, ref_second)
    assert channel_gaussians(f.double(), 2, 1e-5, cov)[1].dtype == torch.float64  # float64 kept (the oracles')


def test_wkd_f_full_covariance_matches_pot():
    g = torch.Generator().manual_seed(3)
    fs, ft = torch.randn(2, 3, 4, 4, generator=g, dtype=D64), torch.randn(2, 3, 4, 4, generator=g, dtype=D64)
    term = losses.create("wkd_f", projector="none", cov="full", grid=2, lambda_f=1.0, gamma=2.0, decay_start_frac=None)
    term.setup(ctx_for({"feats": [fs]}, {"feats": [ft]}, 3))
    value = float(term({"feats": [fs]}, {"feats": [ft]}, batch(torch.zeros(2, dtype=torch.long))))
    expected = 0.0
    for b in range(2):
        for i in range(2):
            for j in range(2):
                xs = fs[b, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(3, -1).numpy()
                xt = ft[b, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(3, -1).numpy()
                Ss, St = np.cov(xs) + 1e-5 * np.eye(3), np.cov(xt) + 1e-5 * np.eye(3)
                ms, mt = xs.mean(1), xt.mean(1)
                w = float(pot.gaussian.bures_wasserstein_distance(mt, ms, St, Ss)) ** 2
                mean_part = ((ms - mt) ** 2).sum()
                expected += 2.0 * mean_part + (w - mean_part)
    assert abs(value - expected / 8) < 1e-8


def test_wkd_f_projectors_and_decay():
    fs, ft = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)
    term = losses.create("wkd_f")
    term.setup(ctx_for({"feats": [fs]}, {"feats": [ft]}, 3))
    assert isinstance(term.projector, ConvReg) and term.projector(fs).shape == ft.shape
    full = term({"feats": [fs]}, {"feats": [ft]}, batch(torch.zeros(2, dtype=torch.long), 0))
    half = term({"feats": [fs]}, {"feats": [ft]}, batch(torch.zeros(2, dtype=torch.long), 194))  # official 195
    assert abs(float(half.detach()) - 0.5 * float(full.detach())) < 1e-5 * float(full.detach())
    bott = losses.create("wkd_f", projector="bottleneck")
    bott.setup(ctx_for({"feats": [torch.randn(2, 4, 4, 4)]}, {"feats": [ft]}, 3))
    assert bott.projector(torch.randn(2, 4, 4, 4)).shape == ft.shape
    # maps of different sizes: the Gaussians are per-map channel statistics, no spatial match needed
    other = losses.create("wkd_f", projector="bottleneck", lambda_f=1.0, gamma=1.0)
    other.setup(ctx_for({"feats": [fs]}, {"feats": [ft]}, 3))
    f_s = other.projector(fs)
    assert f_s.shape == (2, 6, 8, 8)
    hand = sum(((f_s[b].flatten(1).mean(1) - ft[b].flatten(1).mean(1)) ** 2).sum()
               + ((f_s[b].flatten(1).var(1) + 1e-5).sqrt() - (ft[b].flatten(1).var(1) + 1e-5).sqrt()).pow(2).sum()
               for b in range(2)) / 2
    got = other({"feats": [fs]}, {"feats": [ft]}, batch(torch.zeros(2, dtype=torch.long), 0))
    assert abs(float(got) - float(hand)) < 1e-4 * float(hand)
    with pytest.raises(ValueError, match="grid"):
        t = losses.create("wkd_f", projector="none", grid=8)
        t.setup(ctx_for({"feats": [ft]}, {"feats": [ft]}, 3))
        t({"feats": [ft]}, {"feats": [ft]}, batch(torch.zeros(2, dtype=torch.long)))
