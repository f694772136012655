"""wdistill.ot against POT, float64 brute-force loops and hand computations."""
import math

import numpy as np
import ot as pot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wdistill import ot

D64 = torch.float64


def simplex(*shape, zeros=0, seed=0, dtype=D64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=dtype) + 0.05
    if zeros:
        x[..., :zeros] = 0
    return x / x.sum(-1, keepdim=True)


def rand_cost(n, m, seed=0, batch=None):
    g = torch.Generator().manual_seed(seed)
    shape = (n, m) if batch is None else (batch, n, m)
    return torch.rand(*shape, generator=g, dtype=D64)


def brute_plain_sinkhorn(a, b, C, reg, iters, eps=1e-8):
    """Element-by-element float64 loop of the plain recursion (u0 = 1/|supp a| on supp a)."""
    n, m = len(a), len(b)
    K = [[math.exp(-C[i][j] / reg) for j in range(m)] for i in range(n)]
    nnz = sum(1 for x in a if x > 0)
    u = [(1.0 / nnz if a[i] > 0 else 0.0) for i in range(n)]
    v = [0.0] * m
    for _ in range(iters):
        v = [b[j] / (sum(K[i][j] * u[i] for i in range(n)) + eps) for j in range(m)]
        u = [a[i] / (sum(K[i][j] * v[j] for j in range(m)) + eps) for i in range(n)]
    return torch.tensor([[u[i] * K[i][j] * v[j] for j in range(m)] for i in range(n)], dtype=D64)


# ----------------------------------------------------------------------------- plain Sinkhorn
@pytest.mark.parametrize("shared", [True, False])
def test_plain_sinkhorn_matches_bruteforce_loop(shared):
    a, b = simplex(3, 4, seed=1), simplex(3, 5, seed=2)
    C = rand_cost(4, 5, seed=3) if shared else rand_cost(4, 5, seed=3, batch=3)
    P = ot.sinkhorn(a, b, C, reg=0.05, num_iters=10)
    for k in range(3):
        Ck = C if shared else C[k]
        ref = brute_plain_sinkhorn(a[k].tolist(), b[k].tolist(), Ck.tolist(), 0.05, 10)
        torch.testing.assert_close(P[k], ref, rtol=1e-10, atol=1e-14)
    cost = ot.sinkhorn2(a, b, C, reg=0.05, num_iters=10)
    torch.testing.assert_close(cost, (P * C).sum((1, 2)), rtol=1e-12, atol=1e-14)


def test_plain_sinkhorn_converges_to_pot():
    a, b, C = simplex(2, 6, seed=4), simplex(2, 5, seed=5), rand_cost(6, 5, seed=6)
    P = ot.sinkhorn(a, b, C, reg=0.1, num_iters=3000, eps=0.0)  # eps shifts the fixed point by ~1e-7
    for k in range(2):
        ref = pot.sinkhorn(a[k].numpy(), b[k].numpy(), C.numpy(), 0.1, numItermax=20000, stopThr=1e-14)
        np.testing.assert_allclose(P[k].numpy(), ref, atol=1e-7)


def test_plain_zero_mass_equals_restricted_problem():
    a, b = simplex(2, 6, zeros=2, seed=7), simplex(2, 6, seed=8)
    a[1] = a[1].roll(3)  # zeros at other positions in the second row
    C = rand_cost(6, 6, seed=9)
    P = ot.sinkhorn(a, b, C, 0.05, 10)
    for k in range(2):
        keep = a[k] > 0
        assert (P[k][~keep] == 0).all()
        restricted = brute_plain_sinkhorn(a[k][keep].tolist(), b[k].tolist(), C[keep].tolist(), 0.05, 10)
        torch.testing.assert_close(P[k][keep], restricted, rtol=1e-10, atol=1e-14)


def test_shared_cost_equals_per_sample_cost():
    a, b, C = simplex(4, 7, seed=10), simplex(4, 7, seed=11), rand_cost(7, 7, seed=12)
    torch.testing.assert_close(ot.sinkhorn(a, b, C, 0.05), ot.sinkhorn(a, b, C.expand(4, 7, 7).clone(), 0.05))
    torch.testing.assert_close(ot.ipot(a, b, C), ot.ipot(a, b, C.expand(4, 7, 7).clone()))
    torch.testing.assert_close(ot.sinkhorn_log(a, b, C, 0.05), ot.sinkhorn_log(a, b, C.expand(4, 7, 7).clone(), 0.05))


