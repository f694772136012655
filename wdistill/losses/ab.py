"""Activation-boundary distillation."""
from __future__ import annotations

import torch
import torch.nn as nn

from wdistill.errors import ConfigError
from wdistill.losses._shared.heads import ConvReg
from wdistill.losses._shared.pairing import match_spatial, paired_maps
from wdistill.losses.base import Stage, Term
from wdistill.losses.recipes import ce, publish
from wdistill.losses.registry import register


def ab_layer_loss(s: torch.Tensor, t: torch.Tensor, margin: float) -> torch.Tensor:
    """The paper's alternative (hinge-squared) loss, summed over all elements."""
    on = (t > 0).to(s.dtype)
    return ((s + margin).pow(2) * ((s > -margin).to(s.dtype) * (1 - on))
            + (s - margin).pow(2) * ((s <= margin).to(s.dtype) * on)).sum()


@register
class AB(Term):
    """Heo et al., "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden
    Neurons", AAAI 2019 (the alternative loss with margin m).

    On the pre-activations ``preact_feats[1:]`` (n layers), the student's map goes through a
    connector (identity when channels and height match, else ConvReg without ReLU; a smaller student
    map than the reference rules cover keeps its size and the teacher's is pooled to it); per element
    ``l = (s + m)^2 [s > -m and t <= 0] + (s - m)^2 [s <= m and t > 0]``, and
    ``L = sum_i 2^(i-n+1) * sum(l_i) / B * 3/1000`` (RepDistiller's layer weights and scale).

    Two stages, as published: an init stage of ``init_epochs`` minimising L over the student and
    the connectors (Stage "ab_init"), then the main stage is CE only: ``forward`` returns
    ``main_weight * L`` with ``main_weight=0`` by default (a zero tensor, L not computed). Set
    ``main_weight`` > 0 to keep AB during the main stage.

    Args:
        margin: m (1.0), init_epochs: length of the init stage (30), main_weight: (0.0),
        init_lr: learning rate of the init stage (None = the run's).

    Recommended weight: 1 (RepDistiller's script; it only scales the main stage, which adds nothing
    unless main_weight > 0; the init stage is never weighted).
    """

    name = "ab"
    built_by_setup = ("connectors",)

    def __init__(self, margin: float = 1.0, init_epochs: int = 30, main_weight: float = 0.0,
                 init_lr: float | None = None):
        super().__init__()
        if init_epochs < 0:
            raise ConfigError(f"ab init_epochs={init_epochs} must be >= 0 (published: 30)")
        if init_epochs == 0 and main_weight == 0:
            raise ConfigError("ab with init_epochs=0 and main_weight=0 does nothing: keep the init "
                              "stage (init_epochs=30, published) or set main_weight > 0")
        self.margin, self.init_epochs, self.main_weight, self.init_lr = (
            margin, init_epochs, main_weight, init_lr)
        self.connectors = None

    def setup(self, ctx):
        pairs = paired_maps(self.name, ctx.student_out, ctx.teacher_out, key="preact_feats")
        connectors = []
        for i, (f_s, f_t) in enumerate(pairs, 1):
            if f_s.shape[1:3] == f_t.shape[1:3]:
                connectors.append(nn.Identity())
                continue
            try:
                connectors.append(ConvReg(f_s.shape, f_t.shape, use_relu=False, mismatch="channels"))
            except ValueError as e:
                raise ConfigError(f"ab preact_feats[{i}]: {e}") from e
        self.connectors = nn.ModuleList(connectors).to(ctx.device)

    def ab_loss(self, student: dict, teacher: dict, batch: dict | None = None) -> torch.Tensor:
        """The AB loss itself (the init stage minimises this)."""
        self.check_ready()  # the init stage calls this directly
        pairs = paired_maps(self.name, student, teacher, key="preact_feats")
        n, b = len(pairs), pairs[0][0].shape[0]
        loss = 0.0
        for i, ((f_s, f_t), conn) in enumerate(zip(pairs, self.connectors)):
            loss = loss + 2.0 ** (i - n + 1) * ab_layer_loss(*match_spatial(conn(f_s), f_t), self.margin)
        return loss / b * 3 / 1000

    def stages(self):
        if self.init_epochs == 0:
            return []
        return [Stage(name="ab_init", epochs=self.init_epochs, loss=self.ab_loss,
                      parameters=lambda: list(self.connectors.parameters()),
                      train_student=True, lr=self.init_lr)]

    def forward(self, student, teacher, batch):
        if self.main_weight == 0:
            return student["logits"].new_zeros(())
        return self.main_weight * self.ab_loss(student, teacher, batch)


# Published recipe (RepDistiller): a 30-epoch init stage on the AB loss, then CE only (main_weight 0);
# the other candidates keep the loss on in the main stage.
publish("ab", label="AB", order=9, terms=[ce(), {"name": "ab", "weight": 1.0, "init_epochs": 30, "main_weight": 0.0}],
        grid=[{}, {"ab.main_weight": 1.0}, {"ab.main_weight": 3.0}], tune_priority=18)
