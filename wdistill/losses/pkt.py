"""Probabilistic knowledge transfer."""
from __future__ import annotations

import torch

from wdistill.losses.base import Term
from wdistill.losses.recipes import bracket, ce, publish
from wdistill.losses.registry import register


def _cosine_affinity(f: torch.Tensor, eps: float) -> torch.Tensor:
    """Row-stochastic matrix of (cos + 1) / 2 between the rows of ``f`` (B, D)."""
    f = f / (f.norm(dim=1, keepdim=True) + eps)
    s = (f @ f.t() + 1.0) / 2.0
    return s / s.sum(dim=1, keepdim=True)


@register
class PKT(Term):
    """Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer",
    ECCV 2018 (cosine-similarity kernel).

    On ``embed`` (B, D): ``S = (cos(f_i, f_j) + 1) / 2``, rows normalised to conditional
    probabilities ``P``; ``L = mean_{i,j} P_t log((P_t + eps) / (P_s + eps))`` (mean over B^2
    entries, as the reference implementation).

    Args:
        eps: stabiliser of the normalisations and the log ratio (1e-7, reference code).

    Recommended weight: 30000 (RepDistiller, CIFAR-100).
    """

    name = "pkt"

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        self.eps = eps

    def forward(self, student, teacher, batch):
        p_s = _cosine_affinity(student["embed"].flatten(1), self.eps)
        p_t = _cosine_affinity(teacher["embed"].detach().flatten(1), self.eps)
        return (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).mean()


# Published recipe (RepDistiller: CE + 30000 * PKT); tuned over x0.3 / x1 / x3 of the weight.
publish("pkt", label="PKT", order=8, terms=[ce(), {"name": "pkt", "weight": 30000.0}],
        grid=bracket("pkt", "weight", 30000.0), tune_priority=15)