def test_plain_sinkhorn_gradcheck():
    a = simplex(2, 4, seed=13).requires_grad_()
    b = simplex(2, 3, seed=14).requires_grad_()
    C = rand_cost(4, 3, seed=15).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, C: ot.sinkhorn2(a, b, C, 0.1, 10), (a, b, C))
    assert torch.autograd.gradcheck(lambda a, b, C: ot.sinkhorn(a, b, C, 0.1, 10), (a, b, C))


def test_shared_constant_cost_reverse_pass_equals_unrolled_autograd():
    """A constant shared cost takes the hand-written reverse pass; a per-sample copy of the same
    cost takes the autograd loop. Values and gradients w.r.t. both marginals must agree, with
    zero masses in a (WKD-L's target) and in b."""
    a = simplex(3, 6, zeros=1, seed=16)
    b = simplex(3, 6, zeros=2, seed=17)
    b[1] = b[1].roll(2)
    a, b = a.requires_grad_(), b.requires_grad_()
    C = rand_cost(6, 6, seed=18)
    wa, wb = torch.randn(3, 6, dtype=D64), torch.randn(3)
    outs = []
    for cost in (C, C.expand(3, 6, 6).clone()):
        P = ot.sinkhorn(a, b, cost, 0.05, 10)
        w = ot.sinkhorn2(a, b, cost, 0.05, 10)
        loss = (P.sum(2) * wa).sum() + (w * wb).sum()
        outs.append((P.detach(), w.detach(), *torch.autograd.grad(loss, (a, b))))
    for x, y in zip(*outs):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-13)
    # and against finite differences (strictly positive masses: the support must not change)
    ap, bp = simplex(2, 5, seed=19).requires_grad_(), simplex(2, 4, seed=20).requires_grad_()
    Cp = rand_cost(5, 4, seed=21)
    assert torch.autograd.gradcheck(lambda a, b: ot.sinkhorn2(a, b, Cp, 0.1, 10), (ap, bp))
    assert torch.autograd.gradcheck(lambda a, b: ot.sinkhorn(a, b, Cp, 0.1, 10), (ap, bp))
    # only a needs a gradient (WKD-L: the teacher side is detached)
    g = torch.autograd.grad(ot.sinkhorn2(ap, bp.detach(), Cp, 0.1, 10).sum(), ap)[0]
    torch.testing.assert_close(g, torch.autograd.grad(ot.sinkhorn2(ap, bp, Cp, 0.1, 10).sum(), ap)[0])


# ------------------------------------------------------------------------------- log Sinkhorn
def test_log_sinkhorn_matches_pot():
    a, b, C = simplex(3, 6, seed=16), simplex(3, 5, seed=17), rand_cost(6, 5, seed=18)
    P = ot.sinkhorn_log(a, b, C, reg=0.05, tol=1e-13, max_iters=5000)
    for k in range(3):
        ref_log = pot.bregman.sinkhorn_log(a[k].numpy(), b[k].numpy(), C.numpy(), 0.05, numItermax=20000, stopThr=1e-14)
        ref = pot.sinkhorn(a[k].numpy(), b[k].numpy(), C.numpy(), 0.05, numItermax=20000, stopThr=1e-14)
        np.testing.assert_allclose(P[k].numpy(), ref_log, atol=1e-10)
        np.testing.assert_allclose(P[k].numpy(), ref, atol=1e-10)


def test_log_sinkhorn_small_reg_approaches_emd2():
    a, b, C = simplex(5, seed=19), simplex(5, seed=20), rand_cost(5, 5, seed=21)
    exact = pot.emd2(a.numpy(), b.numpy(), C.numpy())
    gaps = [abs(float(ot.sinkhorn_log2(a, b, C, reg, tol=1e-10, max_iters=50000)) - exact)
            for reg in (0.1, 0.01, 0.002)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 2e-3, gaps


def test_log_sinkhorn_zero_masses_exact_and_finite_gradient():
    a = simplex(2, 6, zeros=2, seed=22).requires_grad_()
    b = simplex(2, 5, zeros=1, seed=23).requires_grad_()
    C = rand_cost(6, 5, seed=24).requires_grad_()
    P = ot.sinkhorn_log(a, b, C, 0.05, tol=1e-12, max_iters=3000)
    assert (P[:, :2] == 0).all() and (P[:, :, :1] == 0).all()
    torch.testing.assert_close(P.sum(2), a.detach(), atol=1e-10, rtol=0)
    (P * C).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (a, b, C))
    restricted = pot.sinkhorn(
        a[0, 2:].detach().numpy(),
        b[0, 1:].detach().numpy(),
        C[2:, 1:].detach().numpy(),
        0.05,
        numItermax=20000,
        stopThr=1e-14,
    )
    np.testing.assert_allclose(P[0, 2:, 1:].detach().numpy(), restricted, atol=1e-10)


