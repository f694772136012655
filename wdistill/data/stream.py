"""The streaming path: ``torch.utils.data.DataLoader`` worker processes decode and crop each image.

Memory is O(batch x workers x prefetch): the loader holds only the dataset object (for an image
folder, the file list and labels). Batches are the same mapping as ``BatchLoader``'s:
``{'image', 'target', 'index'}``.

Determinism without caring which worker runs what: the sampler (in the main process) gives every
sample of an epoch its own seed, a function of ``(seed, epoch, position in the epoch's global
order)``, and the worker draws that sample's crop and flip from ``random.Random(seed)``. So
epoch e is identical whatever the number of workers, after a resume, and on every rank (rank r
gets exactly the samples, and augmentations, at its slice of each global batch).

Per-image geometry (PIL, no torchvision):
- training, ``resized_crop=S``: RandomResizedCrop (``draw_box``, as ``augment.draw_resized_crop_boxes``: area
  U(scale) x H x W, log-uniform aspect ratio, 10 tries, else the centred box clamped to the ratio
  range), resized to S x S bilinearly by Pillow (antialiased when shrinking, as torchvision's PIL
  path), mirrored with probability 1/2 when ``flip``;
- evaluation, ``resized_crop=S``: shorter side resized to ``resize`` (bilinear), centre S x S
  crop (origin ``floor((side - S) / 2)``);
- ``crop_padding=p`` / ``flip`` without a resized crop: zero-pad p, crop back at a random offset,
  mirror (the CIFAR recipe), on the image tensor.
Workers return uint8 (or the user's float) tensors; the (x / 255 - mean) / std normalisation runs
in the main process on the training device, on 4x fewer bytes than float would move.
"""
from __future__ import annotations

import math
import random
from functools import partial
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Sampler

from wdistill.data.augment import center_crop, crop_flip, fallback_box, resized_crop_flip
from wdistill.data.samples import Keyed, bad_message, check_batch, collate, ignore_signals, workers_start_shielded
from wdistill.errors import BadImages, ConfigError


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The generator seed of the sample at ``position`` of epoch ``epoch``'s global order."""
    return ((seed * 1_000_003 + epoch) * 2_147_483_647 + position) % (2 ** 63 - 1)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The global sample order of an epoch: the same permutation ``BatchLoader`` draws."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))


class ShardedBatchSampler(Sampler):
    """Batches of ``(index, sample_seed)`` for one rank.

    Every rank draws the same order from (seed, epoch); global batch b is positions
    ``[b * B * W, (b + 1) * B * W)`` and rank r takes ``[b * B * W + r * B, ... + B)`` of it, as
    ``BatchLoader`` does. ``len()`` is the number of steps per epoch (without drop_last, a rank
    whose slice of the last partial batch is empty skips it instead of yielding an empty batch).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = epoch, 0

    def __len__(self) -> int:
        step = self.batch_size * self.world_size
        return self.n // step if self.drop_last else -(-self.n // step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(self.n, self.seed, self.epoch, self.shuffle).tolist()
        step = self.batch_size * self.world_size
        first, self.start = self.start, 0  # a resumed epoch starts once at its batch, then from 0
        for b in range(first, len(self)):
            start = b * step + self.rank * self.batch_size
            stop = min(start + self.batch_size, (b + 1) * step, self.n)
            if start < stop:  # a rank's slice of the last partial (evaluation) batch may be empty
                yield [(order[p], sample_seed(self.seed, self.epoch, p)) for p in range(start, stop)]


def to_tensor(image) -> torch.Tensor:
    """A PIL image, numpy array or tensor -> (C, H, W) tensor; uint8 stays uint8."""
    if isinstance(image, torch.Tensor):
        t = image
    elif isinstance(image, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(image))
        if t.dim() == 3 and t.shape[2] in (1, 3, 4) and t.shape[0] not in (1, 3, 4):
            t = t.permute(2, 0, 1)  # numpy images are (H, W, C)
    elif not isinstance(image, Image.Image):
        raise TypeError(f"an image must be a PIL image, a numpy array or a tensor, got a {type(image).__name__}")
    else:  # PIL: one numpy copy into (C, H, W), then a single torch call (per-call overhead dominates)
        arr = np.asarray(image)
        arr = np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        return torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # Pillow's buffer is read-only
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ValueError(f"an image must be (H, W) or (C, H, W), got shape {tuple(t.shape)}")
    if t.dtype not in (torch.uint8, torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(f"image tensors must be uint8 (0..255) or float, got {t.dtype}")
    return t.contiguous()


def draw_box(rng: random.Random, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
             tries: int = 10) -> tuple[int, int, int, int]:
    """One RandomResizedCrop box (top, left, h, w): the distribution of
    ``augment.draw_resized_crop_boxes`` (area U(scale) x H x W, aspect exp(U(log ratio)), first of
    10 tries that fits, at a uniform position; else the centred box clamped to the ratio range),
    drawn with Python's ``random`` -- one image at a time, ~100x cheaper than small torch ops."""
    area = height * width
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(tries):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(lo, hi))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    h, w = fallback_box(height, width, ratio)
    return (height - h) // 2, (width - w) // 2, h, w


