"""Correlation congruence."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from wdistill.errors import ConfigError
from wdistill.losses.base import Term
from wdistill.losses.recipes import bracket, ce, publish
from wdistill.losses.registry import register

FORMS = ("reference", "paper")


@register
class CC(Term):
    """Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019.

    Both ``embed`` vectors go through their own learned Linear to ``feat_dim`` (RepDistiller's
    ``LinearEmbed``: no normalisation), giving e_s, e_t (B, feat_dim).

    ``form="reference"`` (default; the code RepDistiller's results used): with
    ``d = |e_s - e_t|``, ``L = mean_{i<B-1} sum_k d_{i,k} d_{i+1,k}`` (consecutive pairs of the
    batch; a batch of one sample gives 0).

    ``form="paper"`` (the paper's kernel form): embeddings are l2-normalised, the correlation
    matrix uses the P-th order Taylor expansion of the Gaussian RBF kernel
    ``k(x, y) = exp(-gamma ||x - y||^2) ~ sum_{p=0}^{P} exp(-2 gamma) (2 gamma)^p / p! (x.y)^p``,
    and ``L = ||K_t - K_s||_F^2 / B^2``.

    Args:
        feat_dim: embedding width (128).
        form: "reference" or "paper".
        gamma, order: kernel width and Taylor order P of the paper form (0.4, 2).

    Recommended weight: 0.02 (RepDistiller, CIFAR-100, reference form).
    """

    name = "cc"
    built_by_setup = ("embed_s",)

    def __init__(self, feat_dim: int = 128, form: str = "reference", gamma: float = 0.4,
                 order: int = 2):
        super().__init__()
        if form not in FORMS:
            raise ConfigError(f"cc form={form!r} is unknown; use one of {FORMS}")
        if order < 0:
            raise ConfigError(f"cc order={order} must be >= 0 (the paper uses 2)")
        self.feat_dim, self.form, self.gamma, self.order = feat_dim, form, gamma, order
        self.embed_s = self.embed_t = None

    def setup(self, ctx):
        self.embed_s = nn.Linear(ctx.student_out["embed"].flatten(1).shape[1], self.feat_dim).to(ctx.device)
        self.embed_t = nn.Linear(ctx.teacher_out["embed"].flatten(1).shape[1], self.feat_dim).to(ctx.device)

    def _rbf_taylor(self, e: torch.Tensor) -> torch.Tensor:
        g = e @ e.t()
        coef = [math.exp(-2 * self.gamma) * (2 * self.gamma) ** p / math.factorial(p)
                for p in range(self.order + 1)]
        return sum(c * g.pow(p) for p, c in enumerate(coef))

    def forward(self, student, teacher, batch):
        e_s = self.embed_s(student["embed"].flatten(1))
        e_t = self.embed_t(teacher["embed"].detach().flatten(1))
        if self.form == "paper":
            k_s = self._rbf_taylor(F.normalize(e_s, dim=1))
            k_t = self._rbf_taylor(F.normalize(e_t, dim=1))
            return (k_t - k_s).pow(2).sum() / e_s.shape[0] ** 2
        if e_s.shape[0] < 2:
            return e_s.sum() * 0.0
        d = (e_s - e_t).abs()
        return (d[:-1] * d[1:]).sum(1).mean()


# Published recipe (RepDistiller: CE + 0.02 * CC); tuned over x0.3 / x1 / x3 of the weight.
publish("cc", label="CC", order=5, terms=[ce(), {"name": "cc", "weight": 0.02}],
        grid=bracket("cc", "weight", 0.02), tune_priority=12)
