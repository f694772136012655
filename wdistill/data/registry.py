"""Dataset names usable in configs -> (train, test) ImageDatasets.

Every loader takes ``root`` and its own keyword options; an option it does not know is an error,
not silently ignored. ``load_dataset`` adds one option for all: ``train_subset=N`` keeps the first
N training samples (in file order).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

from wdistill.data.benchmark_splits import fmnist_kd_v1
from wdistill.data.cifar import cifar_splits
from wdistill.data.dataset import ImageDataset
from wdistill.data.det_loader import coco_splits
from wdistill.data.folder import IMAGENET_MEAN, IMAGENET_STD, image_folder
from wdistill.data.idx import fashion_mnist, mnist
from wdistill.data.sample import bundled_sample


def _fmnist(root, download: bool = False, protocol: str = "official", quick: bool = False, eval_split: str = "test"):
    """protocol 'official': (60,000 train, 10,000 test). protocol 'kd_v1': docs/benchmarks.md's
    FMNIST-KD v1 (``fmnist_kd_v1``), whose second element is the test set, or with
    ``eval_split='val'`` the 5,000-image validation slice used for tuning."""
    if protocol == "kd_v1":
        if eval_split not in ("test", "val"):
            raise ValueError(f"eval_split must be 'test' or 'val', got {eval_split!r}")
        train, val, test = fmnist_kd_v1(root, quick, download)
        return train, (val if eval_split == "val" else test)
    if protocol != "official":
        raise ValueError(f"fashion_mnist protocol must be 'official' or 'kd_v1', got {protocol!r}")
    if quick or eval_split != "test":
        raise ValueError("quick and eval_split='val' exist only with protocol='kd_v1'")
    return fashion_mnist("train", root, download), fashion_mnist("test", root, download)


def _mnist(root, download: bool = False):
    return mnist("train", root, download), mnist("test", root, download)


def _sample(root):
    return bundled_sample("train"), bundled_sample("test")


def _cifar10(root, download: bool = False):
    return cifar_splits("cifar10", root, download)


def _cifar100(root, download: bool = False, labels: str = "fine"):
    return cifar_splits("cifar100", root, download, labels)


def _image_folder(root, size: int = 32, cache_dir=None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """``root/train/<class>/...`` and ``root/val/<class>/...``; val takes train's class order."""
    if root is None:
        raise ValueError("image_folder needs root=<directory holding train/ and val/>")
    train = image_folder(Path(root) / "train", size, cache_dir, mean, std)
    val = image_folder(Path(root) / "val", size, cache_dir, mean, std, classes=train.classes)
    return train, val


def _coco(root, train_split: str = "train", eval_split: str = "val", size: int | None = None,
          max_size: int | None = None, keep_empty: bool = False):
    """A COCO-format detection folder (``task: detection``): ``annotations/instances_<split>.json`` and
    ``images/<split>/`` (or ``<split>/``); ``size``/``max_size`` resize the images (short side, long
    side cap; None: the detector's own resize only); ``keep_empty`` trains on images without boxes too.
    Returns (train, eval) ``CocoDetection`` datasets, not ImageDatasets."""
    return coco_splits(root, train_split, eval_split, size, max_size, keep_empty)


# Data sets read by the detection task (``task: detection``); the others are classification data.
DETECTION_DATASETS = ("coco",)

DATASETS: dict[str, Callable[..., tuple[ImageDataset, ImageDataset]]] = {
    "fmnist_sample": _sample,
    "fashion_mnist": _fmnist,
    "mnist": _mnist,
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "image_folder": _image_folder,
    "coco": _coco,
}


def options(name: str) -> list[str]:
    """The keyword options dataset ``name`` accepts (besides ``root`` and ``train_subset``)."""
    return [p for p in inspect.signature(DATASETS[name]).parameters if p != "root"]


def load_dataset(name: str, root: str | None = None, train_subset: int | None = None,
                 **kw) -> tuple[ImageDataset, ImageDataset]:
    """(train, test) of dataset ``name``; ``root`` is its directory where it needs one."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    unknown = sorted(set(kw) - set(options(name)))
    if unknown:
        raise ValueError(f"dataset {name!r} has no option {', '.join(unknown)}; its options: "
                         f"{', '.join(options(name) + ['train_subset']) }")
    train, test = DATASETS[name](root, **kw)
    if train_subset is not None:
        if not 0 < train_subset <= len(train):
            raise ValueError(f"train_subset must be in 1..{len(train)} for {name!r}, got {train_subset}")
        train = train.subset(slice(0, train_subset))
    return train, test