def test_log_sinkhorn_gradcheck_and_pot_torch_gradient():
    a = simplex(1, 4, seed=25).requires_grad_()
    b = simplex(1, 3, seed=26).requires_grad_()
    C = rand_cost(4, 3, seed=27).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, C: ot.sinkhorn_log2(a, b, C, 0.2, tol=None, max_iters=15), (a, b, C))
    # Converged gradient of <P, C> vs POT's torch backend (autodiff through its own iterations).
    ours = ot.sinkhorn_log2(a, b, C, 0.2, tol=1e-13, max_iters=2000).sum()
    ga, gC = torch.autograd.grad(ours, (a, C))
    a2, C2 = a.detach()[0].clone().requires_grad_(), C.detach().clone().requires_grad_()
    ref = pot.sinkhorn2(a2, b.detach()[0], C2, 0.2, numItermax=2000, stopThr=1e-13)
    ra, rC = torch.autograd.grad(ref, (a2, C2))
    torch.testing.assert_close(gC, rC, atol=1e-6, rtol=1e-5)
    # Gradients wrt masses are defined up to a constant on the simplex.
    torch.testing.assert_close(ga[0] - ga[0].mean(), ra - ra.mean(), atol=1e-6, rtol=1e-5)


def test_log_sinkhorn_truncated_backprop_close_to_full():
    a = simplex(2, 5, seed=28).requires_grad_()
    b, C = simplex(2, 5, seed=29), rand_cost(5, 5, seed=30)
    full = torch.autograd.grad(ot.sinkhorn_log2(a, b, C, 0.1, tol=1e-12, max_iters=3000).sum(), a)[0]
    trunc = torch.autograd.grad(ot.sinkhorn_log2(a, b, C, 0.1, tol=1e-12, max_iters=3000, backprop_iters=200).sum(), a)[
        0
    ]
    torch.testing.assert_close(
        trunc - trunc.mean(1, keepdim=True), full - full.mean(1, keepdim=True), atol=1e-6, rtol=0
    )


# --------------------------------------------------------------------------------------- IPOT
def test_ipot_converges_to_emd():
    a, b, C = simplex(2, 6, seed=31), simplex(2, 5, seed=32), rand_cost(6, 5, seed=33)
    T = ot.ipot(a, b, C, beta=0.5, num_iters=2000)
    T50 = ot.ipot(a, b, C, beta=0.5, num_iters=50)
    for k in range(2):
        exact = pot.emd2(a[k].numpy(), b[k].numpy(), C.numpy())
        assert abs(float((T[k] * C).sum()) - exact) < 1e-9
        assert abs(float((T50[k] * C).sum()) - exact) < 5e-3
        torch.testing.assert_close(T[k].sum(1), a[k], atol=1e-9, rtol=0)
        torch.testing.assert_close(T[k].sum(0), b[k], atol=1e-9, rtol=0)


def test_ipot_zero_masses_and_gradcheck():
    a, b, C = simplex(1, 5, zeros=2, seed=34), simplex(1, 4, seed=35), rand_cost(5, 4, seed=36)
    T = ot.ipot(a, b, C, num_iters=100)
    assert torch.isfinite(T).all() and (T[0, :2] == 0).all()
    C.requires_grad_()
    a2 = simplex(1, 4, seed=37).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, C: ot.ipot(a, b, C[:4], beta=0.5, num_iters=5, inner=2), (a2, C))


# ---------------------------------------------------------------------------------- Gaussians
def spd(d, seed, rank=None):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, rank or d, generator=g, dtype=D64)
    return A @ A.T + (0 if rank else 0.1) * torch.eye(d, dtype=D64)


def test_gaussian_w2_matches_pot_bures():
    mu1, mu2 = torch.randn(4, dtype=D64), torch.randn(4, dtype=D64)
    S1, S2 = spd(4, 1), spd(4, 2)
    ours = ot.gaussian_w2(mu1, S1, mu2, S2)
    ref = pot.gaussian.bures_wasserstein_distance(mu1.numpy(), mu2.numpy(), S1.numpy(), S2.numpy())
    # POT returns the distance, we return its square.
    np.testing.assert_allclose(ours.numpy(), float(ref) ** 2, rtol=1e-9)


