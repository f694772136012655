"""A detector's box-head features by class: of the ground-truth boxes and of background proposals,
for statistics over a training set (WKD-L's category cost for detectors, ``wdistill.losses.wkd``)."""
from __future__ import annotations

import torch
import torch.nn as nn

from wdistill.errors import ConfigError
from wdistill.models.detection import as_feature_dict


def _background(proposals: torch.Tensor, gt: torch.Tensor, count: int, iou_below: float) -> torch.Tensor:
    """``count`` of ``proposals`` (in the RPN's objectness order) whose IoU with every box of ``gt``
    is below ``iou_below``, evenly spaced over that order (both the near misses and the easy ones)."""
    from torchvision.ops import box_iou
    if len(gt):
        proposals = proposals[box_iou(proposals, gt).max(dim=1).values < iou_below]
    if not len(proposals) or count <= 0:
        return proposals[:0]
    pick = torch.linspace(0, len(proposals) - 1, min(count, len(proposals)), device=proposals.device)
    return proposals[pick.round().long().unique()]


@torch.no_grad()
def class_box_features(model: nn.Module, images: list[torch.Tensor], targets: list[dict], mode: str = "features",
                       iou_below: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(rows (N, D), labels (N,), boxes per image): ``model``'s box-head output on the ground-truth
    boxes of one batch, and on as many background proposals, for statistics by class (WKD-L's
    category cost). Rows run image by image, each image's ground-truth boxes first; ``boxes`` are
    those boxes in the model's resized coordinates.

    The model runs in eval mode on its own transform of the images. Foreground rows: every
    ground-truth box, RoI-Aligned from the model's FPN maps and passed through its box head, labelled
    with its class (1..K). Background rows (label 0): per image, as many of the model's own RPN
    proposals as the image has ground-truth boxes, among those whose IoU with every ground-truth box
    is below ``iou_below`` (0.5: torchvision's background threshold for sampled RoIs), evenly
    spaced in the RPN's objectness order. ``mode`` "features": the box head's representation, which
    the classifier reads (1024 wide for TwoMLPHead); "logits": the class logits (K + 1 wide).
    """
    if mode not in ("features", "logits"):
        raise ConfigError(f"box feature mode must be 'features' or 'logits', got {mode!r}")
    was = model.training
    model.eval()
    try:
        image_list, targets_t = model.transform(images, [dict(t) for t in targets])
        fpn = as_feature_dict(model.backbone(image_list.tensors))
        proposals, _ = model.rpn(image_list, fpn)
        gt = [t["boxes"] for t in targets_t]
        bg = [_background(p, g, len(g), iou_below) for p, g in zip(proposals, gt)]
        boxes = [torch.cat([g, b]) for g, b in zip(gt, bg)]
        pooled = model.roi_heads.box_roi_pool(fpn, boxes, image_list.image_sizes)
        rows = model.roi_heads.box_head(pooled)
        if mode == "logits":
            rows = model.roi_heads.box_predictor(rows)[0]
    finally:
        model.train(was)
    labels = torch.cat([torch.cat([t["labels"], t["labels"].new_zeros(len(b))]) for t, b in zip(targets_t, bg)])
    return rows.flatten(1), labels, boxes
