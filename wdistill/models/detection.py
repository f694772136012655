"""torchvision Faster R-CNN detectors, and the forward pass that detection distillation reads.

:func:`build_faster_rcnn` makes a Faster R-CNN with a ResNet-FPN (resnet18/34/50/101) or a
MobileNetV3-Large-FPN backbone for any class count. Nothing is ever downloaded: torchvision's
builders run with ``weights=None`` and pretrained weights come only from local files, loaded
weights-only.

:func:`detection_step` runs one training forward of a student detector *by its parts*, because
torchvision's forward does not return the proposals its RoI head sampled, and runs the teacher's
RoI head on exactly those proposals. No torchvision class or forward is patched.

``wdistill.models.det_features`` gives a detector's box-head features of ground-truth boxes and of
background proposals, by class (WKD-L's category cost for detectors).
"""
from __future__ import annotations

import difflib
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from wdistill.errors import ConfigError
from wdistill.models.weights import extract_state_dict, pretrained_path, strip_module

# torchvision is optional (the `detection` extra): it is imported where a detector is built or run,
# so that importing wdistill (and this module) never needs it.
INSTALL = "pip install 'wdistill[detection]' (torchvision and pycocotools, built for your torch)"

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
MOBILENETS = ("mobilenet_v3_large",)
DETECTOR_BACKBONES = RESNETS + MOBILENETS
_ALL_LAYERS = {"resnet": 5, "mobilenet": 6}  # torchvision's "every backbone layer trainable"
_PRETRAINED_TRAINABLE = 3  # torchvision's default for a pretrained backbone