def test_gaussian_diag_equals_full_with_diagonal_covariances():
    mu1, mu2 = torch.randn(3, 5, dtype=D64), torch.randn(3, 5, dtype=D64)
    sd1, sd2 = torch.rand(3, 5, dtype=D64) + 0.1, torch.rand(3, 5, dtype=D64) + 0.1
    full = ot.gaussian_w2(mu1, torch.diag_embed(sd1**2), mu2, torch.diag_embed(sd2**2))
    torch.testing.assert_close(ot.gaussian_w2_diag(mu1, sd1, mu2, sd2), full)
    m, c = ot.gaussian_w2_diag(mu1, sd1, mu2, sd2, split=True)
    torch.testing.assert_close(m, ((mu1 - mu2) ** 2).sum(1))
    torch.testing.assert_close(c, ((sd1 - sd2) ** 2).sum(1))


def test_sqrtm_squares_back_and_gradcheck():
    S = spd(5, 3)
    R = ot.sqrtm_psd(S)
    torch.testing.assert_close(R @ R, S)
    torch.testing.assert_close(R, R.T)
    A = torch.randn(4, 4, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda A: ot.sqrtm_psd(A @ A.T + 0.5 * torch.eye(4, dtype=D64)), (A,))
    B = torch.randn(3, 3, dtype=D64, requires_grad=True)
    mu = torch.randn(3, dtype=D64)
    assert torch.autograd.gradcheck(
        lambda A, B: ot.gaussian_w2(
            mu, A @ A.T + 0.3 * torch.eye(3, dtype=D64), mu.flip(0), B @ B.T + 0.2 * torch.eye(3, dtype=D64)
        ),
        (A[:3, :3].detach().clone().requires_grad_(), B),
    )


def test_gaussian_gradient_finite_for_repeated_and_zero_eigenvalues():
    eye = torch.eye(4, dtype=D64)
    for S1, S2 in (
        (eye.clone(), eye.clone()),
        (spd(4, 4, rank=2), spd(4, 5, rank=2)),
        (torch.zeros(4, 4, dtype=D64), eye.clone()),
    ):
        S2 = S2.requires_grad_()
        w = ot.gaussian_w2(torch.zeros(4, dtype=D64), S1, torch.ones(4, dtype=D64), S2)
        (g,) = torch.autograd.grad(w, S2)
        assert torch.isfinite(w) and torch.isfinite(g).all()
    # W2(N, N) = 0 and its gradient vanishes.
    S = spd(4, 6).requires_grad_()
    w = ot.gaussian_w2(torch.ones(4, dtype=D64), S.detach(), torch.ones(4, dtype=D64), S)
    (g,) = torch.autograd.grad(w, S)
    assert abs(float(w.detach())) < 1e-10 and g.abs().max() < 1e-8


# ------------------------------------------------------------------------------------- costs
def hsic_hand(X, Y):
    n = X.shape[0]
    H = torch.eye(n, dtype=D64) - torch.ones(n, n, dtype=D64) / n
    return torch.trace(X @ X.T @ H @ Y @ Y.T @ H) / (n - 1) ** 2


def test_linear_cka_equals_hsic_formula():
    g = torch.Generator().manual_seed(40)
    X, Y = torch.randn(12, 5, generator=g, dtype=D64), torch.randn(12, 3, generator=g, dtype=D64)
    expected = hsic_hand(X, Y) / torch.sqrt(hsic_hand(X, X) * hsic_hand(Y, Y))
    torch.testing.assert_close(ot.linear_cka(X, Y), expected)
    torch.testing.assert_close(ot.linear_cka(X, X), torch.tensor(1.0, dtype=D64))


@pytest.mark.parametrize("n,D", [(20, 4), (4, 20)])  # feature-space and Gram-space paths
def test_class_cka_matrix_both_paths_match_pairwise(n, D):
    feats = torch.randn(5, n, D, generator=torch.Generator().manual_seed(41), dtype=D64)
    M = ot.class_cka_matrix(feats, block=2)
    for i in range(5):
        for j in range(5):
            expected = hsic_hand(feats[i], feats[j]) / torch.sqrt(
                hsic_hand(feats[i], feats[i]) * hsic_hand(feats[j], feats[j])
            )
            torch.testing.assert_close(M[i, j], expected)
    cost = ot.cka_cost(M, kappa=2.0)
    assert (cost.diagonal() == 0).all() and torch.equal(cost, cost.T)
    assert cost.min() >= 0 and cost.max() <= 1
    torch.testing.assert_close(
        cost, 1 - torch.exp(-2.0 * (1 - M)) - torch.diag(1 - torch.exp(-2.0 * (1 - M.diagonal())))
    )


