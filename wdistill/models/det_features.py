"""A detector's RoI features by class: of the ground-truth boxes and of background proposals, for
statistics over a training set (WKD-L's category cost for detectors, ``wdistill.losses.wkd``)."""
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
    """(rows (N, R, D), labels (N,), boxes per image): ``model``'s features of the ground-truth boxes
    of one batch, and of as many background proposals, for statistics by class (WKD-L's category
    cost). Boxes run image by image, each image's ground-truth boxes first; ``boxes`` are those
    boxes in the model's resized coordinates.

    The model runs in eval mode on its own transform of the images. Foreground: every ground-truth
    box, labelled with its class (1..K). Background (label 0): per image, as many of the model's own
    RPN proposals as the image has ground-truth boxes, among those whose IoU with every ground-truth
    box is below ``iou_below`` (0.5: torchvision's background threshold for sampled RoIs), evenly
    spaced in the RPN's objectness order.

    ``mode`` "features": the box's RoI-Align map from the model's FPN, the input of its box head,
    as R = S x S rows (its positions, row-major) of D channels: the classification recipe's rows
    (an example's last-stage map, one row per position), so that paired rows of two classes share
    a position. "logits": the box predictor's class logits, one row (R = 1) of K + 1.
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
        pooled = model.roi_heads.box_roi_pool(fpn, boxes, image_list.image_sizes)  # (N, D, S, S)
        if mode == "logits":
            rows = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))[0][:, None]
        else:
            rows = pooled.flatten(2).transpose(1, 2)  # (N, S * S, D)
    finally:
        model.train(was)
    labels = torch.cat([torch.cat([t["labels"], t["labels"].new_zeros(len(b))]) for t, b in zip(targets_t, bg)])
    return rows, labels, boxes
