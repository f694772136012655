"""FitNet hint loss."""
from __future__ import annotations

import torch.nn.functional as F

from wdistill.errors import ConfigError
from wdistill.losses._shared.heads import ConvReg
from wdistill.losses._shared.pairing import match_spatial
from wdistill.losses.base import Term
from wdistill.losses.recipes import bracket, ce, publish
from wdistill.losses.registry import register


@register
class FitNet(Term):
    """Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015 (hint-based training).

    ``L = mean((r(f_s) - f_t)^2)`` with ``f = feats[hint_layer]`` and ``r`` the FitNet regressor
    :class:`~wdistill.losses._shared.heads.ConvReg` (conv + BN + ReLU mapping the student map to the
    teacher's shape), trained with the student. A student map smaller than the teacher's (other than
    by exactly half, which the regressor's transposed conv handles) keeps its size: the teacher map
    is average-pooled to it, the rule AT and VID use (not in the paper, which taps matching layers).
    Unlike the paper's two-stage recipe, the reference implementation (RepDistiller) trains the hint
    jointly with CE in one stage; so does this term.

    Args:
        hint_layer: index into ``feats`` (0 = stem); 2 = the second stage, as published.

    Recommended weight: 100 (RepDistiller, CIFAR-100).
    """

    name = "fitnet"
    built_by_setup = ("regressor",)

    def __init__(self, hint_layer: int = 2):
        super().__init__()
        self.hint_layer = hint_layer
        self.regressor = None

    def setup(self, ctx):
        s, t = ctx.student_out["feats"], ctx.teacher_out["feats"]
        n = min(len(s), len(t))
        if not -n <= self.hint_layer < n:
            raise ConfigError(
                f"fitnet hint_layer={self.hint_layer} is out of range: the student has {len(s)} "
                f"and the teacher {len(t)} tapped feature maps, so valid indices are "
                f"{list(range(n))} (0 = stem; negative indices count from the end)")
        f_s, f_t = s[self.hint_layer], t[self.hint_layer]
        try:
            self.regressor = ConvReg(f_s.shape, f_t.shape, mismatch="channels").to(ctx.device)
        except ValueError as e:
            raise ConfigError(f"fitnet hint_layer={self.hint_layer}: {e}") from e

    def forward(self, student, teacher, batch):
        f_s, f_t = match_spatial(self.regressor(student["feats"][self.hint_layer]),
                                 teacher["feats"][self.hint_layer].detach())
        return F.mse_loss(f_s, f_t)


# Published recipe (RepDistiller: CE + 100 * hint loss); tuned over x0.3 / x1 / x3 of the weight.
publish("fitnet", label="FitNet", order=2, terms=[ce(), {"name": "fitnet", "weight": 100.0}],
        grid=bracket("fitnet", "weight", 100.0), tune_priority=9)
