"""Relational knowledge distillation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wdistill.losses._shared.pairing import upcast
from wdistill.losses.base import Term
from wdistill.losses.recipes import bracket, ce, publish
from wdistill.losses.registry import register


def _pairwise_distance(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances (B, B); squared distances clamped at ``eps`` so sqrt has a gradient,
    diagonal set to 0."""
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def _distance_potential(e: torch.Tensor) -> torch.Tensor:
    """Pairwise distances divided by their mean over the non-zero entries (distance potential). The
    zeros add nothing to the sum, so the mean is ``sum / count``: no boolean mask (a host sync on a GPU)."""
    d = _pairwise_distance(e)
    return d / (d.sum() / (d > 0).sum())


def _angle_potential(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at vertex i between j and k: <n(e_j - e_i), n(e_k - e_i)>, (B, B, B);
    n() is l2-normalisation, 0 for the zero vector (j == i or k == i) (angle potential)."""
    diff = F.normalize(e[None, :, :] - e[:, None, :], dim=2)
    return torch.bmm(diff, diff.transpose(1, 2))


@register
class RKD(Term):
    """Park et al., "Relational Knowledge Distillation", CVPR 2019.

    On ``embed`` (B, D): ``L = w_d * smoothL1(psi_D(s), psi_D(t)) + w_a * smoothL1(psi_A(s), psi_A(t))``
    with ``psi_D`` the pairwise distances normalised by their mean non-zero value and ``psi_A``
    the cosines of all triplet angles; smooth-L1 (Huber, delta 1) averaged over the B^2 / B^3
    entries. The teacher side carries no gradient.

    Args:
        distance_weight: w_d (25), angle_weight: w_a (50) (paper and RepDistiller).

    Recommended weight: 1 (RepDistiller, CIFAR-100).
    """

    name = "rkd"

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__()
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    def forward(self, student, teacher, batch):
        s, t = upcast(student["embed"].flatten(1), teacher["embed"].detach().flatten(1))
        with torch.autocast(s.device.type, enabled=False):  # the distance expansion cancels in float16
            loss = s.sum() * 0.0
            if self.distance_weight and len(s) > 1:  # one sample has no pairwise distance
                loss = loss + self.distance_weight * F.smooth_l1_loss(
                    _distance_potential(s), _distance_potential(t))
            if self.angle_weight:
                loss = loss + self.angle_weight * F.smooth_l1_loss(_angle_potential(s), _angle_potential(t))
            return loss


# Published recipe (RepDistiller: CE + 1 * RKD); tuned over x0.3 / x1 / x3 of the weight.
publish("rkd", label="RKD", order=7, terms=[ce(), {"name": "rkd", "weight": 1.0}],
        grid=bracket("rkd", "weight", 1.0), tune_priority=14)
