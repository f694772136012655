"""Batches straight from in-memory tensors: no worker processes, no PIL."""
from __future__ import annotations

from typing import Iterator

import torch

from wdistill.data.augment import Augment
from wdistill.data.dataset import ImageDataset


class BatchLoader:
    """Iterates ``dataset`` in batches of dicts ``{'image', 'target', 'index'}``.

    Shuffling and augmentation draw from a generator seeded with ``(seed, epoch)``, so epoch e
    is the same sequence whether or not the run was interrupted before it.

    ``resized_crop=S`` (the ImageNet recipe): training batches are RandomResizedCrops to S x S
    (``rrc_scale``, ``rrc_ratio``), evaluation batches the centre S x S crop.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, train: bool, device="cpu",
                 crop_padding: int = 0, flip: bool = False, seed: int = 0, drop_last: bool | None = None,
                 rank: int = 0, world_size: int = 1, resized_crop: int | None = None,
                 rrc_scale=(0.08, 1.0), rrc_ratio=(3 / 4, 4 / 3)):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.rank, self.world_size = rank, world_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.train = train
        self.device = torch.device(device)
        if train:
            self.augment = Augment(dataset.mean, dataset.std, crop_padding, flip, resized_crop, rrc_scale, rrc_ratio)
        else:
            self.augment = Augment(dataset.mean, dataset.std, center_crop=resized_crop)
        self.seed = seed
        self.drop_last = train if drop_last is None else drop_last
        if self.drop_last and len(dataset) < batch_size * world_size:
            # otherwise every epoch would silently have zero steps
            raise ValueError(f"{dataset.name or 'dataset'} has {len(dataset)} samples, fewer than batch_size "
                             f"{batch_size}, and drop_last is on: lower batch_size or pass drop_last=False")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n, step = len(self.dataset), self.batch_size * self.world_size
        return n // step if self.drop_last else -(-n // step)

    def __iter__(self) -> Iterator[dict]:
        n = len(self.dataset)
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(n, generator=g) if self.train else torch.arange(n)
        # Under torch.distributed every rank draws the same order and takes its slice of each
        # global batch; augmentation then draws from a per-rank stream.
        aug_g = g if self.world_size == 1 else torch.Generator().manual_seed(
            self.seed * 100003 + self.epoch + 7919 * (self.rank + 1))
        step = self.batch_size * self.world_size
        for b in range(len(self)):
            start = b * step + self.rank * self.batch_size
            idx = order[start:min(start + self.batch_size, (b + 1) * step)]
            images = self.dataset.images[idx].to(self.device, non_blocking=True)
            yield {
                "image": self.augment(images, aug_g),
                "target": self.dataset.targets[idx].to(self.device, non_blocking=True),
                "index": idx.to(self.device),
            }
