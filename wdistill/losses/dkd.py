"""Decoupled knowledge distillation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wdistill.errors import ConfigError
from wdistill.losses.base import Term
from wdistill.losses.recipes import ce, det, publish, publish_detection
from wdistill.losses.registry import register


def dkd_parts(s_logits: torch.Tensor, t_logits: torch.Tensor, target: torch.Tensor,
              T: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each ``T^2 * KL(teacher || student)`` summed over classes, batch-mean.

    Everything is in log space: the binary log-probabilities are
    ``log_softmax([z_target, logsumexp(z_non-target)] / T)`` and the non-target ones are
    ``log_softmax`` over the C-1 non-target logits, so no probability is ever logged.
    """
    b, c = s_logits.shape
    # the C-1 non-target classes of each row in ascending order: j, or j + 1 from the target on (a gather,
    # where a boolean mask would make the GPU wait for the host)
    j = torch.arange(c - 1, device=target.device)
    others = j[None, :] + (j[None, :] >= target[:, None])

    def split(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = z / T
        z_gt = z.gather(1, target[:, None])
        z_other = z.gather(1, others)
        binary = torch.cat([z_gt, torch.logsumexp(z_other, dim=1, keepdim=True)], dim=1)
        return F.log_softmax(binary, dim=1), F.log_softmax(z_other, dim=1)

    s_bin, s_other = split(s_logits)
    t_bin, t_other = split(t_logits)
    tckd = F.kl_div(s_bin, t_bin, reduction="sum", log_target=True) * T * T / b
    nckd = F.kl_div(s_other, t_other, reduction="sum", log_target=True) * T * T / b
    return tckd, nckd


@register
class DKD(Term):
    """Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.

    With ``p = softmax(z / T)``: TCKD = KL of the binary distributions [p_target, 1 - p_target],
    NCKD = KL of the non-target distributions renormalised over the C-1 other classes, both
    times T^2 and batch-averaged;
    ``L = min((epoch + 1) / warmup, 1) * (alpha * TCKD + beta * NCKD)``.
    mdistiller counts epochs from 1 and uses ``min(epoch / warmup, 1)``; our ``batch['epoch']``
    counts from 0, hence the ``+ 1`` (the first epoch is weighted 1/warmup in both).
    CE is a separate term (weight 1 in the DKD recipe).

    Args:
        alpha: TCKD weight (1), beta: NCKD weight (8; 2 for res56->res20 and res110->res32,
        6 for vgg13->vgg8, vgg13->MobileNetV2, wrn40_2->wrn16_2, wrn40_2->wrn40_1),
        T: temperature (4), warmup: warm-up epochs (20; 0 = none).

    Recommended weight: 1.

    Detection (mdistiller's detection/ code, detectron2): DKD on the RoI head's class logits of the
    student's sampled proposals, background included, the teacher's box pooler, head and predictor
    run on the same proposals; alpha 1, beta 0.25, T 1, no warm-up, weight 1 beside the detector's
    losses (``publish_detection("dkd")``).
    """

    name = "dkd"
    tasks = ("classification", "detection")
    ensemble = "mean"  # an ensemble's mean distribution at T (engine.distiller.mean_output)

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, T: float = 4.0, warmup: int = 20):
        super().__init__()
        if T <= 0:
            raise ConfigError(f"dkd T={T} must be > 0 (published: 4)")
        if warmup < 0:
            raise ConfigError(f"dkd warmup={warmup} must be >= 0 epochs (published: 20)")
        self.alpha, self.beta, self.T, self.warmup = alpha, beta, T, warmup

    def warmup_factor(self, epoch: int) -> float:
        return 1.0 if self.warmup == 0 else min((epoch + 1) / self.warmup, 1.0)

    def forward(self, student, teacher, batch):
        s_logits = student["logits"]
        if s_logits.shape[1] < 2:
            raise ConfigError("dkd needs at least 2 classes (it splits target from non-target)")
        tckd, nckd = dkd_parts(s_logits, teacher["logits"].detach(), batch["target"], self.T)
        w = self.warmup_factor(int(batch["epoch"]))
        self.record_parts(lambda: {"tckd": w * self.alpha * tckd, "nckd": w * self.beta * nckd})
        return w * (self.alpha * tckd + self.beta * nckd)


# Published recipe (mdistiller): CE + DKD, alpha 1, beta 8, T 4, 20-epoch warm-up; the candidates try
# beta 2 (mdistiller's value for small-gap pairs) at T 4 and T 2.
publish("dkd", label="DKD", order=15, terms=[ce(), {"name": "dkd", "weight": 1.0, "alpha": 1.0, "beta": 8.0, "T": 4,
                                                    "warmup": 20}],
        grid=[{}, {"dkd.beta": 2.0}, {"dkd.beta": 2.0, "dkd.T": 2}], tune_priority=4, demo=2)
# Published per pair (mdistiller configs/cifar100/dkd/*.yaml): the NCKD weight beta; 8 elsewhere.
PAIR_BETA = {("resnet56", "resnet20"): 2, ("resnet110", "resnet32"): 2, ("vgg13", "vgg8"): 6,
             ("vgg13", "MobileNetV2"): 6, ("wrn_40_2", "wrn_16_2"): 6, ("wrn_40_2", "wrn_40_1"): 6,
             ("resnet32x4", "resnet8x4"): 8, ("resnet32x4", "ShuffleV1"): 8, ("resnet32x4", "ShuffleV2"): 8,
             ("ResNet50", "MobileNetV2"): 8, ("wrn_40_2", "ShuffleV1"): 8}
# Detection (mdistiller detection/model/config.py: KD.DKD ALPHA 1, BETA 0.25, T 1; the loss is added to the
# detector's losses with weight 1 and no warm-up).
publish_detection("dkd", label="DKD", order=2, terms=[det(), {"name": "dkd", "weight": 1.0, "alpha": 1.0,
                                                              "beta": 0.25, "T": 1.0, "warmup": 0}])
