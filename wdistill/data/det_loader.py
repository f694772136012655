"""A run's detection data: a COCO-format folder's train and evaluation splits, streamed in batches
of lists (images of any size, one target dict each).

A COCO-format folder holds ``annotations/instances_<split>.json`` and the images of that split in
``images/<split>/`` or ``<split>/`` (COCO 2017's own layout: ``train2017/``, ``val2017/``); the
split names are ``data.options.train_split`` / ``eval_split``. The bad-input policy is
``wdistill.data.coco``'s.

Randomness: batches are drawn per (seed, epoch) as the classification stream does
(``stream.ShardedBatchSampler``), and each sample's random transforms (the flip) run under its own
seed from that draw, in a forked generator: the same run gives the same images whatever the number
of worker processes, and the detector's own samplers (which read torch's global generator) are not
disturbed.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from wdistill.data.coco import CocoDetection, collate_detection
from wdistill.data.det_transforms import detection_transforms
from wdistill.data.samples import default_workers, ignore_signals, workers_start_shielded
from wdistill.data.stream import ShardedBatchSampler
from wdistill.errors import ConfigError

FLIP = 0.5  # horizontal flip probability when data.flip is on (the default for detection)


def split_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """(image directory, annotation file) of ``split`` in the COCO-format folder ``root``."""
    root = Path(root)
    ann = root / "annotations" / f"instances_{split}.json"
    images = root / "images" / split
    if not images.is_dir():
        images = root / split
    if not ann.is_file():
        raise ConfigError(f"data.root {root}: no annotation file {ann} for split {split!r}. A COCO-format folder "
                          "holds annotations/instances_<split>.json and images/<split>/ (or <split>/, as COCO's "
                          "train2017/): fix data.root, or name the splits with data.options.train_split / eval_split"
                          + _splits_there(root))
    if not images.is_dir():
        raise ConfigError(f"data.root {root}: no image directory for split {split!r} (looked for "
                          f"{root / 'images' / split} and {root / split})")
    return images, ann


def _splits_there(root: Path) -> str:
    """The splits ``root/annotations`` does hold, as a sentence (empty when none)."""
    found = sorted(p.name[len("instances_"):-len(".json")] for p in (root / "annotations").glob("instances_*.json"))
    return f". Its annotations name the splits {', '.join(found)}" if found else ""


def coco_splits(root, train_split: str = "train", eval_split: str = "val", size: int | None = None,
                max_size: int | None = None, keep_empty: bool = False, flip: float = FLIP,
                progress: bool = True) -> tuple[CocoDetection, CocoDetection]:
    """(train, eval) CocoDetection datasets of a COCO-format folder: the training split with
    ``detection_transforms(train=True)`` (resize to ``size``/``max_size`` when given, flip with
    probability ``flip``), the evaluation split resized only. Images without boxes are skipped for
    training unless ``keep_empty`` and always kept for evaluation."""
    if root is None:
        raise ConfigError("data.name=coco needs data.root: a folder holding annotations/instances_<split>.json "
                          "and the images of each split")
    t_images, t_ann = split_paths(root, train_split)
    e_images, e_ann = split_paths(root, eval_split)
    try:
        t_train = detection_transforms(True, size, max_size, flip)
        t_eval = detection_transforms(False, size, max_size)
    except ValueError as e:
        raise ConfigError(f"data.options: {e}") from None
    train = CocoDetection(t_images, t_ann, t_train, train=True, keep_empty=keep_empty, progress=progress)
    test = CocoDetection(e_images, e_ann, t_eval, train=False, progress=progress)
    if train.category_ids != test.category_ids:
        raise ConfigError(f"{t_ann} and {e_ann} list different categories ({train.category_ids} vs "
                          f"{test.category_ids}): both splits need the same 'categories'")
    return train, test


def head(ds: CocoDetection, n: int | None, what: str = "test_subset") -> CocoDetection:
    """The first ``n`` images of ``ds`` (a shallow copy sharing its annotation index)."""
    if n is None:
        return ds
    if n > len(ds):
        raise ConfigError(f"data.{what}={n} but the split has {len(ds)} usable images")
    out = copy.copy(ds)
    out.items = ds.items[:n]
    return out


def with_transforms(ds: CocoDetection, transforms) -> CocoDetection:
    out = copy.copy(ds)
    out.transforms = transforms
    return out


class _Seeded(Dataset):
    """``dataset[(index, seed)]``: the item, its random transforms drawn under ``seed`` (forked RNG)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        i, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[i]