def read_weights(path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a local file, loaded weights-only (a bare state dict, or one under
    'model'/'state_dict'; a DataParallel 'module.' prefix removed)."""
    try:
        return dict(strip_module(extract_state_dict(torch.load(path, map_location="cpu", weights_only=True))))
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist (weights are read from local files only)") from None
    except Exception as e:  # noqa: BLE001 - refused pickles, damaged files, odd layouts: one message
        raise ConfigError(f"{what} {path} cannot be loaded with the weights-only loader: {e}") from None


def load_weights(module: nn.Module, sd: dict, what: str, skip_if_shape_differs: tuple[str, ...] = ()) -> list[str]:
    """Load ``sd`` into ``module``, every key matching (``num_batches_tracked`` aside: FrozenBatchNorm
    has none). Keys starting with ``skip_if_shape_differs`` whose shape differs (a predictor for
    another class count) keep their initialisation; they are returned."""
    own = module.state_dict()
    skipped = [k for k in sd if k in own and sd[k].shape != own[k].shape and k.startswith(skip_if_shape_differs)]
    sd = {k: v for k, v in sd.items() if k not in skipped}
    missing = [k for k in own if k not in sd and k not in skipped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own and not k.endswith("num_batches_tracked")]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items()
             if k in own and v.shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ConfigError(f"{what} do not fit the model: {len(missing)} missing (e.g. {missing[:4]}), "
                          f"{len(unexpected)} unexpected (e.g. {unexpected[:4]}), {len(wrong)} of another shape "
                          f"(e.g. {wrong[:2]}); check the architecture and class count they were saved with")
    module.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return skipped


def _default_anchors(family: str, n_levels: int) -> tuple:
    """torchvision's anchors: ResNet-FPN one size per level, 32 doubling; MobileNet-FPN all five sizes
    32..512 at every level."""
    if family == "resnet":
        return tuple((32 * 2 ** i,) for i in range(n_levels))
    return ((32, 64, 128, 256, 512),) * n_levels


def require_torchvision() -> None:
    """A ConfigError naming the extra to install when torchvision cannot be imported."""
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # ImportError, or a torchvision built for another torch
        raise ConfigError(f"detection needs torchvision, which is not importable here ({type(e).__name__}: "
                          f"{e}): {INSTALL}") from None


def _fpn_backbone(name: str, norm_layer, trainable: int, returned_layers):
    from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
    if name in RESNETS:
        return resnet_fpn_backbone(backbone_name=name, weights=None, norm_layer=norm_layer,
                                   trainable_layers=trainable, returned_layers=returned_layers)
    return mobilenet_backbone(backbone_name=name, weights=None, fpn=True, norm_layer=norm_layer,
                              trainable_layers=trainable, returned_layers=returned_layers)


def _load_backbone(body, path, family: str) -> None:
    """An ImageNet classifier of torchvision's layout into an FPN backbone's body: the classifier
    head is dropped, and a MobileNet's ``features.`` prefix (the body holds those blocks directly)."""
    head = "fc." if family == "resnet" else "classifier."
    sd = {k.removeprefix("features.") if family == "mobilenet" else k: v
          for k, v in read_weights(path, "backbone weights").items() if not k.startswith(head)}
    load_weights(body.body, sd, f"backbone weights {path}")


def build_faster_rcnn(backbone: str, num_classes: int, *, min_size: int = 800, max_size: int = 1333,
                      fixed_size: tuple[int, int] | None = None, trainable_layers: int | None = None,
                      norm: str = "auto", backbone_weights=None, weights=None, anchor_sizes=None,
                      returned_layers: list[int] | None = None, rois_per_image: int = 512,
                      roi_canonical_scale: int = 224, image_mean=None, image_std=None, **kwargs) -> nn.Module:
    """A torchvision Faster R-CNN with an FPN on ``backbone`` (one of :data:`DETECTOR_BACKBONES`).

    num_classes: object categories K, without the background; the predictor has K + 1 outputs,
      background at index 0 (torchvision's ``num_classes`` counts the background).
    min_size/max_size/fixed_size: the detector's own resize (GeneralizedRCNNTransform).
    trainable_layers: backbone stages trained, from the last (ResNet 0..5, MobileNet 0..6); default
      3 with pretrained weights, else all (torchvision's rule; an explicit value is always honoured).
    norm: "frozen" (FrozenBatchNorm2d: pretrained statistics, as torchvision does for pretrained
      backbones), "batch" (BatchNorm2d, for training from scratch) or "auto" (frozen iff weights given).
    backbone_weights: a local ImageNet classifier file of torchvision's layout (its head is dropped).
    weights: a local file of a whole detector (after ``backbone_weights``); a box predictor for
      another class count keeps its initialisation.
    anchor_sizes: one tuple of sizes per FPN level (ResNet 5 levels, MobileNet 3; default
      torchvision's, made for ~800-pixel images: scale them down for small images).
    rois_per_image: RoIs the box head samples per image (torchvision's box_batch_size_per_image).
    roi_canonical_scale: FPN level rule of the RoI pooler (a box of this side goes to P4; 224 is
      torchvision's; smaller images want a smaller value to use more than the finest level).
    kwargs: passed to torchvision's FasterRCNN (e.g. rpn_post_nms_top_n_train).
    """
    if backbone not in DETECTOR_BACKBONES:
        raise ConfigError(f"detector backbone {backbone!r} is not supported; choose one of {list(DETECTOR_BACKBONES)}")
    require_torchvision()
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.misc import FrozenBatchNorm2d
    if num_classes < 1:
        raise ConfigError(f"num_classes counts object categories (background excluded): need >= 1, got {num_classes}")
    if norm not in ("auto", "frozen", "batch"):
        raise ConfigError(f"norm must be 'auto', 'frozen' or 'batch', got {norm!r}")
    family = "resnet" if backbone in RESNETS else "mobilenet"
    pretrained = backbone_weights is not None or weights is not None
    frozen = norm == "frozen" or (norm == "auto" and pretrained)
    if trainable_layers is None:
        trainable_layers = _PRETRAINED_TRAINABLE if pretrained else _ALL_LAYERS[family]
    if not 0 <= trainable_layers <= _ALL_LAYERS[family]:
        raise ConfigError(f"trainable_layers for {backbone} must lie in 0..{_ALL_LAYERS[family]}, "
                          f"got {trainable_layers}")
    body = _fpn_backbone(backbone, FrozenBatchNorm2d if frozen else nn.BatchNorm2d, trainable_layers, returned_layers)
    if backbone_weights is not None:
        _load_backbone(body, backbone_weights, family)
    names = list(body.body.return_layers.values())  # the FPN levels the RoI pooler reads
    n_levels = len(names) + 1  # + the max-pooled 'pool' level, which only the RPN reads
    anchors = tuple(tuple(a) for a in anchor_sizes) if anchor_sizes is not None else _default_anchors(family, n_levels)
    if len(anchors) != n_levels or len({len(a) for a in anchors}) != 1:
        raise ConfigError(f"anchor_sizes must give one tuple of sizes per FPN level ({backbone}: {n_levels} levels), "
                          f"each of the same length (the RPN head is shared across levels); got {anchors}")
    model = FasterRCNN(body, num_classes=num_classes + 1, min_size=min_size, max_size=max_size, fixed_size=fixed_size,
                       image_mean=image_mean, image_std=image_std,
                       rpn_anchor_generator=AnchorGenerator(anchors, ((0.5, 1.0, 2.0),) * len(anchors)),
                       box_roi_pool=MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2,
                                                       canonical_scale=roi_canonical_scale),
                       box_batch_size_per_image=rois_per_image, **kwargs)
    if weights is not None:
        load_weights(model, read_weights(weights, "detector weights"), f"detector weights {weights}",
                     skip_if_shape_differs=("roi_heads.box_predictor.",))
    return model


