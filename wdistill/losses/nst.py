"""Neuron selectivity transfer."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .at import match_spatial, paired_maps
from .base import Term
from .published import bracket, ce, publish
from .registry import register


def _poly_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean over samples and channel pairs of (a_i . b_j)^2; a (B, Ca, HW), b (B, Cb, HW)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


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
            f_s, f_t = match_spatial(f_s, f_t)
            s = F.normalize(f_s.flatten(2), dim=2)
            t = F.normalize(f_t.flatten(2), dim=2)
            loss = loss + (_poly_kernel_mean(t, t) + _poly_kernel_mean(s, s)
                           - 2 * _poly_kernel_mean(s, t))
        return loss


# Published recipe (RepDistiller: CE + 50 * NST); tuned over x0.3 / x1 / x3 of the weight.
publish("nst", label="NST", order=12, terms=[ce(), {"name": "nst", "weight": 50.0}],
        grid=bracket("nst", "weight", 50.0), tune_priority=16)