def test_cosine_costs():
    X, Y = torch.randn(4, 6, dtype=D64), torch.randn(3, 6, dtype=D64)
    C = ot.cosine_cost(X, Y)
    for i in range(4):
        for j in range(3):
            assert abs(float(C[i, j]) - (1 - float(X[i] @ Y[j] / X[i].norm() / Y[j].norm()))) < 1e-12
    W = torch.randn(5, 6, dtype=D64)
    Cw = ot.classifier_cost(W)
    assert Cw.diagonal().abs().max() < 1e-12 and torch.allclose(Cw, Cw.T)
    with pytest.raises(ValueError, match="widths differ"):
        ot.cosine_cost(X, torch.randn(3, 5))


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="does not match"):
        ot.sinkhorn(simplex(2, 4), simplex(2, 3), rand_cost(3, 4), 0.1)
    with pytest.raises(ValueError, match="reg must be > 0"):
        ot.sinkhorn_log(simplex(2, 4), simplex(2, 3), rand_cost(4, 3), 0.0)


# --------------------------------------------------------------------- properties (hypothesis)
masses = st.integers(2, 7)


@settings(max_examples=25, deadline=None)
@given(n=masses, m=masses, seed=st.integers(0, 10_000), reg=st.sampled_from([1e-3, 1e-2, 0.05, 0.5]))
def test_log_sinkhorn_finite_with_correct_marginals(n, m, seed, reg):
    a, b = simplex(2, n, seed=seed, dtype=torch.float32), simplex(2, m, seed=seed + 1, dtype=torch.float32)
    C = rand_cost(n, m, seed=seed + 2).float().requires_grad_()
    P = ot.sinkhorn_log(a, b, C, reg, tol=1e-5, max_iters=3000 if reg >= 0.05 else 300)
    (P * C).sum().backward()
    assert torch.isfinite(P).all() and torch.isfinite(C.grad).all()
    # Columns are exact after every update, up to float32 round-off in potentials of size ~C/reg.
    torch.testing.assert_close(P.sum(1), b, atol=1e-5 if reg >= 0.05 else 3e-4, rtol=0)
    if reg >= 0.05:
        torch.testing.assert_close(P.sum(2), a, atol=1e-4, rtol=0)


@settings(max_examples=20, deadline=None)
@given(n=masses, seed=st.integers(0, 10_000))
def test_wasserstein_symmetric_for_symmetric_cost(n, seed):
    a, b = simplex(n, seed=seed), simplex(n, seed=seed + 1)
    C = rand_cost(n, n, seed=seed + 2)
    C = (C + C.T) / 2
    w_ab = ot.sinkhorn_log2(a, b, C, 0.05, tol=1e-12, max_iters=5000)
    w_ba = ot.sinkhorn_log2(b, a, C, 0.05, tol=1e-12, max_iters=5000)
    torch.testing.assert_close(w_ab, w_ba, atol=1e-9, rtol=0)
    w_ab = ot.sinkhorn2(a, b, C, 0.1, num_iters=2000, eps=0.0)
    w_ba = ot.sinkhorn2(b, a, C, 0.1, num_iters=2000, eps=0.0)
    torch.testing.assert_close(w_ab, w_ba, atol=1e-9, rtol=0)


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_gaussian_zero_for_identical_inputs(d, seed):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(2, d, generator=g, dtype=D64)
    A = torch.randn(2, d, d, generator=g, dtype=D64)
    S = A @ A.transpose(1, 2) + 1e-3 * torch.eye(d, dtype=D64)
    assert ot.gaussian_w2(mu, S, mu, S).abs().max() < 1e-8
    sd = torch.rand(2, d, generator=g, dtype=D64)
    assert ot.gaussian_w2_diag(mu, sd, mu, sd).abs().max() == 0


def test_solvers_run_in_float32_under_bfloat16_autocast():
    a, b = simplex(3, 6, seed=50, dtype=torch.bfloat16), simplex(3, 6, seed=51, dtype=torch.bfloat16)
    C = rand_cost(6, 6, seed=52).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = {
            "sinkhorn": ot.sinkhorn(a, b, C, 0.05),
            "sinkhorn_log": ot.sinkhorn_log(a, b, C, 1e-3, max_iters=200),
            "ipot": ot.ipot(a, b, C),
            "gaussian": ot.gaussian_w2(a, torch.diag_embed(b), b, torch.diag_embed(a)),
        }
    for name, out in outs.items():
        assert out.dtype == torch.float32 and torch.isfinite(out).all(), name
    ref = ot.sinkhorn(a.float(), b.float(), C.float(), 0.05)
    torch.testing.assert_close(outs["sinkhorn"], ref)
