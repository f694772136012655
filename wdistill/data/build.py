"""One entry point from a ``data:`` config section (or datasets passed in) to a run's loaders.

Which path runs (``data.loader``):
- ``memory``: the split lives in RAM as uint8 tensors, augmented in batches on the training device
  (``BatchLoader``), the fast path;
- ``stream``: ``torch.utils.data.DataLoader`` worker processes decode and crop (``StreamLoader``);
- ``auto`` (default): built-in tensor data sets (CIFAR, MNIST-like, the bundled sample) are in
  memory already; an image folder goes to memory when its decoded uint8 train + test splits at
  ``options.size`` take at most ``data.memory_limit_gb`` (default 4 GiB: CIFAR-100 is 0.18 GB, so
  every small benchmark set fits many times over, and a node running 8 ranks still holds 8
  copies in 32 GB; ImageNet at 256 px, ~250 GB, streams); a user's own Dataset streams, since its
  ``__getitem__`` may augment (a decoded copy would freeze one draw) -- ``memory`` reads it once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from wdistill.data.augment import Augmentation, augment_recipe, resolve
from wdistill.data.dataset import ImageDataset
from wdistill.data.folder import IMAGENET_MEAN, IMAGENET_STD, decode_files, folder_images
from wdistill.data.loader import BatchLoader
from wdistill.data.registry import DETECTION_DATASETS, load_dataset
from wdistill.data.samples import FolderImages, bad_message, default_workers
from wdistill.data.stream import ImageTransform, StreamLoader
from wdistill.data.subsets import head, holdout
from wdistill.data.user import (
    check_dataset,
    infer_num_classes,
    known_targets,
    load_factory,
    materialize,
    probe_channels,
    scan_targets,
)
from wdistill.errors import BadImages, ConfigError

GIB = 1024 ** 3


@dataclass
class RunData:
    """What a run needs from its data: the loaders and the facts about the training split."""

    train_loader: Any
    test_loader: Any
    plain_batches: Callable  # -> iterator of un-augmented, normalised training batches (unsharded)
    num_classes: int
    channels: int
    num_samples: int
    train_targets: torch.Tensor | None  # None: unknown (no `targets` and no term needed them)
    path: str  # "memory" or "stream"
    augmentation: Augmentation
    train_set: Any
    test_set: Any


def open_datasets(d) -> tuple[Any, Any]:
    """(train, test) of a data section; image folders are only listed here, never decoded."""
    if d.name == "python":
        return load_factory(d.factory, d.kwargs)
    if d.name in DETECTION_DATASETS:
        raise ConfigError(f"data.name={d.name} holds detection data: it is read by the detection task (task: "
                          "detection, run by `wdistill train/distill` or wdistill.engine.make_trainer), not by the "
                          "classification trainer")
    if d.name == "image_folder":  # listed only: the memory path decodes just the files it keeps
        if d.root is None:
            raise ConfigError("data.name=image_folder needs data.root: a directory holding train/<class>/* "
                              "and val/<class>/*")
        unknown = sorted(set(d.options) - {"size", "cache_dir", "mean", "std"})
        if unknown:
            raise ConfigError(f"image_folder has no option {', '.join(unknown)}; its options: size, cache_dir, "
                              "mean, std")
        try:
            train = folder_images(Path(d.root) / "train")
            return train, folder_images(Path(d.root) / "val", train.classes)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"data.root: {e}") from None
    try:
        return load_dataset(d.name, d.root, **d.options)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"data: {e}") from None


def _empty_files(train, test, on_bad_image: str) -> None:
    """Streamed folders: 0-byte files are known from the listing, so under on_bad_image=error they
    stop the run here, all of them named, before anything trains."""
    empty = [(0, f, "an empty file (0 bytes)") for ds in (train, test) for f in getattr(ds, "empty", ())]
    if empty and on_bad_image == "error":
        raise BadImages(bad_message(empty, "the image folder"))


def to_memory(d, ds, name: str, num_classes: int, mean=None, std=None, log: Callable[[str], None] = print
              ) -> ImageDataset:
    """A split as in-memory uint8 tensors: an image folder's files decoded once at ``options.size``
    (only the files of this split: a subset or a held-out part never decodes the rest; every file
    before anything trains, so ``data.on_bad_image`` applies to all of them at once), a user's
    Dataset read once."""
    if isinstance(ds, FolderImages):
        o = d.options
        return decode_files(ds.root, ds.files, ds.labels, ds.classes, o.get("size", 32), o.get("cache_dir"),
                            o.get("mean", IMAGENET_MEAN), o.get("std", IMAGENET_STD),
                            on_bad_image=d.on_bad_image, log=log)
    return materialize(ds, name, num_classes, mean, std)


def _num_classes(train, given: int | None, hint: int | None) -> tuple[int, bool]:
    """(class count, whether it came from the student's classifier): the config's, else the data
    set's, else the student's output width."""
    try:
        return infer_num_classes(train, given), False
    except ConfigError:
        if hint is None:
            raise
        return hint, True


def _targets(train, need: bool, workers: int, rank: int) -> torch.Tensor | None:
    """The training labels: known without reading an image, else read once when ``need``."""
    targets = train.targets if isinstance(train, ImageDataset) else known_targets(train)
    if targets is None and need:
        targets = scan_targets(train, workers, progress=rank == 0)
    return targets


def _choose_path(d, train, test, stored: int | None) -> tuple[str, str]:
    """("memory" or "stream", why) for the data section and the opened splits (module docstring)."""
    if isinstance(train, ImageDataset):
        path = "stream" if d.loader == "stream" else "memory"
        return path, ("in-memory data set" if path == "memory" else "data.loader=stream")
    if isinstance(train, FolderImages):
        est = (len(train) + len(test)) * 3 * stored * stored
        path = d.loader if d.loader != "auto" else ("memory" if est <= d.memory_limit_gb * GIB else "stream")
        return path, (f"data.loader={d.loader}" if d.loader != "auto" else
                      f"decoded size {est / GIB:.2f} GiB {'<=' if path == 'memory' else '>'} "
                      f"data.memory_limit_gb={d.memory_limit_gb:g}")
    path = "memory" if d.loader == "memory" else "stream"
    return path, ("data.loader=memory" if path == "memory" else "a user Dataset streams (data.loader=memory loads it)")


def _normalisation(d, train) -> tuple:
    """(mean, std) of the images: the data set's own, ImageNet's for folders, else the section's."""
    if isinstance(train, ImageDataset):
        return train.mean, train.std
    if isinstance(train, FolderImages):
        return d.options.get("mean", IMAGENET_MEAN), d.options.get("std", IMAGENET_STD)
    return (d.mean if d.mean is not None else getattr(train, "mean", None),
            d.std if d.std is not None else getattr(train, "std", None))


def build_loaders(d, *, data: tuple | None = None, seed: int = 0, device="cpu", rank: int = 0,
                  world_size: int = 1, batch_size: int | None = None, eval_batch_size: int | None = None,
                  need_targets: bool = False, num_classes_hint: int | None = None,
                  log: Callable[[str], None] = print, shield_signals: tuple[str, ...] = ()) -> RunData:
    """Loaders for data section ``d`` (or the ``(train, test)`` datasets given), sharded for ``rank``.

    ``batch_size``/``eval_batch_size``: per rank (default: the section's). ``need_targets``: a term
    samples by label (CRD, WCoRD), so labels are read even when the dataset does not list them.
    ``num_classes_hint``: the class count the student's classifier outputs, used when neither the
    section nor the data set says it (the labels are then checked against it). ``shield_signals``:
    the stop signals, which streaming workers ignore (the Trainer's).
    """
    batch_size = batch_size or d.batch_size
    eval_batch_size = eval_batch_size or d.eval_batch_size
    if data is not None:
        train, test = data
        for role, ds in (("train_data", train), ("test_data", test)):
            check_dataset(ds, role)
        recipe_name = train.name if isinstance(train, ImageDataset) else "python"
    else:
        train, test = open_datasets(d)
        recipe_name = d.name
    train, test = head(train, d.train_subset, "train_subset"), head(test, d.test_subset, "test_subset")
    _empty_files(train, test, d.on_bad_image)
    num_classes, from_student = _num_classes(train, d.num_classes, num_classes_hint)
    need_targets = need_targets or from_student  # a count read off the student is checked against the labels
    if d.holdout:  # model selection on a stratified part of the training split, never on the test split
        train, test = holdout(train, d.holdout, d.holdout_seed, _targets(train, need=True, workers=0, rank=rank))
        log(f"holdout: {len(test):,} training images (stratified, seed {d.holdout_seed}) are the evaluation split; "
            f"the test split is not used")
    folder = isinstance(train, FolderImages)
    stored = d.options.get("size", 32) if folder else None

    path, why = _choose_path(d, train, test, stored)
    mean, std = _normalisation(d, train)
    if path == "memory" and not isinstance(train, ImageDataset):
        train, test = (to_memory(d, train, "train", num_classes, mean, std, log),
                       to_memory(d, test, "test", num_classes, mean, std, log))

    channels = probe_channels(train)
    side = train.size[0] if isinstance(train, ImageDataset) else 0
    aug = resolve(d, augment_recipe(recipe_name), side, stored)
    if side and aug.crop_padding > side // 2:
        raise ConfigError(f"data.crop_padding={aug.crop_padding} on {side}-pixel images would crop mostly padding: "
                          f"use at most {side // 2} (the CIFAR recipe pads 4 on 32 px)")
    workers = d.workers if d.workers is not None else max(1, default_workers() // world_size)
    targets = _targets(train, need_targets, workers if path == "stream" else 0, rank)
    if targets is not None and len(targets) and (targets.min() < 0 or targets.max() >= num_classes):
        raise ConfigError(f"training labels span [{int(targets.min())}, {int(targets.max())}] but num_classes="
                          f"{num_classes}: labels must lie in [0, num_classes)")

    try:
        return _loaders(d, train, test, path, why, aug, mean, std, workers, targets, num_classes, channels,
                        recipe_name, seed, device, rank, world_size, batch_size, eval_batch_size, log,
                        shield_signals)
    except ValueError as e:  # a loader refusing its settings (batch larger than the split, ...)
        raise ConfigError(f"data: {e}") from None


def _loaders(d, train, test, path, why, aug, mean, std, workers, targets, num_classes, channels, recipe_name,
             seed, device, rank, world_size, batch_size, eval_batch_size, log, shield_signals) -> RunData:
    shard = dict(rank=rank, world_size=world_size)
    folder = isinstance(train, FolderImages)
    stored = d.options.get("size", 32) if folder else None
    if path == "memory":
        crop = dict(resized_crop=aug.resized_crop, rrc_scale=aug.scale, rrc_ratio=aug.ratio)
        train_loader = BatchLoader(train, batch_size, True, device, aug.crop_padding, aug.flip, seed=seed,
                                   **shard, **crop)
        test_loader = BatchLoader(test, eval_batch_size, False, device, **shard, resized_crop=aug.resized_crop)

        def plain_batches():
            return iter(BatchLoader(train, eval_batch_size, False, device, **crop))
        detail = "uint8 tensors in memory, batched augmentation on the device"
    else:
        rgb = folder
        t_train = ImageTransform(True, aug.crop_padding, aug.flip, aug.resized_crop, None, aug.scale, aug.ratio, rgb)
        t_eval = ImageTransform(False, resized_crop=aug.resized_crop,
                                resize=stored if folder else None, rgb=rgb)
        common = dict(mean=mean, std=std, workers=workers, prefetch_factor=d.prefetch_factor,
                      on_bad_image=d.on_bad_image, log=log, shield_signals=shield_signals, num_classes=num_classes)
        train_loader = StreamLoader(train, batch_size, True, device, t_train, seed=seed, **shard, **common,
                                    name="the training split")
        test_loader = StreamLoader(test, eval_batch_size, False, device, t_eval, **shard, **common,
                                   name="the test split")

        def plain_batches():
            return iter(StreamLoader(train, eval_batch_size, False, device, t_eval, **common,
                                     name="the training split"))
        detail = (f"torch DataLoader, {workers} worker{'s' * (workers != 1)}, prefetch {d.prefetch_factor}, "
                  f"pin_memory={torch.device(device).type == 'cuda'}"
                  + ("" if mean is not None else "; uint8 images scaled to [0, 1], float images as given; no mean/std "
                                                 "(set data.mean/std)"))
    log(f"data: {recipe_name} -- {len(train):,} train / {len(test):,} test images, {num_classes} classes, "
        f"{channels} channel{'s' * (channels != 1)}; {path} path ({why}): {detail}")
    log(f"augmentation: {aug.describe}")
    return RunData(train_loader, test_loader, plain_batches, num_classes, channels, len(train), targets, path, aug,
                   train, test)
