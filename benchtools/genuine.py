"""Files in their genuine on-disk formats, written from generated pixels: the CIFAR pickles as
Python 2's cPickle wrote them and Fashion-MNIST's IDX files. The data tests read them with our
loaders; the official trainer's side-by-side (`benchtools.official`) reads them with torchvision's.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the CIFAR files: protocol 2, str as BINSTRING
    (so keys and array data load as bytes with encoding='bytes'), numpy.core global names."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        b = obj.encode("latin1") if isinstance(obj, str) else obj
        head = (
            pickle.SHORT_BINSTRING + bytes([len(b)]) if len(b) < 256 else pickle.BINSTRING + struct.pack("<i", len(b))
        )
        self.write(head + b)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def py2_pickle(obj) -> bytes:
    f = io.BytesIO()
    Py2Pickler(f, protocol=2).dump(obj)
    return f.getvalue()


def write_tree(root: Path, members: dict[str, bytes], as_tar: bool) -> Path:
    """``members`` (archive path -> bytes) as files under ``root``, or as the .tar.gz that is downloaded."""
    if not as_tar:
        for name, blob in members.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(blob)
        return root
    path = root / (
        "cifar-10-python.tar.gz" if "cifar-10-batches-py/test_batch" in members else "cifar-100-python.tar.gz"
    )
    with tarfile.open(path, "w:gz") as tar:
        folder_info = tarfile.TarInfo(next(iter(members)).split("/")[0])
        folder_info.type = tarfile.DIRTYPE
        tar.addfile(folder_info)
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def cifar10_members(rng, n=6):
    batches = {}
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[f] = {
            b"batch_label": f"batch {f}",
            b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * n,
        }
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_cases_per_batch": n, b"num_vis": 3072}
    members = {f"cifar-10-batches-py/{f}": py2_pickle(d) for f, d in batches.items()}
    members["cifar-10-batches-py/batches.meta"] = py2_pickle(meta)
    return members, batches


def cifar100_members(rng, n=9, n_test: int | None = None):
    """The three files of cifar-100-python: ``n`` training and ``n_test`` (default ``n``) test images,
    labels shuffled over the classes in turn (every class present once ``n`` reaches 100)."""
    splits = {}
    for f, count in (("train", n), ("test", n if n_test is None else n_test)):
        fine = rng.permutation(np.arange(count) % 100)
        splits[f] = {
            b"filenames": [b"x.png"] * count,
            b"batch_label": b"b",
            b"fine_labels": fine.tolist(),
            b"coarse_labels": (fine // 5).tolist(),
            b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        }
    meta = {
        b"fine_label_names": [f"f{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"c{i}".encode() for i in range(20)],
    }
    members = {f"cifar-100-python/{f}": py2_pickle(d) for f, d in splits.items()}
    members["cifar-100-python/meta"] = py2_pickle(meta)
    return members, splits


def write_idx(path: Path, arr: np.ndarray, code: int = 0x08) -> Path:
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    blob = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    blob += arr.astype(dtype).tobytes()
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)
    return path
