"""Detection transforms: each maps (image (C, H, W) float tensor, target dict) to the same pair,
moving the target's ``boxes`` (x1, y1, x2, y2 pixels) with the image.

Randomness comes from torch's generator, so a run's seed (and DataLoader's per-worker seeding)
fixes it. ``orig_size`` in the target is left alone: it is the file's size, which evaluation maps
predictions back to.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class Compose:
    """Apply ``transforms`` in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self):
        return f"Compose({self.transforms})"


def _output_size(h: int, w: int, size, max_size: int | None) -> tuple[int, int]:
    """(new_h, new_w): ``size`` as (h, w) is used as is; as an int it is the short side, the long
    side following the aspect ratio, the scale lowered so the long side stays <= ``max_size``."""
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[1])
    scale = size / min(h, w)
    if max_size is not None and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


class Resize:
    """Resize to a fixed (h, w), or to a short side ``size`` (long side at most ``max_size``).

    Bilinear, half-pixel centres; antialiased when shrinking so small objects are not aliased
    away. Boxes are scaled by the same per-axis factors (new_w / w, new_h / h)."""

    def __init__(self, size: int | tuple[int, int], max_size: int | None = None):
        bad_int = isinstance(size, int) and size < 1
        bad_pair = isinstance(size, (tuple, list)) and (len(size) != 2 or min(size) < 1)
        if bad_int or bad_pair or not isinstance(size, (int, tuple, list)):
            raise ValueError(f"Resize size must be a positive int (short side) or (height, width), got {size!r}")
        self.size, self.max_size = size, max_size

    def __call__(self, image, target):
        h, w = image.shape[-2:]
        nh, nw = _output_size(h, w, self.size, self.max_size)
        if (nh, nw) != (h, w):
            image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False,
                                  antialias=nh < h or nw < w)[0]
            target = dict(target)
            scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=target["boxes"].dtype)
            target["boxes"] = target["boxes"] * scale
        return image, target

    def __repr__(self):
        return f"Resize(size={self.size}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``p``: a box [x1, x2] becomes [W - x2, W - x1]."""

    def __init__(self, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"flip probability must lie in [0, 1], got {p}")
        self.p = p

    def __call__(self, image, target):
        if torch.rand(()) < self.p:
            w = image.shape[-1]
            image = image.flip(-1)
            target = dict(target)
            b = target["boxes"]
            target["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
        return image, target

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


def detection_transforms(train: bool, size: int | tuple[int, int] | None = None, max_size: int | None = None,
                         flip: float = 0.5) -> Compose:
    """The usual detection pipeline: resize (when ``size`` is given), then in training a horizontal
    flip with probability ``flip``."""
    steps = [Resize(size, max_size)] if size is not None else []
    if train and flip > 0:
        steps.append(RandomHorizontalFlip(flip))
    return Compose(steps)
