"""Generated ImageNet-layout folders of real image files (tests, benchmarks, smoke runs).

Each picture is a smooth colour gradient whose hue depends on the class, with a bright square
at a random place and JPEG-unfriendly noise, so files decode like photographs (not near-empty
JPEGs) and a model can tell classes apart.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


def make_image_folder(root: str | os.PathLike, per_class: dict[str, int] | int, classes: int = 4,
                      size: tuple[int, int] = (64, 64), seed: int = 0, ext: str = ".jpg",
                      splits: tuple[str, ...] = ("train", "val"), val_fraction: float = 0.25) -> Path:
    """Write ``root/<split>/c<k>/<i>.<ext>``: ``per_class`` training images per class (val gets
    ``val_fraction`` of that, at least 1). ``size`` is (width, height). Returns ``root``."""

    root = Path(root)
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    n_train = per_class if isinstance(per_class, int) else per_class["train"]
    for split in splits:
        n = n_train if split == "train" else max(1, round(n_train * val_fraction))
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            hue = np.array([np.cos(2 * np.pi * c / classes), np.sin(2 * np.pi * c / classes), 0.5 * (c % 2)])
            for i in range(n):
                base = 0.5 + 0.35 * hue[:, None, None] * (xx / w + yy / h - 1)[None]
                img = base + 0.15 * rng.standard_normal((3, h, w)).astype(np.float32)
                s = max(2, min(w, h) // 4)
                top, left = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
                img[:, top:top + s, left:left + s] = 0.95
                arr = (np.clip(img, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
                Image.fromarray(arr).save(folder / f"{i:05d}{ext}", quality=90)
    return root
