"""CIFAR-10 and CIFAR-100 from the "python version" archives of Krizhevsky (2009).

https://www.cs.toronto.edu/~kriz/cifar.html: each batch file is a pickled dict with bytes keys;
``b'data'`` is a (N, 3072) uint8 array whose row holds the 1024 red, then green, then blue values
of a 32x32 image in row-major order, so ``data.reshape(N, 3, 32, 32)`` is (N, C, H, W). Labels are
``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` / ``b'coarse_labels'`` (CIFAR-100). Files are read
from the extracted folder or straight from the ``.tar.gz``.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wdistill.data.dataset import ImageDataset
from wdistill.data.download import RESOURCES, describe, fetch

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


@dataclass(frozen=True)
class _Layout:
    key: str
    title: str
    folder: str
    splits: dict[str, tuple[str, ...]]
    meta: str
    labels: dict[str, tuple[bytes, bytes, int]]  # label kind -> (label key, names key in meta, classes)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def archive(self) -> str:
        return RESOURCES[self.key][0].filename


CIFAR10 = _Layout("cifar10", "CIFAR-10", "cifar-10-batches-py",
                  {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
                  "batches.meta", {"fine": (b"labels", b"label_names", 10)}, CIFAR10_MEAN, CIFAR10_STD)
CIFAR100 = _Layout("cifar100", "CIFAR-100", "cifar-100-python", {"train": ("train",), "test": ("test",)}, "meta",
                   {"fine": (b"fine_labels", b"fine_label_names", 100),
                    "coarse": (b"coarse_labels", b"coarse_label_names", 20)}, CIFAR100_MEAN, CIFAR100_STD)

# Everything a numpy array pickled by Python 2 or 3 needs; any other global is refused, since
# unpickling arbitrary globals runs arbitrary code.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}: not part of a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(blob: bytes, where: str) -> dict:
    try:
        # encoding='bytes': the files were written by Python 2, whose str keys become bytes here.
        obj = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:
        raise ValueError(f"{where} is not a CIFAR python-version pickle ({type(e).__name__}: {e}); "
                         "use the 'python version' archive, not the binary or MATLAB one") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _require(d: dict, key: bytes, where: str):
    if key not in d:
        raise ValueError(f"{where}: missing key {key!r} (keys: {sorted(map(repr, d))}); "
                         "expected a CIFAR python-version file")
    return d[key]


def _parse_batch(d: dict, where: str, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    data = _require(d, b"data", where)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise ValueError(f"{where}: b'data' must be a uint8 (N, 3072) array, got {type(data).__name__} {shape}")
    labels = np.asarray(_require(d, label_key, where))
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise ValueError(f"{where}: {label_key!r} must be {len(data)} integers, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{where}: {label_key!r} outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _class_names(d: dict, where: str, key: bytes, num_classes: int) -> tuple[str, ...]:
    names = _require(d, key, where)
    if not isinstance(names, list) or len(names) != num_classes:
        raise ValueError(f"{where}: {key!r} must list {num_classes} names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _read_members(source: Path, members: list[str]) -> dict[str, bytes]:
    """Bytes of ``members`` ('<folder>/<file>') from a directory holding ``<folder>`` or a tarball."""
    if source.is_dir():
        out = {}
        for m in members:
            if not (source / m).is_file():
                raise FileNotFoundError(f"{source / m} is missing: the extracted folder is incomplete; "
                                        "extract the archive again")
            out[m] = (source / m).read_bytes()
        return out
    try:
        out = {}
        with tarfile.open(source, "r:*") as tar:
            # one pass over the stream: random access into a .tar.gz would decompress it again per file
            for info in tar:
                name = info.name[2:] if info.name.startswith("./") else info.name
                if name in members and info.isfile():
                    out[name] = tar.extractfile(info).read()
    except tarfile.TarError as e:
        raise ValueError(f"{source} is not a readable tar archive ({e}); fetch it again") from e
    lacking = [m for m in members if m not in out]
    if lacking:
        raise ValueError(f"{source} lacks {', '.join(lacking)}: is it the CIFAR 'python version' archive?")
    return out


def _source(layout: _Layout, root, download: bool) -> Path:
    """Where the files are: an extracted folder's parent, or the archive."""
    if root is None:
        raise ValueError(f"{layout.title} needs root=<directory holding {layout.archive} or {layout.folder}/>")
    root = Path(root)
    if root.is_file():
        return root
    if (root / layout.folder).is_dir():
        return root
    if root.name == layout.folder and root.is_dir():
        return root.parent
    if (root / layout.archive).is_file():
        return root / layout.archive
    if download:
        return fetch(layout.key, root)[0]
    raise FileNotFoundError(
        f"{layout.title} not found in {root}: put {layout.archive} there (no need to extract it) or its "
        f"extracted folder {layout.folder}/, or let wdistill fetch it (data.options.download=true; download=True "
        f"in Python): {describe(RESOURCES[layout.key])}.")


def _load(layout: _Layout, splits: tuple[str, ...], root, download: bool, labels: str) -> list[ImageDataset]:
    for s in splits:
        if s not in layout.splits:
            raise ValueError(f"split must be 'train' or 'test', got {s!r}")
    if labels not in layout.labels:
        raise ValueError(f"{layout.title} labels must be one of {sorted(layout.labels)}, got {labels!r}")
    label_key, names_key, num_classes = layout.labels[labels]
    source = _source(layout, root, download)
    meta = f"{layout.folder}/{layout.meta}"
    wanted = [meta] + [f"{layout.folder}/{f}" for s in splits for f in layout.splits[s]]
    blobs = _read_members(source, wanted)
    classes = _class_names(_unpickle(blobs[meta], f"{source}:{meta}"), f"{source}:{meta}", names_key, num_classes)
    out = []
    for s in splits:
        parts = []
        for f in layout.splits[s]:
            where = f"{source}:{layout.folder}/{f}"
            parts.append(_parse_batch(_unpickle(blobs[f"{layout.folder}/{f}"], where), where, label_key, num_classes))
        images = np.concatenate([p[0] for p in parts])
        targets = np.concatenate([p[1] for p in parts])
        name = layout.key if labels == "fine" else f"{layout.key}_{labels}"
        out.append(ImageDataset(torch.from_numpy(images), torch.from_numpy(targets), num_classes,
                                layout.mean, layout.std, name, classes))
    return out


def cifar10(split: str, root: str | os.PathLike, download: bool = False) -> ImageDataset:
    """CIFAR-10 ``split``: 'train' (50,000) or 'test' (10,000) 3x32x32 images, 10 classes.
    ``root``: a directory holding cifar-10-python.tar.gz or cifar-10-batches-py/, or the archive."""
    return _load(CIFAR10, (split,), root, download, "fine")[0]


def cifar100(split: str, root: str | os.PathLike, download: bool = False, labels: str = "fine") -> ImageDataset:
    """CIFAR-100 ``split``: 'train' (50,000) or 'test' (10,000) 3x32x32 images; ``labels``:
    'fine' (100 classes) or 'coarse' (20 superclasses). ``root`` as for :func:`cifar10`."""
    return _load(CIFAR100, (split,), root, download, labels)[0]


def cifar_splits(name: str, root, download: bool = False, labels: str = "fine") -> tuple[ImageDataset, ImageDataset]:
    """(train, test) of 'cifar10' or 'cifar100', reading the archive once."""
    layout = {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]
    train, test = _load(layout, ("train", "test"), root, download, labels)
    return train, test
