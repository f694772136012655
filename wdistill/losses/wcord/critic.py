"""WCoRD's critic heads, their gradient penalty, the contrastive bound (GCKT) and the batch OT
loss (LCKT), beside the term (``wcord.py``).

The critic (``critic="bounded"``, default; our construction, the paper only asks for an
approximately 1-Lipschitz critic): ``g(t, s) = <a(t), b(s)> / (sqrt(2) tau)`` with
``a(t) = P(W_t t + c_t)``, ``b(s) = P(W_s s + c_s)``, each W divided by its largest singular
value (spectral norm 1: from above, within 6e-4, by :func:`spectral_upper`, which needs no SVD,
so no host sync on a GPU) and P the projection onto the unit ball, ``x / max(1, |x|)``, which is
1-Lipschitz. Then |grad_t g| <= |b| / (sqrt(2) tau) <=
1 / (sqrt(2) tau) and the same for s, so g is (1/tau)-Lipschitz in (t, s) jointly: tau * g
is a 1-Lipschitz critic of the Kantorovich-Rubinstein dual, and tau stays the temperature
of the contrastive softmax (scores in [-10.1, 10.1] at tau = 0.07). The bound is measured
in ``tests/test_wcord.py`` (largest gradient norm over sampled pairs). Memory rows are
points of the unit ball updated by convex combination (no rescaling).

``critic="normalised"`` is the earlier critic: the heads' outputs l2-normalised,
``<h_t, h_s> / tau``. It claims no bound: normalisation ``x / |x|`` has Lipschitz constant
``1 / |x|``, unbounded near 0, and spectral normalisation of the Linear before it
(``lipschitz="spectral"``) does not change that. ``lipschitz="gp"`` (WGAN-GP penalty
``gp_weight * E(|grad_(t,s) g| - 1)^2`` at positive and shuffled pairs, gp_weight=10 as in
Gulrajani et al. 2017) adds a soft constraint at sampled points to either critic;
``"none"`` (normalised only) gives CRD's critic.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from wdistill import ot
from wdistill.losses._shared.memory import bank_scores

CRITICS = ("bounded", "normalised")


# sigma_max from tr((W W^T)^k), k = 2^12: at most n^(1/2k) - 1 = 6e-4 above it for n = 128 (equal singular
# values); exact to float32 once sigma_2 / sigma_1 < 0.99. Each squaring is a few kernel launches on a GPU.
SQUARINGS = 12


def spectral_upper(w: torch.Tensor) -> torch.Tensor:
    """An upper bound on ``sigma_max(w)``, equal to it within a factor ``n^(1/2k)`` (n = the smaller side,
    k = 2^SQUARINGS; 1 + 6e-4 at n = 128), gradients flowing through it, with no host sync on a GPU (an
    SVD checks its solver's status on the host). With ``A = W W^T`` (PSD, eigenvalues ``sigma_i^2``),
    ``sigma_max^2k <= tr(A^k) <= n sigma_max^2k``; ``A^k`` by repeated squaring, each square rescaled to
    trace 1 (``s_j`` the trace before rescaling), so ``log tr(A^k) / k = log tr A + sum_j log s_j / 2^(j+1)``.
    In float32 (float64 for a float64 ``w``) whatever the autocast, so above it up to rounding (~2e-7)."""
    with torch.autocast(w.device.type, enabled=False):
        w = w if w.dtype == torch.float64 else w.float()
        a = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        trace = a.diagonal().sum()
        b, log = a / trace, trace.log()
        for j in range(SQUARINGS):
            b = b @ b
            s = b.diagonal().sum()
            b, log = b / s, log + s.log() / 2 ** (j + 1)
        return (log / 2).exp()


def _unit_spectral(w: torch.Tensor) -> torch.Tensor:
    """``w / sigma_max(w)`` (through :func:`spectral_upper`): spectral norm 1, or below it by at most 6e-4."""
    return w / spectral_upper(w).to(w.dtype)


def _to_unit_ball(x: torch.Tensor) -> torch.Tensor:
    """Projection onto the unit ball, ``x / max(1, |x|)``: 1-Lipschitz, unlike ``x / |x|``."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1.0)


def critic_heads(embed_s: nn.Module, embed_t: nn.Module, e_s: torch.Tensor, e_t: torch.Tensor, bounded: bool):
    """(h_s, h_t, h_s with the head's parameters detached: LCKT's path to the student only).

    bounded: Linear layers divided by their spectral norm (from above), outputs projected onto the unit
    ball; else (normalised): l2-normalised outputs (spectral norm by parametrisation, if any)."""
    with parametrize.cached():  # normalised critic with spectral norm: one power iteration per step
        ws, bs = embed_s.linear.weight, embed_s.linear.bias
        wt, bt = embed_t.linear.weight, embed_t.linear.bias
        if bounded:
            ws, wt = _unit_spectral(ws), _unit_spectral(wt)

        def out(x):
            return _to_unit_ball(x) if bounded else F.normalize(x, dim=1)

        h_s, h_t = out(F.linear(e_s, ws, bs)), out(F.linear(e_t, wt, bt))
        h_s_student_only = out(F.linear(e_s, ws.detach(), bs.detach()))
    return h_s, h_t, h_s_student_only


def gradient_penalty(critic: Callable, e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    """mean (||grad_(t,s) g(t, s)|| - 1)^2 at positive and shuffled pairs (critic only)."""
    t = torch.cat([e_t, e_t]).detach().requires_grad_(True)
    s = torch.cat([e_s, e_s.roll(1, 0)]).detach().requires_grad_(True)
    g_t, g_s = torch.autograd.grad(critic(t, s).sum(), [t, s], create_graph=True)
    norm = (g_t.pow(2).sum(1) + g_s.pow(2).sum(1) + 1e-12).sqrt()
    return (norm - 1).pow(2).mean()


def contrastive_bound(anchor: torch.Tensor, other: torch.Tensor, bank: torch.Tensor, neg: torch.Tensor,
                      index: torch.Tensor | None, scale: float, scoring: str) -> torch.Tensor:
    """GCKT's negative contrastive bound for one anchor side: mean_i [logsumexp(pos_i, neg_i.) - pos_i]
    with scores ``scale * <anchor, .>``. The positive is the other model's head output for the same
    input (``index`` None) or its memory row ``bank[index]``; negatives are the bank rows ``neg``."""
    partner = other if index is None else bank[index]
    pos = (anchor * partner).sum(1, keepdim=True) * scale
    scores = torch.cat([pos, bank_scores(bank, anchor, neg, scoring) * scale], 1)
    return (torch.logsumexp(scores, 1) - pos.squeeze(1)).mean()


def batch_ot_loss(h_s: torch.Tensor, h_t: torch.Tensor, solver: str, ipot_beta: float, ipot_iters: int,
                  sinkhorn_reg: float) -> torch.Tensor:
    """sum(T * C), C = 1 - cos between the rows, T the OT plan with uniform marginals, held constant."""
    cost = ot.cosine_cost(h_s, h_t)
    B = cost.shape[0]
    with torch.no_grad():
        w = torch.full((B,), 1.0 / B, dtype=cost.dtype, device=cost.device)
        if solver == "ipot":
            plan = ot.ipot(w, w, cost.detach(), ipot_beta, ipot_iters)
        else:
            plan = ot.sinkhorn_log(w, w, cost.detach(), sinkhorn_reg)
    return (plan * cost).sum()
