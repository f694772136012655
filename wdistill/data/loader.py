"""Batches straight from in-memory tensors: no worker processes, no PIL."""
from __future__ import annotations

from typing import Iterator

import torch

from wdistill.data.augment import Augment
from wdistill.data.dataset import ImageDataset


class BatchLoader:
    """Iterates ``dataset`` in batches of dicts ``{'image', 'target', 'index'}``.

    Shuffling and augmentation draw from a generator seeded with ``(seed, epoch)``, so epoch e
    is the same sequence whether or not the run was interrupted before it. Inside an epoch,
    :meth:`resume_state` (the augmentation generator's state before the batch last yielded) and
    :meth:`start_at` continue it exactly where a step checkpoint left it.

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
        self._start, self._before = None, {"batch": 0}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._start = None

    def start_at(self, batch: int, state: dict | None = None) -> None:
        """The next pass over this epoch starts at ``batch``, its augmentation generator restored
        from ``state`` (:meth:`resume_state` of the interrupted pass: bit-identical batches). Without
        a state (a checkpoint of another number of processes), the generator is seeded from the
        position: the same samples, other random crops."""
        self._start = (batch, state)

    def resume_state(self) -> dict:
        """Where to start again to give the batch last yielded once more (see :meth:`start_at`)."""
        return dict(self._before)

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
        first, saved = self._start or (0, None)
        self._start = None
        if first and saved is not None and "rng" in saved:
            aug_g.set_state(saved["rng"])
        elif first:
            aug_g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch + 104729 * first + self.rank)
        step = self.batch_size * self.world_size
        for b in range(first, len(self)):
            self._before = {"batch": b, "rng": aug_g.get_state()} if self.train else {"batch": b}
            start = b * step + self.rank * self.batch_size
            idx = order[start:min(start + self.batch_size, (b + 1) * step)]
            images = self.dataset.images[idx].to(self.device, non_blocking=True)
            yield {
                "image": self.augment(images, aug_g),
                "target": self.dataset.targets[idx].to(self.device, non_blocking=True),
                "index": idx.to(self.device, non_blocking=True),
            }
