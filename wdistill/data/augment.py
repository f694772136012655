"""Batched tensor augmentation on the training device: random crop with padding, flip, normalise;
and, for ImageNet-style data, RandomResizedCrop for training with a centre crop for evaluation.

The CIFAR recipe (He et al. 2016, section 4.2): pad 4 px with zeros, crop back to 32x32 at a random
offset, mirror horizontally with probability 1/2, then per-channel ``(x / 255 - mean) / std``.
Crop and flip are one ``gather`` over the padded batch: output pixel (i, j) of image n is
``padded[n, :, dy_n + i, dx_n + j]``, or column ``dx_n + (W - 1 - j)`` when n is mirrored.

The ImageNet recipe (Szegedy et al. 2015, as torchvision's RandomResizedCrop): per image, a box of
area ``U(scale) * H * W`` and aspect ratio ``exp(U(log ratio))`` at a uniform position (up to 10
tries, first fitting one wins; else the whole image, clamped to the ratio range), resized to S x S
bilinearly (half-pixel centres, as ``F.interpolate(align_corners=False)``), mirrored with
probability 1/2. The whole batch is one ``affine_grid`` + ``grid_sample``: the output pixel centre
``u`` in [-1, 1] maps to input ``(w / W) u + (2 j + w) / W - 1`` (and likewise for rows), with the
sign of ``w / W`` flipped for a mirrored image, clamped to the box's edge pixel centres (resizing
the cropped image clamps there too). Unlike torchvision no antialiasing filter is used
when a box is shrunk (boxes larger than S are at most ``H / S`` times larger: x1.14 for images
stored at 256 and cropped to 224).

Which recipe a run gets: each data set declares its training augmentation, used wherever
``data.crop_padding`` / ``data.flip`` / ``data.random_resized_crop`` are left unset:

- CIFAR-10/100: pad 4 + random 32x32 crop + horizontal flip (He et al. 2016, section 4.2; the
  recipe of every CIFAR-100 distillation paper).
- Fashion-MNIST (and the bundled sample): pad 2 + random crop + flip, the FMNIST-KD v1 protocol
  (docs/benchmarks.md, protocol A), so benchmark runs are unchanged.
- MNIST (and any IDX set read as ``mnist``): a crop with padding proportional to the image
  (1/14 of the side: 2 px at 28x28, 1 px at 8x8) and no flip: a mirrored digit is another glyph.
- Image folders: RandomResizedCrop (scale (0.08, 1), ratio (3/4, 4/3)) + flip for training,
  resize + centre crop for evaluation (the ImageNet recipe of Szegedy et al. 2015).
- Anything else (a user's Dataset, a ``python`` factory): no augmentation; the user's
  ``__getitem__`` may augment itself, or set the fields explicitly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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
        cols = torch.where(flips.to(dev, non_blocking=True).view(n, 1, 1), w - 1 - cols, cols)
    if offsets is not None:
        offsets = offsets.to(dev, non_blocking=True)
        rows = rows + offsets[0].view(n, 1, 1)
        cols = cols + offsets[1].view(n, 1, 1)
    flat = (rows * wp + cols).view(n, 1, h * w).expand(n, c, h * w)
    padded = F.pad(x, (p,) * 4) if p else x
    return padded.reshape(n, c, hp * wp).gather(2, flat).view(n, c, h, w)


def fallback_box(height: int, width: int, ratio) -> tuple[int, int]:
    """(h, w) of RandomResizedCrop's fallback when no try fits: the largest centred box whose aspect
    ratio is inside ``ratio``."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return round(width / ratio[0]), width
    if in_ratio > ratio[1]:
        return height, round(height * ratio[1])
    return height, width


