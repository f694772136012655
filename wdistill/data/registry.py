"""Dataset names usable in configs -> (train, test) ImageDatasets."""
from __future__ import annotations

from typing import Callable

from .dataset import ImageDataset
from .idx import fashion_mnist, mnist
from .sample import bundled_sample


def _fmnist(root, **kw):
    return fashion_mnist("train", root), fashion_mnist("test", root)


def _mnist(root, **kw):
    return mnist("train", root), mnist("test", root)


def _sample(root, **kw):
    return bundled_sample("train"), bundled_sample("test")


DATASETS: dict[str, Callable[..., tuple[ImageDataset, ImageDataset]]] = {
    "fmnist_sample": _sample,
    "fashion_mnist": _fmnist,
    "mnist": _mnist,
}


def load_dataset(name: str, root: str | None = None, **kw) -> tuple[ImageDataset, ImageDataset]:
    """(train, test) of dataset ``name``; ``root`` is its directory where it needs one."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](root, **kw)
