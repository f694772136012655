"""The detector's own training losses: what cross-entropy is to a classifier."""
from __future__ import annotations

import torch

from wdistill.errors import ConfigError
from wdistill.losses.base import Term
from wdistill.losses.recipes import det, publish_detection
from wdistill.losses.registry import register

PARTS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")


@register
class DetectorLoss(Term):
    """The detector's own losses (torchvision's Faster R-CNN: RPN objectness and box regression, RoI
    classification and box regression), summed with weight 1 each as torchvision and detectron2 do.

    The detection task's counterpart of ``ce``: every detection recipe has it, the distillation
    terms come beside it. ``rpn``/``roi`` scale the two stages' losses (1: the published recipes).
    """

    name = "det"
    requires_teacher = False
    supervised = True
    tasks = ("detection",)
    ensemble = "mean"  # reads no teacher: one instance, whatever the ensemble

    def __init__(self, rpn: float = 1.0, roi: float = 1.0):
        super().__init__()
        if rpn < 0 or roi < 0:
            raise ConfigError(f"det rpn={rpn} and roi={roi} must be >= 0")
        self.rpn, self.roi = rpn, roi

    def forward(self, student, teacher, batch) -> torch.Tensor:
        losses = student["losses"]
        missing = [k for k in PARTS if k not in losses]
        if missing:
            raise ConfigError(f"det needs the detector's losses {list(PARTS)}; the step gave {sorted(losses)}")
        self.record_parts(lambda: {"rpn objectness": self.rpn * losses["loss_objectness"],
                                   "rpn box": self.rpn * losses["loss_rpn_box_reg"],
                                   "roi class": self.roi * losses["loss_classifier"],
                                   "roi box": self.roi * losses["loss_box_reg"]})
        return (self.rpn * (losses["loss_objectness"] + losses["loss_rpn_box_reg"])
                + self.roi * (losses["loss_classifier"] + losses["loss_box_reg"]))


publish_detection("vanilla", label="vanilla", order=0, terms=[det()])
