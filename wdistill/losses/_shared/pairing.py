"""Helpers shared by several loss terms: layer pairing, spatial matching, attention maps, upcasting."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wdistill.errors import ConfigError


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
    """a(f) = l2-normalise(flatten(mean_c f^p)), shape (B, H*W): AT's attention map, FT's factor map."""
    return F.normalize(f.pow(p).mean(1).flatten(1), dim=1)
