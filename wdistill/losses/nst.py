"""Neuron selectivity transfer."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wdistill.losses._shared.pairing import match_spatial, paired_maps
from wdistill.losses.base import Term
from wdistill.losses.recipes import bracket, ce, publish
from wdistill.losses.registry import register


def _norms(gram: torch.Tensor) -> torch.Tensor:
    """max(||x_i||, 1e-12) (F.normalize's rule) from the diagonal of a Gram matrix, (B, C)."""
    return gram.diagonal(dim1=1, dim2=2).clamp_min(1e-24).sqrt()


def _mmd_channel_grams(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The C x C form: Gram matrices of the raw (B, C, HW) maps, divided by the outer products of
    the channel norms (their diagonals), equal those of the normalised maps, so no normalised copy
    of a map is made and the backward pass touches the maps only through the three products."""
    g_ss, g_st = torch.bmm(s, s.transpose(1, 2)), torch.bmm(s, t.transpose(1, 2))
    with torch.no_grad():
        g_tt = torch.bmm(t, t.transpose(1, 2))
    n_s, n_t = _norms(g_ss), _norms(g_tt)
    k_ss = g_ss / (n_s.unsqueeze(2) * n_s.unsqueeze(1))
    k_st = g_st / (n_s.unsqueeze(2) * n_t.unsqueeze(1))
    k_tt = g_tt / (n_t.unsqueeze(2) * n_t.unsqueeze(1))
    return k_tt.pow(2).mean() + k_ss.pow(2).mean() - 2 * k_st.pow(2).mean()


def _mmd_position_grams(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The HW x HW form, for maps with more channels than positions. With S the (C_s, HW) matrix
    of normalised channel maps of one sample (T likewise), sum_ij (s_i.s_j)^2 = ||S^T S||^2 and
    sum_ij (s_i.t_j)^2 = <S^T S, T^T T>, so the three kernel means are ||S^T S / C_s - T^T T / C_t||^2:
    two HW x HW Gram matrices instead of three C x C ones."""
    s_hat = F.normalize(s, dim=2)
    with torch.no_grad():
        t_hat = F.normalize(t, dim=2)
        a_t = torch.bmm(t_hat.transpose(1, 2), t_hat) / t.shape[1]
    a_s = torch.bmm(s_hat.transpose(1, 2), s_hat) / s.shape[1]
    return (a_s - a_t).pow(2).sum() / s.shape[0]


def nst_mmd(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Squared polynomial-kernel MMD between the l2-normalised channel maps of f_s and f_t, by
    whichever of two equal forms multiplies less: C x C Gram matrices of channels (costs about
    HW (C_s^2 + C_s C_t + C_t^2)) or HW x HW Gram matrices of positions (about HW^2 (C_s + C_t);
    cheaper on late stages, e.g. 256 channels at 8x8)."""
    s, t = f_s.flatten(2), f_t.flatten(2)
    c_s, c_t, hw = s.shape[1], t.shape[1], s.shape[2]
    if hw * (c_s + c_t) < c_s * c_s + c_s * c_t + c_t * c_t:
        return _mmd_position_grams(s, t)
    return _mmd_channel_grams(s, t)


@register
class NST(Term):
    """Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer",
    2017 (squared MMD with the polynomial kernel k(x, y) = (x^T y + c)^d, d=2, c=0).

    Per layer of ``feats[1:]`` (the larger map pooled to the smaller), each channel's map is
    flattened to HW and l2-normalised; with channels as the samples of two distributions,
    ``MMD^2 = mean k(t_i, t_j) + mean k(s_i, s_j) - 2 mean k(s_i, t_j)`` within each sample,
    averaged over the batch and summed over layers. The teacher-teacher term is a constant.

    Recommended weight: 50 (RepDistiller, CIFAR-100).
    """

    name = "nst"

    def forward(self, student, teacher, batch):
        loss = 0.0
        for f_s, f_t in paired_maps(self.name, student, teacher):
            loss = loss + nst_mmd(*match_spatial(f_s, f_t))
        return loss


# Published recipe (RepDistiller: CE + 50 * NST); tuned over x0.3 / x1 / x3 of the weight.
publish("nst", label="NST", order=12, terms=[ce(), {"name": "nst", "weight": 50.0}],
        grid=bracket("nst", "weight", 50.0), tune_priority=16)
