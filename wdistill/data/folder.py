"""ImageNet-style image folders (``root/<class>/<image>``), decoded once into a uint8 tensor cache.

Each image is converted to RGB, resized so its shorter side is ``size`` (bilinear, antialiased
when shrinking, as Pillow does), and centre-cropped to ``size`` x ``size`` (crop origin
``floor((side - size) / 2)``). Classes are the sub-folder names in sorted order, label = rank.
The decoded split is saved as one ``.npz`` keyed by the file list, sizes and modification
times, so a later load skips Pillow entirely and any change to the folder re-decodes it.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from wdistill.data.dataset import ImageDataset
from wdistill.data.samples import MAX_NEIGHBOURS, FolderImages, bad_message, reason_of
from wdistill.errors import BadImages

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".npy")
_CACHE_VERSION = 1
_LAYOUT = "expected root/<class_name>/<image> with images ending in " + "|".join(EXTENSIONS)


def _images_in(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, the empty ones among them) of one class folder: one stat per file, as a
    plain listing takes, so 0-byte files (an interrupted copy) are known before any decoding."""
    files, empty = [], []
    with os.scandir(folder) as entries:
        for e in entries:
            if e.is_file() and os.path.splitext(e.name)[1].lower() in EXTENSIONS:
                files.append(Path(e.path))
                if e.stat().st_size == 0:
                    empty.append(Path(e.path))
    return sorted(files), sorted(empty)


def scan(
    root: str | os.PathLike, classes: tuple[str, ...] | None = None
) -> tuple[tuple[str, ...], list[Path], list[int], list[Path]]:
    """(class names, image paths, labels, empty files among them) of an image folder. With
    ``classes`` given (e.g. the training split's), labels follow that list and a class folder may
    be absent."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist: {_LAYOUT}")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise FileNotFoundError(f"{root} has no class folders: {_LAYOUT}")
    if classes is None:
        classes = tuple(found)
    else:
        classes = tuple(classes)
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ValueError(
                f"{root} has class folders {unknown} that the training split lacks: "
                "both splits need the same class names"
            )
    files, labels, empty = [], [], []
    for label, c in enumerate(classes):
        if c not in found:
            continue
        these, none = _images_in(root / c)
        if not these:
            raise ValueError(f"class folder {root / c} holds no images: add some or remove the folder ({_LAYOUT})")
        files += these
        labels += [label] * len(these)
        empty += none
    return classes, files, labels, empty


def folder_images(root: str | os.PathLike, classes: tuple[str, ...] | None = None) -> FolderImages:
    """The image folder ``root`` (``<class>/<image>``) listed for streaming, not decoded."""
    classes, files, labels, empty = scan(root, classes)
    return FolderImages(files, labels, classes, Path(root).name, empty, root)


def _decode(path: Path, size: int) -> np.ndarray:
    """One image file -> uint8 (3, size, size): RGB, shorter side resized to ``size``, centre crop."""

    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
            if arr.ndim == 3 and arr.shape[2] == 1:
                arr = arr[..., 0]
            if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
                raise ValueError(f"an .npy image must be uint8 (H, W) or (H, W, 3|4), got {arr.dtype} {arr.shape}")
            img = Image.fromarray(arr)
        else:
            with Image.open(path) as im:
                im.load()
                img = im
        img = img.convert("RGB")
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {e}; delete or replace the file") from e
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _cache_key(root: Path, files: list[Path], labels: list[int], classes: tuple[str, ...], size: int) -> str:
    stats = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    blob = json.dumps([_CACHE_VERSION, size, list(classes), labels, stats]).encode()
    return hashlib.sha1(blob, usedforsecurity=False).hexdigest()[:16]


def _save(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        warnings.warn(
            f"could not write the decoded-image cache {path} ({e}); the folder will be decoded "
            "again next time: pass a writable cache_dir to avoid that",
            stacklevel=3,
        )


def _decode_all(files: list[Path], labels: list[int], size: int, desc: str, progress: bool):
    """(images, targets, bad) of a folder: every file decoded; a bad file leaves its row to be filled
    by :func:`_replace_bad` and is listed as (index, path, reason)."""
    images = np.zeros((len(files), 3, size, size), dtype=np.uint8)
    bad = []
    for i, p in enumerate(tqdm(files, desc=desc, unit="img", disable=not progress)):
        try:
            images[i] = _decode(p, size)
        except ValueError as e:
            bad.append((i, str(p), reason_of(e)))
    return images, np.asarray(labels, dtype=np.int64), bad


def _replace_bad(images: np.ndarray, targets: np.ndarray, bad: list, what: str) -> None:
    """data.on_bad_image=skip: each bad row takes the next readable sample (image and label), as
    the streaming path does."""
    broken = {i for i, _, _ in bad}
    for i, _, _ in bad:
        j = next((k % len(images) for k in range(i + 1, i + MAX_NEIGHBOURS) if k % len(images) not in broken), None)
        if j is None:
            raise BadImages(bad_message(bad, what, exhausted=True))
        images[i], targets[i] = images[j], targets[j]


def image_folder(
    root: str | os.PathLike,
    size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    classes: tuple[str, ...] | None = None,
    progress: bool = True,
    on_bad_image: str = "error",
    log=print,
) -> ImageDataset:
    """The image folder ``root`` as uint8 (N, 3, size, size) tensors in memory.

    The decoded tensors are cached as ``<cache_dir or root>/.wdistill-<size>px-<key>.npz``.
    ``classes`` fixes the label order (pass the training split's to a validation split).
    Every file is decoded before anything trains, so ``on_bad_image="error"`` raises BadImages
    naming every bad file at once; ``"skip"`` puts the next readable sample in each one's place
    and logs them (the cache records them, so a later ``error`` run still refuses).
    """
    classes, files, labels, _ = scan(root, classes)
    return decode_files(root, files, labels, classes, size, cache_dir, mean, std, progress, on_bad_image, log)


def decode_files(root, files: list, labels: list[int], classes: tuple[str, ...], size: int = 32,
                 cache_dir=None, mean=IMAGENET_MEAN, std=IMAGENET_STD, progress: bool = True,
                 on_bad_image: str = "error", log=print) -> ImageDataset:
    """Some files of the image folder ``root`` (e.g. the first N, or a held-out part) decoded as in
    :func:`image_folder`, and cached under a key of exactly these files: the others are never read."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (pixels), got {size!r}")
    root, files = Path(root), [Path(f) for f in files]
    key = _cache_key(root, files, list(labels), tuple(classes), size)
    cache = Path(cache_dir or root) / f".wdistill-{size}px-{key}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            images, targets = z["images"], z["targets"]
            bad = [(int(i), str(name), str(why)) for i, name, why in z["bad"].tolist()] if "bad" in z else []
    else:
        images, targets, bad = _decode_all(files, labels, size, f"decoding {root.name} ({size}px)", progress)
        if bad and on_bad_image == "skip":
            _replace_bad(images, targets, bad, str(root))
        if not bad or on_bad_image == "skip":
            rows = np.asarray([(str(i), name, why) for i, name, why in bad], dtype=str).reshape(len(bad), 3)
            _save(cache, images=images, targets=targets, bad=rows)
    if bad and on_bad_image != "skip":
        raise BadImages(bad_message(bad, str(root)))
    for _, name, why in bad:
        log(f"data: skipped {name} ({why}): the next readable sample takes its place (data.on_bad_image=skip)")
    return ImageDataset(
        torch.from_numpy(images), torch.from_numpy(targets), len(classes), tuple(mean), tuple(std), root.name,
        tuple(classes))