def draw_resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    tries: int = 10,
) -> torch.Tensor:
    """(n, 4) integer boxes (top, left, height, width) as RandomResizedCrop draws them."""
    if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
        raise ValueError(
            f"resized crop needs 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], "
            f"got scale={tuple(scale)}, ratio={tuple(ratio)} (published: (0.08, 1.0), (3/4, 4/3))"
        )
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=generator, dtype=torch.float64))
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(n, tries, generator=generator, dtype=torch.float64))
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(1), fits.long().argmax(1), -1)
    fh, fw = fallback_box(height, width, ratio)
    rows = torch.arange(n)
    pick = first.clamp(min=0)
    bh = torch.where(first >= 0, h[rows, pick], fh)
    bw = torch.where(first >= 0, w[rows, pick], fw)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.where(first >= 0, (u[:, 0] * (height - bh + 1)).long().clamp(max=height - 1), (height - fh) // 2)
    left = torch.where(first >= 0, (u[:, 1] * (width - bw + 1)).long().clamp(max=width - 1), (width - fw) // 2)
    return torch.stack([top, left, bh, bw], 1)


def resized_crop_flip(x: torch.Tensor, boxes: torch.Tensor, size: int, flips: torch.Tensor | None) -> torch.Tensor:
    """Crop each image of ``x`` (N, C, H, W, float) to its box (top, left, h, w), resize to
    ``size`` x ``size`` bilinearly and mirror where ``flips`` is true: one grid_sample."""
    n, _, height, width = x.shape
    b = boxes.to(torch.float64)
    sx, sy = b[:, 3] / width, b[:, 2] / height
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = sx if flips is None else torch.where(flips, -sx, sx)
    theta[:, 0, 2] = (2 * b[:, 1] + b[:, 3]) / width - 1
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = (2 * b[:, 0] + b[:, 2]) / height - 1
    grid = F.affine_grid(theta.to(x.device, x.dtype, non_blocking=True), [n, 1, size, size], align_corners=False)
    # Sample only inside the box, as resizing the cropped image would: clamp to its edge pixel centres.
    lo = torch.stack([(2 * b[:, 1] + 1) / width, (2 * b[:, 0] + 1) / height], 1) - 1
    hi = torch.stack([(2 * (b[:, 1] + b[:, 3]) - 1) / width, (2 * (b[:, 0] + b[:, 2]) - 1) / height], 1) - 1
    lo, hi = (v.to(grid, non_blocking=True).view(n, 1, 1, 2) for v in (lo, hi))
    grid = torch.clamp(grid, lo, hi)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` window (origin ``floor((side - size) / 2)``)."""
    h, w = x.shape[-2:]
    if size > min(h, w):
        raise ValueError(
            f"centre crop {size} is larger than the {h}x{w} images: store the images at >= {size} px "
            "(data.options.size) or lower data.random_resized_crop"
        )
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` then crop back to the input size at a random offset per image."""
    if padding == 0:
        return x
    return crop_flip(x, padding, _draw_offsets(x.shape[0], padding, generator), None)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image horizontally with probability 1/2."""
    return crop_flip(x, 0, None, _draw_flips(x.shape[0], generator))


class Augment:
    """uint8 batch -> normalised float batch, with optional crop(padding) and flip; or, with
    ``resized_crop=S``, RandomResizedCrop to S x S (+ flip); or, with ``center_crop=S``, the
    centre S x S window (the evaluation view of a resized-crop training recipe).

    Random draws happen in a fixed order (crop offsets or boxes, then flips) from ``generator``, so
    a seeded generator reproduces the batch exactly.
    """

    def __init__(self, mean, std, crop_padding: int = 0, flip: bool = False, resized_crop: int | None = None,
                 scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), center_crop: int | None = None):
        mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
        std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255
        if (std <= 0).any():
            raise ValueError(f"std must be positive per channel, got {tuple(std.flatten() / 255)}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        # (x - mean) / std as x * scale + shift: one fused in-place pass instead of a division.
        self.norm_mul, self.norm_add = 1.0 / std, -mean / std
        if resized_crop is not None and crop_padding:
            raise ValueError(f"crop_padding={crop_padding} and resized_crop={resized_crop} both crop: use one "
                             "(set crop_padding: 0 for the ImageNet recipe)")
        for name, v in (("resized_crop", resized_crop), ("center_crop", center_crop)):
            if v is not None and v < 1:
                raise ValueError(f"{name} must be a positive size in pixels, got {v}")
        self.crop_padding = crop_padding
        self.flip = flip
        self.resized_crop, self.center_crop = resized_crop, center_crop
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``x * norm_mul + norm_add`` in place; the two are moved to ``x``'s device once, not every batch."""
        if self.norm_mul.device != x.device:
            self.norm_mul, self.norm_add = self.norm_mul.to(x.device), self.norm_add.to(x.device)
        return x.mul_(self.norm_mul).add_(self.norm_add)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.norm_mul.shape[1]:
            raise ValueError(f"expected a (N, {self.norm_mul.shape[1]}, H, W) batch, got {tuple(images.shape)}")
        n = images.shape[0]
        if self.resized_crop is not None:
            boxes = draw_resized_crop_boxes(n, images.shape[2], images.shape[3], self.scale, self.ratio, generator)
            flips = _draw_flips(n, generator) if self.flip else None
            x = resized_crop_flip(images.to(torch.float32), boxes, self.resized_crop, flips)
            return self._normalise(x)
        offsets = _draw_offsets(n, self.crop_padding, generator) if self.crop_padding else None
        flips = _draw_flips(n, generator) if self.flip else None
        x = crop_flip(images, self.crop_padding, offsets, flips)
        if self.center_crop is not None:
            x = center_crop(x, self.center_crop)
        # copy=True: a float input must not be scaled in place under the caller.
        return self._normalise(x.to(torch.float32, copy=True))


# ---- the augmentation recipe each data set declares ------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    source: str
    crop_padding: int = 0
    pad_fraction: float = 0.0  # padding = max(1, round(side * pad_fraction)) when > 0
    flip: bool = False
    resized_crop: bool = False


AUGMENT_RECIPES = {
    "cifar": Recipe("CIFAR (He et al. 2016): pad 4 + crop + flip", crop_padding=4, flip=True),
    "fmnist": Recipe("FMNIST-KD v1 protocol: pad 2 + crop + flip", crop_padding=2, flip=True),
    "mnist": Recipe("digits: padding side/14 + crop, no flip", pad_fraction=1 / 14),
    "image_folder": Recipe(
        "ImageNet: RandomResizedCrop + flip; eval resize + centre crop", flip=True, resized_crop=True
    ),
    "none": Recipe("user data: none"),
}
_BY_PREFIX = (
    ("cifar", "cifar"),
    ("fmnist", "fmnist"),
    ("fashion_mnist", "fmnist"),
    ("mnist", "mnist"),
    ("image_folder", "image_folder"),
)


def augment_recipe(name: str) -> Recipe:
    """The recipe of a built-in data set name (or an ImageDataset's ``name``); 'none' otherwise."""
    for prefix, key in _BY_PREFIX:
        if (name or "").startswith(prefix):
            return AUGMENT_RECIPES[key]
    return AUGMENT_RECIPES["none"]


@dataclass(frozen=True)
class Augmentation:
    """The augmentation in force for a run."""

    crop_padding: int
    flip: bool
    resized_crop: int | None
    scale: tuple[float, float]
    ratio: tuple[float, float]
    describe: str


def resolve(d, recipe: Recipe, side: int, stored: int | None = None) -> Augmentation:
    """Merge the config fields ``d`` (a DataSection; ``None`` = the recipe's) with ``recipe``.

    ``side``: the training images' height (for a proportional padding); ``stored``: the size an
    image folder is resized to (its RandomResizedCrop size when ``random_resized_crop`` is unset).
    """
    explicit = [k for k in ("crop_padding", "flip", "random_resized_crop") if getattr(d, k) is not None]
    rrc = d.random_resized_crop
    if rrc is None and recipe.resized_crop and not d.crop_padding:
        rrc = stored or side
    if d.crop_padding is not None:
        pad = d.crop_padding
    elif rrc is not None:
        pad = 0
    elif recipe.pad_fraction:
        pad = max(1, round(side * recipe.pad_fraction))
    else:
        pad = recipe.crop_padding
    flip = recipe.flip if d.flip is None else d.flip
    parts = []
    if rrc is not None:
        parts.append(
            f"RandomResizedCrop {rrc} (scale {tuple(d.rrc_scale)}, ratio "
            f"({d.rrc_ratio[0]:.4g}, {d.rrc_ratio[1]:.4g})); eval centre crop {rrc}"
        )
    if pad:
        parts.append(f"pad {pad} + random crop")
    parts.append("horizontal flip" if flip else "no flip")
    where = f"recipe: {recipe.source}" + (f"; set in config: {', '.join(explicit)}" if explicit else "")
    return Augmentation(pad, flip, rrc, tuple(d.rrc_scale), tuple(d.rrc_ratio), f"{', '.join(parts)} [{where}]")
