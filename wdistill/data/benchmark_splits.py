"""The fixed data splits of the benchmarks in docs/benchmarks.md."""
from __future__ import annotations

import os

from wdistill.data.dataset import ImageDataset
from wdistill.data.idx import fashion_mnist

KD_V1_TRAIN, KD_V1_QUICK_TRAIN, KD_V1_VAL = 10_000, 5_000, 5_000


def fmnist_kd_v1(root: str | os.PathLike | None = None, quick: bool = False,
                 download: bool = False) -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    """FMNIST-KD v1 (docs/benchmarks.md, protocol A): (train, val, test), in the official file order.

    train: official training images 0..9,999 (``quick``: 0..4,999); val: training images
    10,000..14,999, used for tuning only; test: all 10,000 official test images. The val slice
    is the same with or without ``quick``, so settings tuned on it carry over.
    """
    full = fashion_mnist("train", root, download)
    if len(full) < KD_V1_TRAIN + KD_V1_VAL:
        raise ValueError(f"FMNIST-KD v1 needs at least {KD_V1_TRAIN + KD_V1_VAL} training images, the split "
                         f"found has {len(full)}: point root at the full Fashion-MNIST (60,000 training images)")
    n_train = KD_V1_QUICK_TRAIN if quick else KD_V1_TRAIN
    train = full.subset(slice(0, n_train), "fmnist_kd_v1_quick" if quick else "fmnist_kd_v1")
    val = full.subset(slice(KD_V1_TRAIN, KD_V1_TRAIN + KD_V1_VAL), "fmnist_kd_v1_val")
    test = fashion_mnist("test", root, download)
    return train, val, test.subset(slice(None), "fmnist_kd_v1_test")
