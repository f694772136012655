"""Factor transfer."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from wdistill.errors import ConfigError
from wdistill.losses._shared.pairing import attention_map, match_spatial
from wdistill.losses.base import Stage, Term
from wdistill.losses.recipes import bracket, ce, publish
from wdistill.losses.registry import register


def _conv_block(c_in: int, c_out: int, bn: bool, transposed: bool = False) -> list[nn.Module]:
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(c_in, c_out, 3, 1, 1)
    return [conv] + ([nn.BatchNorm2d(c_out)] if bn else []) + [nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    """Teacher-side auto-encoder: 3 conv3x3 encoder (C -> C -> kC -> kC), 3 transposed-conv
    decoder (kC -> kC -> C -> C), LeakyReLU(0.1) after each, no BN (reference defaults)."""

    def __init__(self, channels: int, k: float):
        super().__init__()
        mid = max(1, int(channels * k))
        self.encoder = nn.Sequential(*_conv_block(channels, channels, False),
                                     *_conv_block(channels, mid, False), *_conv_block(mid, mid, False))
        self.decoder = nn.Sequential(*_conv_block(mid, mid, False, True),
                                     *_conv_block(mid, channels, False, True),
                                     *_conv_block(channels, channels, False, True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class Translator(nn.Module):
    """Student-side encoder: 3 conv3x3 + BN + LeakyReLU(0.1) (Cs -> Cs -> kCt -> kCt)."""

    def __init__(self, c_s: int, c_t: int, k: float):
        super().__init__()
        mid = max(1, int(c_t * k))
        self.encoder = nn.Sequential(*_conv_block(c_s, c_s, True), *_conv_block(c_s, mid, True),
                                     *_conv_block(mid, mid, True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


@register
class FT(Term):
    """Kim, Park, Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer",
    NeurIPS 2018.

    Stage "ft_paraphraser" (``init_epochs``, student untouched): a paraphraser auto-encoder is
    trained on the teacher's last feature map ``feats[-1]`` with ``mean((P(t) - t)^2)``.
    The paraphraser is built frozen (so a main optimiser made before the stages leaves it out),
    the stage un-freezes it, and ``on_stage_end`` freezes it again and drops its stale
    gradients; in the main stage it runs without gradient. Main stage: the
    teacher factor ``F_t = enc(t)`` and student factor ``F_s = Translator(s)``, each mapped to
    ``l2norm(flatten(mean_c F^p1))``; ``L = mean |F_t' - F_s'|^p2`` (the larger map pooled to the
    smaller). The paper's rate k = 0.5 sets the factor width k * C_t.

    Args:
        k: paraphrase rate (0.5), p1: power in the factor map (2), p2: 1 = L1 (1),
        init_epochs: paraphraser pre-training epochs (30), init_lr: its learning rate (None =
        the run's; RepDistiller used 0.01 for resnet/wrn students).

    Recommended weight: 200 (RepDistiller, CIFAR-100).
    """

    name = "ft"
    built_by_setup = ("paraphraser",)

    def __init__(self, k: float = 0.5, p1: float = 2.0, p2: float = 1.0, init_epochs: int = 30,
                 init_lr: float | None = None):
        super().__init__()
        if init_epochs < 1:
            raise ConfigError(f"ft init_epochs={init_epochs}: the paraphraser must be pre-trained "
                              "for at least 1 epoch (published: 30)")
        if not 0 < k:
            raise ConfigError(f"ft paraphrase rate k={k} must be > 0 (published: 0.5)")
        self.k, self.p1, self.p2, self.init_epochs, self.init_lr = k, p1, p2, init_epochs, init_lr
        self.paraphraser = self.translator = None

    def setup(self, ctx):
        c_s = ctx.student_out["feats"][-1].shape[1]
        c_t = ctx.teacher_out["feats"][-1].shape[1]
        self.paraphraser = Paraphraser(c_t, self.k).to(ctx.device).requires_grad_(False)
        self.translator = Translator(c_s, c_t, self.k).to(ctx.device)

    def paraphraser_parameters(self) -> list[nn.Parameter]:
        """The pre-training stage's parameters (un-frozen for it)."""
        self.check_ready()
        return list(self.paraphraser.requires_grad_(True).parameters())

    def reconstruction_loss(self, student: dict, teacher: dict, batch: dict | None = None):
        """MSE reconstruction of the teacher's last feature map (the stage's loss)."""
        self.check_ready()
        self.paraphraser.requires_grad_(True)  # the stage is running: the paraphraser learns
        t = teacher["feats"][-1].detach()
        return F.mse_loss(self.paraphraser(t), t)

    def stages(self):
        return [Stage(name="ft_paraphraser", epochs=self.init_epochs, loss=self.reconstruction_loss,
                      parameters=self.paraphraser_parameters, train_student=False, lr=self.init_lr)]

    def on_stage_end(self, stage):
        # Pre-training is over: freeze, and drop the stage's last gradients so no optimiser
        # moves the paraphraser with them.
        for p in self.paraphraser.parameters():
            p.requires_grad_(False)
            p.grad = None

    def forward(self, student, teacher, batch):
        with torch.no_grad():
            f_t = self.paraphraser.encoder(teacher["feats"][-1].detach())
        f_s = self.translator(student["feats"][-1])
        f_s, f_t = match_spatial(f_s, f_t)
        # The factor map l2norm(flatten(mean_c F^p1)) is AT's attention map.
        return (attention_map(f_s, self.p1) - attention_map(f_t, self.p1)).abs().pow(self.p2).mean()


# Published recipe (RepDistiller): paraphraser pre-trained 30 epochs (at lr 0.01 for resnet students,
# pretrain.py), then CE + 200 * FT.
publish("ft", label="FT", order=10, terms=[ce(), {"name": "ft", "weight": 200.0, "init_epochs": 30, "init_lr": 0.01}],
        grid=bracket("ft", "weight", 200.0), tune_priority=17)