class ImageTransform:
    """One image -> cropped (C, S, S) tensor, drawing from a per-sample seed (see module doc)."""

    def __init__(self, train: bool, crop_padding: int = 0, flip: bool = False, resized_crop: int | None = None,
                 resize: int | None = None, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), rgb: bool = False):
        self.train, self.crop_padding, self.flip = train, crop_padding, flip
        self.resized_crop, self.resize, self.scale, self.ratio, self.rgb = resized_crop, resize, scale, ratio, rgb

    def __call__(self, image, seed: int) -> torch.Tensor:
        rng = random.Random(seed)
        s = self.resized_crop
        if not isinstance(image, (torch.Tensor, np.ndarray)):  # PIL: crop and resize in Pillow
            if self.rgb and image.mode != "RGB":
                image = image.convert("RGB")
            if s is not None and self.train:
                top, left, h, w = draw_box(rng, image.height, image.width, self.scale, self.ratio)
                image = image.resize((s, s), Image.BILINEAR, box=(left, top, left + w, top + h))
                if self.flip and rng.random() < 0.5:
                    image = image.transpose(Image.FLIP_LEFT_RIGHT)
                return to_tensor(image)
            if s is not None or self.resize is not None:
                image = resize_center_crop(image, self.resize or s, s or self.resize)
            x = to_tensor(image)
        else:
            x = to_tensor(image)
            if s is not None and self.train:
                box = torch.tensor([draw_box(rng, x.shape[1], x.shape[2], self.scale, self.ratio)])
                flips = torch.tensor([rng.random() < 0.5]) if self.flip else None
                y = resized_crop_flip(x[None].float(), box, s, flips)[0]
                return y.round_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y
            if s is not None:
                return center_crop(x, s).contiguous()
        if self.train and (self.crop_padding or self.flip):
            p = self.crop_padding
            offsets = torch.tensor([[rng.randint(0, 2 * p)], [rng.randint(0, 2 * p)]]) if p else None
            flips = torch.tensor([rng.random() < 0.5]) if self.flip else None
            x = crop_flip(x[None], p, offsets, flips)[0]
        return x


def resize_center_crop(image, resize: int, crop: int):
    """PIL image: shorter side to ``resize`` (bilinear), then the central ``crop`` x ``crop``."""
    w, h = image.size
    k = resize / min(w, h)
    nw, nh = max(resize, round(w * k)), max(resize, round(h * k))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.BILINEAR)
    if crop > min(nw, nh):
        raise ValueError(f"centre crop {crop} is larger than the image resized to {nw}x{nh}: "
                         f"set data.options.size >= {crop}")
    left, top = (nw - crop) // 2, (nh - crop) // 2
    return image.crop((left, top, left + crop, top + crop))


