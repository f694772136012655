"""Similarity-preserving knowledge distillation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wdistill.losses._shared.pairing import upcast
from wdistill.losses.base import Term
from wdistill.losses.recipes import bracket, ce, publish
from wdistill.losses.registry import register


@register
class SP(Term):
    """Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.

    On the last feature map ``feats[-1]`` flattened to (B, D): ``G = f f^T`` (B x B) with each row
    l2-normalised, ``L = ||G_t - G_s||_F^2 / B^2``. Student and teacher widths may differ.

    Recommended weight: 3000 (RepDistiller, CIFAR-100).
    """

    name = "sp"

    def forward(self, student, teacher, batch):
        f_s, f_t = upcast(student["feats"][-1].flatten(1), teacher["feats"][-1].detach().flatten(1))
        with torch.autocast(f_s.device.type, enabled=False):  # f f^T overflows float16
            g_s = F.normalize(f_s @ f_s.t(), dim=1)
            g_t = F.normalize(f_t @ f_t.t(), dim=1)
            return (g_t - g_s).pow(2).sum() / f_s.shape[0] ** 2


# Published recipe (RepDistiller: CE + 3000 * SP); tuned over x0.3 / x1 / x3 of the weight.
publish("sp", label="SP", order=4, terms=[ce(), {"name": "sp", "weight": 3000.0}],
        grid=bracket("sp", "weight", 3000.0), tune_priority=11)