def create_detector(name: str, num_classes: int, in_channels: int, pretrained, kwargs: dict) -> nn.Module:
    """``detection:<backbone>``: :func:`wdistill.models.detection.build_faster_rcnn` for ``num_classes``
    object categories (the background is added); ``pretrained`` is the backbone's ImageNet classifier
    (a file, or ``true`` for ``<cache>/pretrained/torchvision/<backbone>.pth``)."""
    if name not in DETECTOR_BACKBONES:
        close = difflib.get_close_matches(name, DETECTOR_BACKBONES, n=3)
        raise ValueError(f"detection:{name} is not a supported detector backbone; choose one of "
                         f"{', '.join(DETECTOR_BACKBONES)}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    if in_channels != 3:
        raise ValueError(f"detection:{name} takes 3-channel images, the data has {in_channels}")
    if pretrained and "backbone_weights" in kwargs:
        raise ValueError(f"detection:{name}: give the backbone weights once, as pretrained or as "
                         "kwargs.backbone_weights")
    if pretrained:
        kwargs = dict(kwargs, backbone_weights=pretrained_path(f"torchvision:{name}", pretrained, "torchvision"))
    return build_faster_rcnn(name, num_classes, **kwargs)


def compile_backbone(detector: nn.Module) -> None:
    """``train.compile`` for a detector: its backbone (body and FPN, where nearly all of a step's
    arithmetic is) compiled in place by ``nn.Module.compile``, so the state dict keeps its keys. The
    transform, the RPN, the proposal sampling and the RoI heads, whose shapes change every step, stay
    eager."""
    detector.backbone.compile()


def _check_targets(targets: list[dict]) -> None:
    """What torchvision would assert on deep inside its forward, said up front with the fix."""
    for i, t in enumerate(targets):
        boxes, labels = t.get("boxes"), t.get("labels")
        if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4 \
                or not boxes.is_floating_point():
            raise ConfigError(f"target {i}: 'boxes' must be a float tensor (N, 4) of x1, y1, x2, y2")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != boxes.shape[:1]:
            raise ConfigError(f"target {i}: 'labels' must be an int64 tensor with one label per box")
    bad = [(t["boxes"][:, 2:] <= t["boxes"][:, :2]).any(dim=1) for t in targets]
    if bad and bool(torch.cat(bad).any()):  # one host read for the batch, not one per image
        i = next(i for i, b in enumerate(bad) if b.any())
        raise ConfigError(f"target {i}: box {targets[i]['boxes'][bad[i]][0].tolist()} has no positive width and "
                          "height; drop empty boxes (wdistill.data.coco does) before training")


def teacher_input(images, student_transform, teacher_transform) -> torch.Tensor:
    """The student's resized, padded batch re-normalised with the teacher's mean/std.

    Bilinear resizing (without antialias, as torchvision's transform does) is a convex combination
    of pixels, so it commutes with a per-channel affine normalisation: un-normalising the student's
    tensor and normalising with the teacher's statistics equals normalising the raw image with the
    teacher's statistics and resizing it. The padding stays 0, as the teacher's transform pads.
    The teacher's size divisibility is honoured by padding further if it differs."""
    x = images.tensors
    stats = [list(map(float, v)) for v in (student_transform.image_mean, student_transform.image_std,
                                           teacher_transform.image_mean, teacher_transform.image_std)]
    if stats[:2] != stats[2:]:  # compared on the host: no copy to the device, no sync, when they agree
        s_mean, s_std, t_mean, t_std = (torch.tensor(v, dtype=x.dtype, device=x.device)[:, None, None]
                                        for v in stats)
        valid = torch.zeros(x.shape[0], 1, *x.shape[-2:], dtype=x.dtype, device=x.device)
        for i, (h, w) in enumerate(images.image_sizes):
            valid[i, :, :h, :w] = 1
        x = ((x * s_std + s_mean) - t_mean) / t_std * valid
    d = teacher_transform.size_divisible
    pad_h, pad_w = (-x.shape[-2]) % d, (-x.shape[-1]) % d
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def as_feature_dict(features) -> OrderedDict:
    return OrderedDict([("0", features)]) if isinstance(features, torch.Tensor) else features


def _box_head(model, features, proposals, image_sizes):
    """(RoI-Align features, class logits, box deltas) of ``model``'s box head on ``proposals``."""
    pooled = model.roi_heads.box_roi_pool(features, proposals, image_sizes)
    logits, deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    return pooled, logits, deltas


def detection_step(student: nn.Module, images: list[torch.Tensor], targets: list[dict],
                   teacher: nn.Module | None = None) -> dict:
    """One training forward of ``student`` by its parts, with the teacher's box head on the
    student's sampled proposals.

    The student runs as torchvision's GeneralizedRCNN.forward does in training (transform,
    backbone, RPN with its losses, ``roi_heads.select_training_samples``, box pooler/head/predictor,
    ``fastrcnn_loss``), consuming the random generator in the same order, so its losses equal the
    forward's for the same seed. The teacher (eval mode, no grad) runs its own backbone on the same
    transformed batch (re-normalised with its own statistics, :func:`teacher_input`) and its box
    pooler/head/predictor on the student's sampled proposals, as mdistiller's detection DKD does:
    both detectors then classify the same regions, which RoI-level terms compare one to one.

    Returns a dict:
      losses: loss_objectness, loss_rpn_box_reg (RPN), loss_classifier, loss_box_reg (RoI head);
      student / teacher (None without a teacher): logits (R, K + 1; background at 0), box_regression
        (R, 4 (K + 1)), roi_feats (R, C, 7, 7: the RoI-Align output), fpn (OrderedDict of maps);
      roi_labels (R,): the sampled proposals' matched labels (0 background);
      proposals (list per image, the R boxes in transformed coordinates), regression_targets (R, 4),
      targets (the transformed targets), image_sizes (per image, after resizing, before padding).
    """
    if not student.training:
        raise ConfigError("detection_step trains the student: call student.train() first (the RPN only "
                          "computes its losses in training mode)")
    _check_targets(targets)
    from torchvision.models.detection.roi_heads import fastrcnn_loss
    # torchvision's transform, RPN and sampler, as GeneralizedRCNN.forward and RoIHeads.forward call them.
    image_list, targets_t = student.transform(images, targets)
    fpn_s = as_feature_dict(student.backbone(image_list.tensors))
    proposals, rpn_losses = student.rpn(image_list, fpn_s, targets_t)
    proposals, _, labels, regression_targets = student.roi_heads.select_training_samples(proposals, targets_t)
    roi_s, logits_s, deltas_s = _box_head(student, fpn_s, proposals, image_list.image_sizes)
    loss_classifier, loss_box_reg = fastrcnn_loss(logits_s, deltas_s, labels, regression_targets)
    out = {"losses": {**rpn_losses, "loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg},
           "student": {"logits": logits_s, "box_regression": deltas_s, "roi_feats": roi_s, "fpn": fpn_s},
           "teacher": None, "roi_labels": torch.cat(labels), "proposals": proposals,
           "regression_targets": torch.cat(regression_targets), "targets": targets_t,
           "image_sizes": image_list.image_sizes}
    if teacher is not None:
        teacher.eval()
        with torch.no_grad():
            fpn_t = as_feature_dict(teacher.backbone(teacher_input(image_list, student.transform, teacher.transform)))
            roi_t, logits_t, deltas_t = _box_head(teacher, fpn_t, proposals, image_list.image_sizes)
        if logits_t.shape[1] != logits_s.shape[1]:
            raise ConfigError(f"the teacher predicts {logits_t.shape[1] - 1} classes and the student "
                              f"{logits_s.shape[1] - 1}: RoI-level distillation needs the same categories")
        out["teacher"] = {"logits": logits_t, "box_regression": deltas_t, "roi_feats": roi_t, "fpn": fpn_t}
    return out