class StreamLoader:
    """Batches ``{'image', 'target', 'index'}`` from any map-style ``dataset`` through a DataLoader.

    ``mean``/``std`` (per channel, [0, 1] units) normalise uint8 images as ``(x/255 - mean)/std``;
    float images are passed through as the dataset made them (a user's float tensors are taken as
    already normalised). ``workers`` processes decode and crop; ``pin_memory`` on CUDA.
    """

    def __init__(self, dataset, batch_size: int, train: bool, device="cpu", transform: ImageTransform | None = None,
                 mean=None, std=None, seed: int = 0, drop_last: bool | None = None, rank: int = 0,
                 world_size: int = 1, workers: int = 0, prefetch_factor: int = 2, name: str = "",
                 on_bad_image: str = "error", log: Callable[[str], None] | None = None,
                 shield_signals: tuple[str, ...] = (), num_classes: int | None = None):
        self.dataset, self.batch_size, self.train, self.num_classes = dataset, batch_size, train, num_classes
        self.what, self.on_bad_image, self.log = name or "the data", on_bad_image, log or (lambda msg: None)
        # defer_errors: under on_bad_image=error a bad batch is yielded (an empty dict when a sample
        # found no replacement) with last_bad set, and a batch with a label out of range or images of two
        # sizes as an empty dict with last_problem set, for the Trainer to stop the ranks together after a
        # checkpoint; otherwise the loader raises BadImages or the ConfigError itself.
        self.defer_errors, self.last_bad, self.last_failed, self.last_problem = False, [], False, None
        self.bad_seen: dict[str, str] = {}  # every bad file met so far -> its reason (logged once)
        self.skipped, self._before = 0, {"batch": 0, "skipped": 0}
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.drop_last = train if drop_last is None else drop_last
        n = len(dataset)
        if self.drop_last and n < batch_size * world_size:
            raise ValueError(f"{name or 'dataset'} has {n} samples, fewer than one global batch "
                             f"({batch_size} x {world_size} ranks), and drop_last is on: lower data.batch_size")
        self.sampler = ShardedBatchSampler(n, batch_size, train, seed, self.drop_last, rank, world_size)
        self.transform = transform or ImageTransform(train)
        self.norm = None
        if mean is not None and std is not None:
            m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
            s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255
            if (s <= 0).any():
                raise ValueError(f"std must be positive per channel, got {tuple(std)}")
            self.norm = (1.0 / s).to(self.device), (-m / s).to(self.device)
        workers = max(0, int(workers))
        self.workers, self.shield_signals = workers, tuple(shield_signals)
        # Its own generator draws the workers' base seed, so iterating never moves the global RNG
        # (a resumed epoch recreates the iterator at another point of the run).
        self.loader = DataLoader(Keyed(dataset, self.transform), batch_sampler=self.sampler, num_workers=workers,
                                 pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                                 prefetch_factor=prefetch_factor if workers > 0 else None, collate_fn=collate,
                                 generator=torch.Generator().manual_seed(seed),
                                 worker_init_fn=partial(ignore_signals, self.shield_signals))

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.skipped = 0

    def start_at(self, batch: int, state: dict | None = None) -> None:
        """The next pass over this epoch starts at ``batch`` (a resumed run): the sampler's order
        and per-sample seeds depend on (seed, epoch, position) alone, so nothing else is needed;
        ``state`` (from :meth:`resume_state`) restores the count of skipped images."""
        self.sampler.start = batch
        self.skipped = int((state or {}).get("skipped", 0))

    def resume_state(self) -> dict:
        """Where to start again to give the batch last yielded once more (see :meth:`start_at`)."""
        return dict(self._before)

    def __len__(self) -> int:
        return len(self.sampler)

    def _met_bad(self, bad: list) -> None:
        if self.on_bad_image == "skip":
            self.skipped += len(bad)
            for _, name, reason in bad:
                if name not in self.bad_seen:
                    self.log(f"data: skipped {name} ({reason}): the next readable sample takes its place "
                             "(data.on_bad_image=skip)")
            self.bad_seen.update({name: reason for _, name, reason in bad})
        elif not self.defer_errors:
            raise BadImages(bad_message(bad, self.what))

    def __iter__(self) -> Iterator[dict]:
        first = self.sampler.start
        with workers_start_shielded(self.shield_signals):  # workers (if any) are started here
            batches = iter(self.loader)
        for b, (images, targets, index, bad, failed) in enumerate(batches, first):
            self._before = {"batch": b, "skipped": self.skipped}
            self.last_bad, self.last_failed, self.last_problem = bad, failed, None
            if failed:
                if not self.defer_errors:
                    raise BadImages(bad_message(bad, self.what, exhausted=True))
                yield {}
                continue
            if bad:
                self._met_bad(bad)
            try:
                check_batch(images, targets, index, self.num_classes, self.what)  # on the host copies: no sync
            except ConfigError as e:
                if not self.defer_errors:
                    raise
                self.last_problem = str(e)
                yield {}
                continue
            x = images.to(self.device, non_blocking=True)
            if x.dtype == torch.uint8:
                x = x.float()
                if self.norm is not None:
                    x = x.mul_(self.norm[0]).add_(self.norm[1])
                else:
                    x = x.div_(255)
            elif x.dtype != torch.float32:
                x = x.float()
            yield {"image": x, "target": targets.to(self.device, non_blocking=True),
                   "index": index.to(self.device, non_blocking=True)}
