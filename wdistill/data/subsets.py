"""Parts of a split: its first N items (``data.train_subset``) and a stratified held-out part
(``data.holdout``) that replaces the test split for model selection, so that choosing a recipe
or a weight never looks at the test images.

Every kind of split is cut without reading an image: in-memory sets by indexing their tensors,
image folders by their file lists (nothing decoded), a user's Dataset by index, keeping its
``classes`` and ``targets``.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from wdistill.data.dataset import ImageDataset
from wdistill.data.samples import FolderImages
from wdistill.data.user import known_targets
from wdistill.errors import ConfigError


class Indexed(Dataset):
    """The items ``index`` of a user's dataset, keeping ``classes`` and (when known) ``targets``."""

    def __init__(self, ds, index: torch.Tensor, targets: torch.Tensor | None = None):
        self.ds, self.index = ds, [int(i) for i in index]
        self.classes = getattr(ds, "classes", None)
        t = targets if targets is not None else known_targets(ds)
        if t is not None:
            self.targets = t[index]

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        if not 0 <= i < len(self.index):
            raise IndexError(i)
        return self.ds[self.index[i]]


def take(ds, index: torch.Tensor, targets: torch.Tensor | None = None):
    """The items ``index`` of any split, of the same kind where there is one."""
    if isinstance(ds, ImageDataset):
        return ds.subset(index)
    if isinstance(ds, FolderImages):
        files = [ds.files[i] for i in index]
        kept = set(files)
        return FolderImages(files, ds.targets[index].tolist(), ds.classes, ds.name,
                            [f for f in ds.empty if f in kept], ds.root)
    return Indexed(ds, index, targets)


def head(ds, n: int | None, what: str):
    """The first ``n`` items (all when ``n`` is None)."""
    if n is None:
        return ds
    if not 0 < n <= len(ds):
        raise ConfigError(f"data.{what} must be in 1..{len(ds)}, got {n}")
    return take(ds, torch.arange(n))


def stratified_holdout(targets: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) sorted indices: ``round(fraction * n_c)`` random items of every class c
    (at least one of any class with two or more items) are held out, the rest kept."""
    g = torch.Generator().manual_seed(seed)
    held = []
    for c in torch.unique(targets):
        idx = torch.nonzero(targets == c).flatten()
        k = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        held.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    held = torch.cat(held).sort().values
    keep = torch.ones(len(targets), dtype=torch.bool)
    keep[held] = False
    return torch.nonzero(keep).flatten(), held


def holdout(train, fraction: float, seed: int, targets: torch.Tensor) -> tuple:
    """(training part, held-out part) of ``train``, stratified by its ``targets``."""
    if not 0 < fraction < 1:
        raise ConfigError(f"data.holdout must be a fraction in (0, 1), e.g. 0.2, got {fraction}")
    kept, held = stratified_holdout(targets, fraction, seed)
    if not len(held) or not len(kept):
        raise ConfigError(f"data.holdout={fraction} of {len(targets)} training items leaves an empty part: use more "
                          "data or another fraction")
    return take(train, kept, targets), take(train, held, targets)
