"""Cross-entropy and Hinton knowledge distillation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wdistill.losses.base import Term
from wdistill.losses.recipes import ce, det, publish, publish_detection
from wdistill.losses.registry import register


@register
class CrossEntropy(Term):
    """Cross-entropy of the student's logits with the labels."""

    name = "ce"
    requires_teacher = False
    supervised = True
    ensemble = "mean"  # reads no teacher: one instance, whatever the ensemble

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, student, teacher, batch):
        return F.cross_entropy(student["logits"], batch["target"], label_smoothing=self.label_smoothing)


def kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, T: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch."""
    log_ps = F.log_softmax(s_logits / T, dim=1)
    log_pt = F.log_softmax(t_logits / T, dim=1)
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * T * T


@register
class KD(Term):
    """Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015.

    L = T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), batch mean. Default T=4 (RepDistiller);
    the classic recipe weights it 0.9 beside CE at 0.1.

    Detection: the same loss on the RoI head's class logits (background included) of the
    student's sampled proposals, the teacher's box head run on those proposals; the mean is over
    RoIs. No detection setting is published for KD: the recipe uses T=1 and weight 1 beside the
    detector's losses, as mdistiller's detection DKD does.
    """

    name = "kd"
    tasks = ("classification", "detection")
    ensemble = "mean"  # an ensemble's mean distribution at T (engine.distiller.mean_output)

    def __init__(self, T: float = 4.0):
        super().__init__()
        self.T = T

    def forward(self, student, teacher, batch):
        return kd_loss(student["logits"], teacher["logits"].detach(), self.T)


# Published recipes: the student alone; KD as RepDistiller runs it (run_cifar_distill.sh: CE 0.1 + KD 0.9, T=4).
publish("vanilla", label="vanilla", order=0, terms=[ce()], demo=0, quick=True)
publish("kd", label="KD", order=1, terms=[ce(0.1), {"name": "kd", "weight": 0.9, "T": 4}],
        grid=[{}, {"kd.T": 2}, {"kd.T": 8}], tune_priority=0, demo=1, quick=True)
# Detection (no published setting): KD on the RoI logits at DKD's detection temperature and weight.
publish_detection("kd", label="KD", order=1, terms=[det(), {"name": "kd", "weight": 1.0, "T": 1.0}])
