"""MNIST / Fashion-MNIST in the original IDX format (``*-ubyte`` or ``*-ubyte.gz``).

IDX (LeCun et al., http://yann.lecun.com/exdb/mnist/): bytes 0-1 are zero, byte 2 the element
type, byte 3 the number of dimensions d, then d big-endian uint32 sizes, then the elements in
row-major order.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from wdistill.data.dataset import ImageDataset
from wdistill.data.download import RESOURCES, describe, fetch

DEBIAN_FMNIST = "/usr/share/datasets/fashion-mnist"
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (gzip-compressed or raw, told apart by content) into an array of its
    declared type and shape."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e}); fetch the file again") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[data[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: header says {dims} of {dtype} ({expected} bytes), file has {len(data)}"
                         " (truncated or padded); fetch the file again")
    return np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    # torchvision writes "t10k-images.idx3-ubyte"-style names on some versions
    for base in (stem, stem.replace("-idx", ".idx")):
        for name in (base + ".gz", base):
            if (root / name).is_file():
                return root / name
    return None


def _has_all(root: Path) -> bool:
    return root.is_dir() and all(_find(root, s) for pair in _FILES.values() for s in pair)


def _missing(title: str, key: str, root: Path, hint: str = "") -> FileNotFoundError:
    return FileNotFoundError(
        f"{title} not found in {root}: it needs {', '.join(r.filename for r in RESOURCES[key])} (or the same "
        f"files without .gz). {hint}Put the four files in {root} (or another directory passed as "
        f"data.root), or let wdistill fetch them (data.options.download=true; download=True in Python): "
        f"{describe(RESOURCES[key])}.")


def fashion_mnist_root(root: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The directory holding the Fashion-MNIST IDX files: ``root`` if given, else
    ``$WDISTILL_FMNIST``, else Debian's (package ``dataset-fashion-mnist``)."""
    where = Path(root) if root else Path(os.environ.get("WDISTILL_FMNIST", DEBIAN_FMNIST))
    if _has_all(where):
        return where
    if download:
        if not root:
            raise ValueError("download=True needs root=<directory to download Fashion-MNIST into>")
        fetch("fashion_mnist", where)
        return where
    raise _missing("Fashion-MNIST", "fashion_mnist", where,
                   "On Debian/Ubuntu: `apt-get install dataset-fashion-mnist` (installs them in "
                   f"{DEBIAN_FMNIST}), or set WDISTILL_FMNIST. ")


def load_idx_split(root: str | os.PathLike, split: str, mean, std, name: str,
                   classes: tuple[str, ...] = ()) -> ImageDataset:
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    img_stem, lab_stem = _FILES[split]
    img_path, lab_path = _find(root, img_stem), _find(root, lab_stem)
    if img_path is None or lab_path is None:
        raise FileNotFoundError(f"{root} lacks {img_stem}(.gz) or {lab_stem}(.gz): put both files there")
    images = read_idx(img_path)
    labels = read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{img_path}: expected uint8 (N, H, W) images, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images) or (labels.size and labels.max() > 9):
        raise ValueError(f"{lab_path}: expected {len(images)} labels in 0..9 (one per image of {img_path.name}), "
                         f"got shape {labels.shape}")
    return ImageDataset(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                        10, mean, std, name, classes)


def fashion_mnist(split: str, root: str | os.PathLike | None = None, download: bool = False) -> ImageDataset:
    """Fashion-MNIST ``split`` ('train' 60,000 or 'test' 10,000 images, 1x28x28)."""
    return load_idx_split(fashion_mnist_root(root, download), split, FMNIST_MEAN, FMNIST_STD, "fashion_mnist",
                          FMNIST_CLASSES)


def mnist(split: str, root: str | os.PathLike, download: bool = False) -> ImageDataset:
    """MNIST ``split`` from a directory holding the four IDX files."""
    if root is None:
        raise ValueError("MNIST needs root=<directory holding (or to receive) the four IDX files>")
    root = Path(root)
    if not _has_all(root):
        if not download:
            raise _missing("MNIST", "mnist", root)
        fetch("mnist", root)
    return load_idx_split(root, split, MNIST_MEAN, MNIST_STD, "mnist", tuple(str(i) for i in range(10)))
