"""The Fashion-MNIST sample shipped inside the package (made by scripts/make_sample.py)."""
from __future__ import annotations

from importlib import resources

import numpy as np
import torch

from wdistill.data.dataset import ImageDataset
from wdistill.data.idx import FMNIST_MEAN, FMNIST_STD

SAMPLE_FILE = "fmnist_sample.npz"


def bundled_sample(split: str) -> ImageDataset:
    """The bundled stratified Fashion-MNIST sample: 'train' (6,000) or 'test' (1,000), 1x28x28."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    with resources.files("wdistill.data").joinpath("sample", SAMPLE_FILE).open("rb") as f:
        z = np.load(f)
        images, labels = z[f"{split}_images"], z[f"{split}_labels"]
    return ImageDataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                        10, FMNIST_MEAN, FMNIST_STD, "fmnist_sample")
