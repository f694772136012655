"""Batched tensor augmentation on the training device: random crop with padding, flip, normalise.

The CIFAR recipe (He et al. 2016, section 4.2): pad 4 px with zeros, crop back to 32x32 at a random
offset, mirror horizontally with probability 1/2, then per-channel ``(x / 255 - mean) / std``.
Crop and flip are one ``gather`` over the padded batch: output pixel (i, j) of image n is
``padded[n, :, dy_n + i, dx_n + j]``, or column ``dx_n + (W - 1 - j)`` when n is mirrored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _draw_offsets(n: int, padding: int, generator: torch.Generator | None) -> torch.Tensor:
    """(2, n) row/column offsets, uniform over 0..2*padding; drawn on the CPU so results do not
    depend on the device."""
    if padding < 0:
        raise ValueError(f"crop padding must be >= 0, got {padding}")
    return torch.randint(0, 2 * padding + 1, (2, n), generator=generator)


def _draw_flips(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator) < 0.5


def crop_flip(x: torch.Tensor, padding: int, offsets: torch.Tensor | None, flips: torch.Tensor | None) -> torch.Tensor:
    """Zero-pad ``x`` (N, C, H, W) by ``padding``, crop H x W at ``offsets`` (2, N) and mirror the
    images where ``flips`` (N,) is true. ``None`` means no crop / no flip."""
    n, c, h, w = x.shape
    if offsets is None and flips is None:
        return x
    p = padding if offsets is not None else 0
    hp, wp = h + 2 * p, w + 2 * p
    dev = x.device
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    if flips is not None:
        cols = torch.where(flips.to(dev).view(n, 1, 1), w - 1 - cols, cols)
    if offsets is not None:
        offsets = offsets.to(dev)
        rows = rows + offsets[0].view(n, 1, 1)
        cols = cols + offsets[1].view(n, 1, 1)
    flat = (rows * wp + cols).view(n, 1, h * w).expand(n, c, h * w)
    padded = F.pad(x, (p,) * 4) if p else x
    return padded.reshape(n, c, hp * wp).gather(2, flat).view(n, c, h, w)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` then crop back to the input size at a random offset per image."""
    if padding == 0:
        return x
    return crop_flip(x, padding, _draw_offsets(x.shape[0], padding, generator), None)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image horizontally with probability 1/2."""
    return crop_flip(x, 0, None, _draw_flips(x.shape[0], generator))


class Augment:
    """uint8 batch -> normalised float batch, with optional crop(padding) and flip.

    Random draws happen in a fixed order (crop offsets, then flips) from ``generator``, so a
    seeded generator reproduces the batch exactly.
    """

    def __init__(self, mean, std, crop_padding: int = 0, flip: bool = False):
        mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
        std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255
        if (std <= 0).any():
            raise ValueError(f"std must be positive per channel, got {tuple(std.flatten() / 255)}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        # (x - mean) / std as x * scale + shift: one fused in-place pass instead of a division.
        self.scale, self.shift = 1.0 / std, -mean / std
        self.crop_padding = crop_padding
        self.flip = flip

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.scale.shape[1]:
            raise ValueError(f"expected a (N, {self.scale.shape[1]}, H, W) batch, got {tuple(images.shape)}")
        n = images.shape[0]
        offsets = _draw_offsets(n, self.crop_padding, generator) if self.crop_padding else None
        flips = _draw_flips(n, generator) if self.flip else None
        x = crop_flip(images, self.crop_padding, offsets, flips)
        dev = x.device
        # copy=True: a float input must not be scaled in place under the caller.
        return x.to(torch.float32, copy=True).mul_(self.scale.to(dev)).add_(self.shift.to(dev))
