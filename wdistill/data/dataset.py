"""In-memory image datasets: uint8 tensors (N, C, H, W) plus integer labels."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageDataset:
    """A whole split held in memory.

    images: uint8 (N, C, H, W); targets: int64 (N,) in [0, num_classes); mean/std: per channel,
    in [0, 1] units; classes: optional class names, index = label.
    """

    images: torch.Tensor
    targets: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = ""
    classes: tuple[str, ...] = ()

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.targets.dim() != 1 or len(self.images) != len(self.targets):
            raise ValueError(f"{len(self.images)} images but labels of shape {tuple(self.targets.shape)}")
        self.targets = self.targets.long()
        if len(self.targets) and (self.targets.min() < 0 or self.targets.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got "
                             f"[{int(self.targets.min())}, {int(self.targets.max())}]")
        if len(self.mean) != self.images.shape[1] or len(self.std) != self.images.shape[1]:
            raise ValueError(f"mean/std need {self.images.shape[1]} channel values")
        if self.classes and len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} class names for {self.num_classes} classes")
        self.classes = tuple(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """(uint8 (C, H, W) image, label): lets the streaming path read an in-memory split too."""
        return self.images[i], int(self.targets[i])

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:])

    def subset(self, index: torch.Tensor | slice, name: str | None = None) -> "ImageDataset":
        return ImageDataset(self.images[index], self.targets[index], self.num_classes,
                            self.mean, self.std, name or self.name, self.classes)


def stratified_indices(targets: torch.Tensor, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """``per_class`` random indices of every class, sorted."""
    picks = []
    for c in torch.unique(targets):
        idx = torch.nonzero(targets == c).flatten()
        if len(idx) < per_class:
            raise ValueError(f"class {int(c)} has {len(idx)} samples, fewer than {per_class}")
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    return torch.cat(picks).sort().values
