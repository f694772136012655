"""Attention transfer, plus the layer-pairing helpers shared by the feature-map baselines."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ConfigError, Term
from .published import bracket, ce, publish
from .registry import register


def upcast(*xs: torch.Tensor) -> list[torch.Tensor]:
    """Half-precision tensors cast to float32, others unchanged. Used with autocast disabled where
    a matmul would overflow (Gram matrices of long vectors) or cancel (distance expansions)."""
    return [x.float() if x.dtype in (torch.float16, torch.bfloat16) else x for x in xs]


def match_spatial(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two (B, C, H, W) maps to the other's H x W (RepDistiller rule)."""
    s_hw, t_hw = tuple(f_s.shape[2:]), tuple(f_t.shape[2:])
    if s_hw == t_hw:
        return f_s, f_t
    if s_hw[0] * s_hw[1] > t_hw[0] * t_hw[1]:
        return F.adaptive_avg_pool2d(f_s, t_hw), f_t
    return f_s, F.adaptive_avg_pool2d(f_t, s_hw)


def paired_maps(method: str, student: dict, teacher: dict, key: str = "feats",
                start: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(student, detached teacher) pairs of ``key[start:]``; a depth mismatch is a ConfigError."""
    s, t = student[key], teacher[key]
    if len(s) != len(t):
        raise ConfigError(
            f"{method} pairs student and teacher '{key}' layer by layer, but the student has "
            f"{len(s)} and the teacher {len(t)}: tap the same number of stages in both models "
            "(or use a method on the last layer only, e.g. sp, rkd, pkt, crd)")
    if len(s) <= start:
        raise ConfigError(f"{method} uses '{key}'[{start}:], but the models have only {len(s)} "
                          "tapped feature maps: tap the stem and at least one stage")
    for i, (a, b) in enumerate(zip(s[start:], t[start:]), start):
        if a.dim() != 4 or b.dim() != 4:
            raise ConfigError(f"{method} needs (B, C, H, W) feature maps; '{key}'[{i}] has shapes "
                              f"{tuple(a.shape)} (student) and {tuple(b.shape)} (teacher)")
    return [(a, b.detach()) for a, b in zip(s[start:], t[start:])]


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    """a(f) = l2-normalise(flatten(mean_c f^p)), shape (B, H*W)."""
    return F.normalize(f.pow(p).mean(1).flatten(1), dim=1)


@register
class AT(Term):
    """Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017. As in the
    reference code, the squared difference is averaged (the paper sums p-norms; its beta/2 is the
    weight).

    Per layer of ``feats[1:]`` (the larger map average-pooled to the smaller):
    ``a(f) = l2norm(flatten(mean_c f^p))`` and ``L = sum_layers mean_{b,hw} (a_s - a_t)^2``.
    RepDistiller uses ``feat[1:-1]`` because its last feature is the pooled vector; our ``feats``
    holds no pooled vector, so ``feats[1:]`` is the same set of layers.

    Args:
        p: power of the activation in the attention map (2, published).

    Recommended weight: 1000 (RepDistiller, CIFAR-100).
    """

    name = "at"

    def __init__(self, p: float = 2.0):
        super().__init__()
        self.p = p

    def forward(self, student, teacher, batch):
        loss = 0.0
        for f_s, f_t in paired_maps(self.name, student, teacher):
            f_s, f_t = match_spatial(f_s, f_t)
            loss = loss + (attention_map(f_s, self.p) - attention_map(f_t, self.p)).pow(2).mean()
        return loss


# Published recipe (RepDistiller: CE + 1000 * AT); tuned over x0.3 / x1 / x3 of the weight.
publish("at", label="AT", order=3, terms=[ce(), {"name": "at", "weight": 1000.0}],
        grid=bracket("at", "weight", 1000.0), tune_priority=10)
