"""Flow of solution procedure (FSP) matrices."""
from __future__ import annotations

import torch

from wdistill.errors import ConfigError
from wdistill.losses._shared.pairing import match_spatial, upcast
from wdistill.losses.base import Stage, Term
from wdistill.losses.recipes import ce, publish
from wdistill.losses.registry import register


def fsp_matrix(bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """G[b, c_top, c_bot] = mean_hw top[b, c_top] * bottom[b, c_bot] (the FSP matrix), the larger map
    average-pooled to the smaller first."""
    bottom, top = match_spatial(bottom, top)
    return torch.bmm(top.flatten(2), bottom.flatten(2).transpose(1, 2)) / bottom[0, 0].numel()


@register
class FSP(Term):
    """Yim et al., "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization
    and Transfer Learning", CVPR 2017.

    For every consecutive pair of ``feats`` (stem, stage1, ..., stageN), the FSP matrix
    ``G = mean_hw top * bottom^T`` (C_top x C_bot); ``L = sum_pairs mean((G_s - G_t)^2)``
    (uniform pair weights and mean instead of sum, as RepDistiller). G_s and G_t must have the
    same size, so student and teacher need equal channel counts at every tapped map.

    Two stages, as published: an init stage of ``init_epochs`` minimising L over the student
    (Stage "fsp_init"), then the main stage is CE only: ``forward`` returns ``main_weight * L``
    with ``main_weight=0`` by default (a zero tensor).

    Args:
        init_epochs: length of the init stage (30), main_weight: (0.0),
        init_lr: learning rate of the init stage (None = the run's).

    Recommended weight: 50 (RepDistiller's script; it only scales the main stage, which adds nothing
    unless main_weight > 0; the init stage is never weighted).
    """

    name = "fsp"

    def __init__(self, init_epochs: int = 30, main_weight: float = 0.0, init_lr: float | None = None):
        super().__init__()
        if init_epochs < 0:
            raise ConfigError(f"fsp init_epochs={init_epochs} must be >= 0 (published: 30)")
        if init_epochs == 0 and main_weight == 0:
            raise ConfigError("fsp with init_epochs=0 and main_weight=0 does nothing: keep the init "
                              "stage (init_epochs=30, published) or set main_weight > 0")
        self.init_epochs, self.main_weight, self.init_lr = init_epochs, main_weight, init_lr

    def setup(self, ctx):
        self._check(ctx.student_out["feats"], ctx.teacher_out["feats"])

    def _check(self, s: list, t: list) -> None:
        if len(s) != len(t) or len(s) < 2:
            raise ConfigError(
                f"fsp pairs consecutive feature maps of both models: the student has {len(s)} and "
                f"the teacher {len(t)} tapped maps; both need the same number, at least 2")
        bad = [i for i, (a, b) in enumerate(zip(s, t)) if a.shape[1] != b.shape[1]]
        if bad:
            pairs = sorted({(j, j + 1) for i in bad for j in (i - 1, i) if 0 <= j < len(s) - 1})
            widths = ", ".join(f"feats[{i}] {s[i].shape[1]} vs {t[i].shape[1]}" for i in bad)
            raise ConfigError(
                f"fsp needs equal student/teacher channel counts at every feature map, but they "
                f"differ at {widths} (student vs teacher), so the FSP matrices of stage pairs "
                f"{pairs} cannot be compared. Pairs with the same stage widths work (e.g. "
                "resnet56 -> resnet20, resnet110 -> resnet32, resnet20 -> resnet8); for this pair "
                "use at or fitnet, which do not need equal widths")

    def fsp_loss(self, student: dict, teacher: dict, batch: dict | None = None) -> torch.Tensor:
        """The FSP loss itself (the init stage minimises this)."""
        s, t = upcast(*student["feats"]), upcast(*[f.detach() for f in teacher["feats"]])
        self._check(s, t)
        loss = 0.0
        with torch.autocast(s[0].device.type, enabled=False):  # sums over H*W overflow float16
            for i in range(len(s) - 1):
                loss = loss + (fsp_matrix(s[i], s[i + 1]) - fsp_matrix(t[i], t[i + 1])).pow(2).mean()
        return loss

    def stages(self):
        if self.init_epochs == 0:
            return []
        return [Stage(name="fsp_init", epochs=self.init_epochs, loss=self.fsp_loss,
                      parameters=lambda: [], train_student=True, lr=self.init_lr)]

    def forward(self, student, teacher, batch):
        if self.main_weight == 0:
            return student["logits"].new_zeros(())
        return self.main_weight * self.fsp_loss(student, teacher, batch)


# Published recipe (RepDistiller): a 30-epoch init stage on the FSP loss, then CE only (main_weight 0);
# the other candidates keep it on at x0.1 and x1 of weight 50.
publish("fsp", label="FSP", order=11, terms=[ce(), {"name": "fsp", "weight": 50.0, "init_epochs": 30,
                                                    "main_weight": 0.0}],
        grid=[{}, {"fsp.main_weight": 0.1}, {"fsp.main_weight": 1.0}], tune_priority=19)