class DetectionLoader:
    """Batches ``{'images': [(3, H, W) float in [0, 1]], 'targets': [dict], 'target': the same
    list}`` (``target`` is what the training loop counts samples by), reshuffled per epoch;
    training batches drop the last partial one. Under torchrun, ``batch_size`` is one rank's share
    and rank r takes its slice of every global batch (``stream.ShardedBatchSampler``)."""

    def __init__(self, dataset, batch_size: int, train: bool, device="cpu", seed: int = 0, workers: int = 0,
                 prefetch_factor: int = 2, name: str = "the dataset", shield_signals: tuple[str, ...] = (),
                 rank: int = 0, world_size: int = 1):
        if train and len(dataset) < batch_size * world_size:
            raise ConfigError(f"{name} has {len(dataset)} usable images, fewer than one batch "
                              f"({batch_size * world_size}): lower data.batch_size")
        self.dataset, self.device, self.shield_signals = dataset, torch.device(device), tuple(shield_signals)
        self.world_size = world_size
        self.sampler = ShardedBatchSampler(len(dataset), batch_size, train, seed, drop_last=train, rank=rank,
                                           world_size=world_size)
        self.loader = DataLoader(_Seeded(dataset), batch_sampler=self.sampler, num_workers=workers,
                                 collate_fn=collate_detection, persistent_workers=workers > 0,
                                 prefetch_factor=prefetch_factor if workers > 0 else None,
                                 generator=torch.Generator().manual_seed(seed),  # iterating leaves the global RNG
                                 worker_init_fn=partial(ignore_signals, self.shield_signals))  # as StreamLoader
        self._before = {"batch": 0}

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def start_at(self, batch: int, state: dict | None = None) -> None:
        """The next pass over this epoch starts at ``batch`` (a run resumed from a step checkpoint):
        the order and each sample's flip depend on (seed, epoch, position) alone."""
        self.sampler.start = batch

    def resume_state(self) -> dict:
        """Where to start again to give the batch last yielded once more (see :meth:`start_at`)."""
        return dict(self._before)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict]:
        first = self.sampler.start
        with workers_start_shielded(self.shield_signals):
            batches = iter(self.loader)
        for b, (images, targets) in enumerate(batches, first):
            self._before = {"batch": b}
            images = [x.to(self.device, non_blocking=True) for x in images]
            targets = [{k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                        for k, v in t.items()} for t in targets]
            yield {"images": images, "targets": targets, "target": targets}


@dataclass
class DetectionData:
    """What a detection run needs from its data (the counterpart of ``build.RunData``).

    num_classes: object categories K (the detectors' logits have K + 1, background at 0)."""

    train_loader: Any
    test_loader: Any
    plain_batches: Callable  # -> iterator of un-flipped training batches, for statistics over the training set
    num_classes: int
    channels: int
    num_samples: int
    train_set: CocoDetection
    test_set: CocoDetection
    train_targets: Any = None
    path: str = "stream"

    @property
    def coco_gt(self):
        return self.test_set.coco

    @property
    def eval_image_ids(self) -> list[int]:
        return [item[0] for item in self.test_set.items]


def build_detection_data(d, seed: int = 0, device="cpu", log: Callable[[str], None] = print,
                         progress: bool = True, datasets: tuple | None = None,
                         shield_signals: tuple[str, ...] = (), rank: int = 0, world_size: int = 1,
                         batch_size: int | None = None, eval_batch_size: int | None = None) -> DetectionData:
    """Loaders of the data section ``d`` (``name: coco``) for process ``rank`` of ``world_size``:
    each rank loads its share of every batch, ``batch_size``/``eval_batch_size`` rows (per rank, as the
    trainer derives them; default: the section's), and the statistics batches, ``plain_batches``, are
    the whole training split on every rank.
    ``datasets``: (train, eval) CocoDetection datasets to use instead of reading ``d.root`` (their
    own transforms kept); ``shield_signals``: the run's stop signals, which the workers ignore (the
    main process stops them)."""
    if datasets is not None:
        train, test = datasets
        if not all(isinstance(x, CocoDetection) for x in datasets):
            raise ConfigError("detection data passed in must be (train, eval) wdistill.data.CocoDetection datasets")
    else:
        flip = FLIP if d.flip in (None, True) else 0.0
        train, test = coco_splits(d.root, **d.options, flip=flip, progress=progress)
    train, test = head(train, d.train_subset, "train_subset"), head(test, d.test_subset, "test_subset")
    workers = d.workers if d.workers is not None else default_workers()
    common = dict(device=device, workers=workers, prefetch_factor=d.prefetch_factor, shield_signals=shield_signals)
    shard = dict(rank=rank, world_size=world_size)
    train_loader = DetectionLoader(train, batch_size or d.batch_size, True, seed=seed, name="the training split",
                                   **common, **shard)
    test_loader = DetectionLoader(test, eval_batch_size or d.eval_batch_size, False, **common, **shard)
    plain = with_transforms(train, test.transforms)

    def plain_batches():
        return iter(DetectionLoader(plain, d.eval_batch_size, False, **common))
    log(f"data: coco {d.root} -- {len(train):,} train / {len(test):,} evaluation images, {train.num_classes} "
        f"categories; streamed, {workers} worker{'s' * (workers != 1)}; training: {train.summary()}")
    log(f"augmentation: {train.transforms}")
    return DetectionData(train_loader, test_loader, plain_batches, train.num_classes, 3, len(train), train, test)
