"""Variational information distillation."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from wdistill.errors import ConfigError
from wdistill.losses._shared.pairing import match_spatial, paired_maps
from wdistill.losses.base import Term
from wdistill.losses.recipes import bracket, ce, publish
from wdistill.losses.registry import register


def _conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, bias=False)


@register
class VID(Term):
    """Ahn et al., "Variational Information Distillation for Knowledge Transfer", CVPR 2019
    (Gaussian variational distribution with a learned per-channel variance).

    Per layer of ``feats[1:]`` (the larger map pooled to the smaller): the mean
    ``mu = conv1x1(Cs->Ct) - ReLU - conv1x1(Ct->Ct) - ReLU - conv1x1(Ct->Ct)`` of the student map,
    a per-channel variance ``var_c = softplus(log_scale_c) + eps`` with ``log_scale`` a learned
    parameter initialised to ``softplus^{-1}(init_pred_var - eps)`` so that the variance starts at
    ``init_pred_var``; ``L = sum_layers mean(0.5 * ((mu - t)^2 / var + log var))`` (the Gaussian
    negative log-likelihood without its constant).

    Args:
        init_pred_var: initial variance (5.0), eps: variance floor (1e-5) (reference values).

    Recommended weight: 1 (RepDistiller, CIFAR-100).
    """

    name = "vid"
    built_by_setup = ("regressors",)

    def __init__(self, init_pred_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        if init_pred_var <= eps:
            raise ConfigError(f"vid init_pred_var={init_pred_var} must exceed eps={eps}")
        self.init_pred_var, self.eps = init_pred_var, eps
        self.regressors = self.log_scales = None

    def setup(self, ctx):
        pairs = paired_maps(self.name, ctx.student_out, ctx.teacher_out)
        # softplus^{-1}(v) = log(exp(v) - 1); expm1 keeps it exact for small v
        init = math.log(math.expm1(self.init_pred_var - self.eps))
        regs, scales = [], []
        for f_s, f_t in pairs:
            c_s, c_t = f_s.shape[1], f_t.shape[1]
            regs.append(nn.Sequential(_conv1x1(c_s, c_t), nn.ReLU(inplace=True), _conv1x1(c_t, c_t),
                                      nn.ReLU(inplace=True), _conv1x1(c_t, c_t)))
            scales.append(nn.Parameter(torch.full((c_t,), init)))
        self.regressors = nn.ModuleList(regs).to(ctx.device)
        self.log_scales = nn.ParameterList(scales).to(ctx.device)

    def forward(self, student, teacher, batch):
        pairs = paired_maps(self.name, student, teacher)
        loss = 0.0
        for (f_s, f_t), reg, log_scale in zip(pairs, self.regressors, self.log_scales):
            f_s, f_t = match_spatial(f_s, f_t)
            var = F.softplus(log_scale) + self.eps
            # Every channel has B*H*W positions, so mean(0.5 ((mu - t)^2 / var_c + log var_c)) equals
            # this per-channel form, which divides C numbers instead of a whole map (2x faster step part).
            sq_err = (reg(f_s) - f_t).pow(2).mean((0, 2, 3))
            loss = loss + 0.5 * (sq_err / var + var.log()).mean()
        return loss


# Published recipe (RepDistiller: CE + 1 * VID); tuned over x0.3 / x1 / x3 of the weight.
publish("vid", label="VID", order=6, terms=[ce(), {"name": "vid", "weight": 1.0}],
        grid=bracket("vid", "weight", 1.0), tune_priority=13)
