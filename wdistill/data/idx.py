"""MNIST / Fashion-MNIST in the original IDX format (``*-ubyte`` or ``*-ubyte.gz``)."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from .dataset import ImageDataset

DEBIAN_FMNIST = "/usr/share/datasets/fashion-mnist"
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (gzip-compressed or raw) into an array of its declared type and shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[data[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: header says {dims} of {dtype} ({expected} bytes), file has {len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).exists():
            return root / name
    # torchvision writes "t10k-images.idx3-ubyte"-style names on some versions
    alt = stem.replace("-idx", ".idx")
    for name in (alt + ".gz", alt):
        if (root / name).exists():
            return root / name
    return None


def fashion_mnist_root(root: str | os.PathLike | None = None) -> Path:
    """The directory holding the Fashion-MNIST IDX files: ``root`` if given, else Debian's."""
    candidates = [Path(root)] if root else [Path(os.environ.get("WDISTILL_FMNIST", DEBIAN_FMNIST))]
    for c in candidates:
        if c.is_dir() and all(_find(c, s) for pair in _FILES.values() for s in pair):
            return c
    where = candidates[0]
    raise FileNotFoundError(
        f"Fashion-MNIST not found in {where}: it needs train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz. "
        "On Debian/Ubuntu: `apt-get install dataset-fashion-mnist`; otherwise put the four files in a "
        "directory and pass it as data.root (or set WDISTILL_FMNIST).")


def load_idx_split(root: str | os.PathLike, split: str, mean, std, name: str) -> ImageDataset:
    root = Path(root)
    img_stem, lab_stem = _FILES[split]
    img_path, lab_path = _find(root, img_stem), _find(root, lab_stem)
    if img_path is None or lab_path is None:
        raise FileNotFoundError(f"{root} lacks {img_stem}(.gz) or {lab_stem}(.gz)")
    images = read_idx(img_path)
    labels = read_idx(lab_path)
    if images.ndim != 3:
        raise ValueError(f"{img_path}: expected (N, H, W) images, got shape {images.shape}")
    return ImageDataset(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                        int(labels.max()) + 1 if name == "mnist-like" else 10, mean, std, name)


def fashion_mnist(split: str, root: str | os.PathLike | None = None) -> ImageDataset:
    """Fashion-MNIST ``split`` ('train' 60,000 or 'test' 10,000 images, 1x28x28)."""
    return load_idx_split(fashion_mnist_root(root), split, FMNIST_MEAN, FMNIST_STD, "fashion_mnist")


def mnist(split: str, root: str | os.PathLike) -> ImageDataset:
    """MNIST ``split`` from a directory holding the four IDX files."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"MNIST directory {root} does not exist: put the four *-ubyte(.gz) files there")
    return load_idx_split(root, split, MNIST_MEAN, MNIST_STD, "mnist")
