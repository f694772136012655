"""Training augmentation recipes declared by each data set (``data.crop_padding`` / ``data.flip`` /
``data.random_resized_crop`` left unset = the data set's recipe).

- CIFAR-10/100: pad 4 + random 32x32 crop + horizontal flip (He et al. 2016, section 4.2; the
  recipe of every CIFAR-100 distillation paper).
- Fashion-MNIST (and the bundled sample): pad 2 + random crop + flip, the FMNIST-KD v1 protocol
  (BENCHMARK.md section A), so benchmark runs are unchanged.
- MNIST (and any IDX set read as ``mnist``): a crop with padding proportional to the image
  (1/14 of the side: 2 px at 28x28, 1 px at 8x8) and no flip: a mirrored digit is another glyph.
- Image folders: RandomResizedCrop (scale (0.08, 1), ratio (3/4, 4/3)) + flip for training,
  resize + centre crop for evaluation (the ImageNet recipe of Szegedy et al. 2015).
- Anything else (a user's Dataset, a ``python`` factory): no augmentation; the user's
  ``__getitem__`` may augment itself, or set the fields explicitly.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    source: str
    crop_padding: int = 0
    pad_fraction: float = 0.0  # padding = max(1, round(side * pad_fraction)) when > 0
    flip: bool = False
    resized_crop: bool = False


RECIPES = {
    "cifar": Recipe("CIFAR (He et al. 2016): pad 4 + crop + flip", crop_padding=4, flip=True),
    "fmnist": Recipe("FMNIST-KD v1 protocol: pad 2 + crop + flip", crop_padding=2, flip=True),
    "mnist": Recipe("digits: padding side/14 + crop, no flip", pad_fraction=1 / 14),
    "image_folder": Recipe("ImageNet: RandomResizedCrop + flip; eval resize + centre crop", flip=True,
                           resized_crop=True),
    "none": Recipe("user data: none"),
}
_BY_PREFIX = (("cifar", "cifar"), ("fmnist", "fmnist"), ("fashion_mnist", "fmnist"), ("mnist", "mnist"),
              ("image_folder", "image_folder"))


def recipe_for(name: str) -> Recipe:
    """The recipe of a built-in data set name (or an ImageDataset's ``name``); 'none' otherwise."""
    for prefix, key in _BY_PREFIX:
        if (name or "").startswith(prefix):
            return RECIPES[key]
    return RECIPES["none"]


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
        parts.append(f"RandomResizedCrop {rrc} (scale {tuple(d.rrc_scale)}, ratio "
                     f"({d.rrc_ratio[0]:.4g}, {d.rrc_ratio[1]:.4g})); eval centre crop {rrc}")
    if pad:
        parts.append(f"pad {pad} + random crop")
    parts.append("horizontal flip" if flip else "no flip")
    where = f"recipe: {recipe.source}" + (f"; set in config: {', '.join(explicit)}" if explicit else "")
    return Augmentation(pad, flip, rrc, tuple(d.rrc_scale), tuple(d.rrc_ratio), f"{', '.join(parts)} [{where}]")
