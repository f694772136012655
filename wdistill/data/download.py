"""Verified downloads of the public dataset files, and the error that tells a user where to put them.

A download streams into ``<dest>.part`` and becomes ``dest`` by ``os.replace`` only after its MD5
matches, so ``dest`` is either absent or complete. An interrupted download resumes from the
``.part`` file with an HTTP Range request when the server honours it (otherwise it restarts);
a corrupt ``.part`` fails the MD5 check and is deleted, so the next attempt starts clean.
Run it on one process (DDP rank 0): two processes appending to the same ``.part`` corrupt it.
"""
from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Resource:
    """One published file: its name on disk, its MD5 and the URLs (mirrors) it can be fetched from."""

    filename: str
    md5: str
    urls: tuple[str, ...]


def _mirrors(bases: tuple[str, ...], filename: str) -> tuple[str, ...]:
    return tuple(b + filename for b in bases)


# MD5s as published by the dataset authors and used by torchvision's dataset classes.
_CIFAR = "https://www.cs.toronto.edu/~kriz/"
_FMNIST = ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
           "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
_MNIST = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
RESOURCES: dict[str, tuple[Resource, ...]] = {
    "cifar10": (Resource("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                         (_CIFAR + "cifar-10-python.tar.gz",)),),
    "cifar100": (Resource("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                          (_CIFAR + "cifar-100-python.tar.gz",)),),
    "fashion_mnist": tuple(Resource(f, m, _mirrors(_FMNIST, f)) for f, m in (
        ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"))),
    "mnist": tuple(Resource(f, m, _mirrors(_MNIST, f)) for f, m in (
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"))),
}


def _md5_of(path: str | os.PathLike):
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h


def file_md5(path: str | os.PathLike) -> str:
    return _md5_of(path).hexdigest()


def download(url: str, dest: str | os.PathLike, md5: str, progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` and check that the file's MD5 is ``md5``; returns ``dest``.

    A ``dest`` that already has the right MD5 is kept. Raises ``ValueError`` on an MD5 mismatch
    (the partial file is deleted) and ``OSError``/``urllib.error.URLError`` on network failure
    (the partial file is kept for resuming).
    """
    if not re.fullmatch(r"[0-9a-f]{32}", md5 or ""):
        raise ValueError(f"md5 must be 32 lowercase hex digits, got {md5!r}")
    dest = Path(dest)
    if dest.is_file() and file_md5(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start, h = 0, hashlib.md5(usedforsecurity=False)
    if part.is_file():
        start, h = part.stat().st_size, _md5_of(part)
        if h.hexdigest() == md5:  # a finished download that was not renamed yet
            os.replace(part, dest)
            return dest
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not start:
            raise
        part.unlink()  # "range not satisfiable": the .part is longer than the file, so it is junk
        return download(url, dest, md5, progress, timeout)
    with response:
        if start and getattr(response, "status", None) != 206:
            start, h = 0, hashlib.md5(usedforsecurity=False)  # the server sent the whole file
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        with open(part, "ab" if start else "wb") as f, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                f.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    if h.hexdigest() != md5:
        part.unlink()
        raise ValueError(f"{url}: downloaded file has MD5 {h.hexdigest()}, expected {md5}; the partial file "
                         f"was deleted: retry, or fetch it by hand into {dest} and check it with `md5sum`")
    os.replace(part, dest)
    return dest


def describe(resources: tuple[Resource, ...]) -> str:
    return "; ".join(f"{r.filename} (md5 {r.md5}, from {r.urls[0]})" for r in resources)


def fetch(dataset: str, root: str | os.PathLike, progress: bool = True) -> list[Path]:
    """Download every file of ``dataset`` (a key of ``RESOURCES``) into ``root``, trying each
    mirror in turn. Raises ``FileNotFoundError`` naming the files and URLs when all mirrors fail."""
    paths = []
    for res in RESOURCES[dataset]:
        errors = []
        for url in res.urls:
            try:
                paths.append(download(url, Path(root) / res.filename, res.md5, progress))
                break
            except (OSError, ValueError) as e:
                errors.append(f"{url}: {e}")
        else:
            raise FileNotFoundError(
                f"could not download {res.filename} into {root} ({' | '.join(errors)}). Fetch it by hand: "
                f"put {describe((res,))} in {root}")
    return paths
