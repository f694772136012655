"""FitNet hint loss."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from wdistill.errors import ConfigError
from wdistill.losses._shared.heads import ConvReg
from wdistill.losses._shared.pairing import match_spatial
from wdistill.losses.base import Term
from wdistill.losses.recipes import bracket, ce, det, publish, publish_detection
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
        hint_layers: several indices, each with its own regressor, their losses summed (None:
            ``[hint_layer]``; in detection every FPN level).
        relu: ReLU after the regressor's BatchNorm (None: yes in classification, as RepDistiller's
            ConvReg, whose targets are post-ReLU maps; no in detection, whose FPN maps are signed).

    Recommended weight: 100 (RepDistiller, CIFAR-100).

    Detection: ``feats`` are the FPN maps the RoI pooler reads (finest first); the hint is every
    student level (``hint_layers`` picks some), each paired with the teacher level of the same
    size (the same index when both detectors have the same strides), a 1x1 conv + BatchNorm
    regressor per level (no ReLU), the per-level mean squared errors summed. No detection setting
    of FitNet is published with mdistiller's detection code.
    """

    name = "fitnet"
    tasks = ("classification", "detection")
    built_by_setup = ("regressor",)

    def __init__(self, hint_layer: int = 2, hint_layers: list[int] | None = None, relu: bool | None = None):
        super().__init__()
        if hint_layers is not None and not hint_layers:
            raise ConfigError("fitnet hint_layers must name at least one layer (or be null)")
        self.hint_layer, self.hint_layers, self.relu = hint_layer, hint_layers, relu
        self.regressor = None
        self.pairs: list[tuple[int, int]] = []  # (student index, teacher index) of each hint

    def setup(self, ctx):
        s, t = ctx.student_out["feats"], ctx.teacher_out["feats"]
        n = min(len(s), len(t))
        detection = getattr(ctx, "task", "classification") == "detection"
        layers = self.hint_layers if self.hint_layers is not None else list(range(len(s))) if detection \
            else [self.hint_layer]
        for layer in layers:
            if not -n <= layer < n:
                raise ConfigError(
                    f"fitnet hint_layer={layer} is out of range: the student has {len(s)} "
                    f"and the teacher {len(t)} tapped feature maps, so valid indices are "
                    f"{list(range(n))} (0 = stem, or the finest FPN level; negative indices count from the end)")
        pairs = [(i, _same_size(s, t, i) if detection else i) for i in layers]
        relu = self.relu if self.relu is not None else not detection
        try:
            regs = [ConvReg(s[i].shape, t[j].shape, use_relu=relu, mismatch="channels").to(ctx.device)
                    for i, j in pairs]
        except ValueError as e:
            raise ConfigError(f"fitnet hint layers {layers}: {e}") from e
        self.pairs = pairs
        # One layer keeps the published module layout (regressor.conv...); several are a ModuleList.
        self.regressor = regs[0] if len(regs) == 1 and self.hint_layers is None else nn.ModuleList(regs)

    def forward(self, student, teacher, batch):
        regs = self.regressor if isinstance(self.regressor, nn.ModuleList) else [self.regressor]
        loss = 0.0
        for (i, j), reg in zip(self.pairs, regs):
            f_s, f_t = match_spatial(reg(student["feats"][i]), teacher["feats"][j].detach())
            loss = loss + F.mse_loss(f_s, f_t)
        return loss


def _same_size(s: list, t: list, i: int) -> int:
    """The teacher level whose map has the size of student level ``i`` (the same index first)."""
    size = tuple(s[i].shape[-2:])
    order = [i % len(t)] + [j for j in range(len(t)) if j != i % len(t)]
    found = [j for j in order if tuple(t[j].shape[-2:]) == size]
    if not found:
        sizes = [tuple(x.shape[-2:]) for x in t]
        raise ConfigError(f"fitnet: the student's FPN level {i} is {size[0]}x{size[1]} and no teacher level has that "
                          f"size ({sizes}): choose hint_layers whose strides the teacher has")
    return found[0]


# Published recipe (RepDistiller: CE + 100 * hint loss); tuned over x0.3 / x1 / x3 of the weight.
publish("fitnet", label="FitNet", order=2, terms=[ce(), {"name": "fitnet", "weight": 100.0}],
        grid=bracket("fitnet", "weight", 100.0), tune_priority=9)
# Detection (no published setting): every FPN level, the MSE per level summed, weight 1 beside the detector's losses.
publish_detection("fitnet", label="FitNet", order=3, terms=[det(), {"name": "fitnet", "weight": 1.0}])
