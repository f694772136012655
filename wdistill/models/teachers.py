"""`wdistill teachers fetch`: the published CIFAR-100 teachers of RepDistiller (CRD paper), from the
copy that mdistiller (DKD paper) publishes as one release asset, ``cifar_teachers.tar``, holding
``cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth`` per teacher.

Integrity without trusting the network: the archive's SHA-256 is compared with a published value
only where one is published (mdistiller publishes none, so :data:`PUBLISHED_SHA256` is empty; a
user may pass one with ``--sha256``); every extracted checkpoint must load with the weights-only
unpickler into the zoo architecture of its name, 100 classes, strict keys and shapes. Only then is
it moved to ``<cache>/teachers/cifar100/<name>.pth`` and its SHA-256 written beside it
(``<name>.pth.sha256``), which the presets' ``cache:teachers/cifar100/<name>.pth`` points at.

The download resumes from ``<archive>.part`` with an HTTP Range request; run it on one process.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import torch
from tqdm import tqdm

from wdistill.errors import FetchError
from wdistill.models.registry import create, load_checkpoint
from wdistill.models.weights import cache_dir

ARCHIVE = "cifar_teachers.tar"
DEFAULT_BASE_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/"
BASE_URL_ENV = "WDISTILL_TEACHERS_URL"
TEACHERS = ("resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "ResNet50")
NUM_CLASSES = 100
# SHA-256 of ARCHIVE as published by its authors: none is (keep this empty rather than invent one).
PUBLISHED_SHA256: dict[str, str] = {}
_CHUNK = 1 << 20


def teacher_dir() -> Path:
    return cache_dir() / "teachers" / "cifar100"


def member_name(name: str) -> str:
    return f"{name}_vanilla/ckpt_epoch_240.pth"


def missing_checkpoint_hint(model: str, path: Path) -> str:
    """What to do about a missing checkpoint file (used by the engine's error)."""
    if model in TEACHERS and path.parent == teacher_dir():
        return (f"run `wdistill teachers fetch {model}` (or, offline, put RepDistiller's "
                f"{member_name(model)} at {path} and run `wdistill teachers fetch {model}` to verify it)")
    return ("put the trained weights there, or train them with `wdistill train CONFIG` and pass "
            "checkpoint=RUN_DIR/student.pt")


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch ``url`` into ``dest`` through ``dest.part``, resuming a partial file when the server
    honours Range requests (else restarting). ``dest`` appears only once the transfer is complete
    (Content-Length reached)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # the .part is as long as the file or longer: start again
            part.unlink()
            return download(url, dest, progress, timeout)
        raise
    with response:
        if start and getattr(response, "status", None) != 206:
            start = 0  # the server sent the whole file
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        with open(part, "ab" if start else "wb") as f, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                                            desc=dest.name, disable=not progress) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    if total is not None and part.stat().st_size != total:
        raise OSError(f"{url}: transfer ended at {part.stat().st_size} of {total} bytes; run again to resume")
    os.replace(part, dest)
    return dest


def verify_checkpoint(path: Path, name: str) -> None:
    """Weights-only load into zoo model ``name`` with 100 classes, strict keys and shapes."""
    with torch.device("meta"):
        shapes_only = create(name, num_classes=NUM_CLASSES)
    model = shapes_only.to_empty(device="cpu")
    try:
        load_checkpoint(model, path, name=name)
    except ValueError as e:
        raise FetchError(f"{path} is not a valid {name} CIFAR-100 checkpoint: {e}") from None


def _extract(archive: Path, name: str, dest: Path) -> None:
    """Copy the member of ``name`` out of ``archive`` (read as bytes: nothing is unpacked to a
    path chosen by the archive) to ``dest.tmp``, verify it, then rename it to ``dest``."""
    wanted = member_name(name)
    try:
        with tarfile.open(archive) as tar:
            member = next((m for m in tar.getmembers() if m.isfile() and m.name.endswith(wanted)), None)
            if member is None:
                raise FetchError(f"{archive} holds no {wanted}: it is not mdistiller's {ARCHIVE}")
            data = tar.extractfile(member).read()
    except tarfile.TarError as e:
        raise FetchError(f"{archive} is not a readable tar archive ({e})") from None
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    try:
        verify_checkpoint(tmp, name)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def _record(dest: Path) -> str:
    digest = sha256_of(dest)
    side = dest.with_name(dest.name + ".sha256")
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(f"{digest}  {dest.name}\n")
    os.replace(tmp, side)
    return digest


def _recorded(dest: Path) -> str | None:
    side = dest.with_name(dest.name + ".sha256")
    return side.read_text().split()[0] if side.is_file() and side.read_text().split() else None


def fetch(names: list[str] | None = None, base_url: str | None = None, sha256: str | None = None,
          progress: bool = True, log=print) -> dict[str, Path]:
    """Make sure every teacher of ``names`` (default: all) is in :func:`teacher_dir`, verified.
    Returns {name: checkpoint path}. Raises FetchError with what to do when it cannot."""
    names = list(names or TEACHERS)
    unknown = [n for n in names if n not in TEACHERS]
    if unknown:
        raise FetchError(f"no published CIFAR-100 teacher {unknown}; the published ones are {', '.join(TEACHERS)}")
    folder = teacher_dir()
    folder.mkdir(parents=True, exist_ok=True)
    base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    url = base.rstrip("/") + "/" + ARCHIVE
    archive = folder / ARCHIVE
    out, todo = {}, []
    for name in names:
        dest = folder / f"{name}.pth"
        if dest.is_file() and _recorded(dest) == sha256_of(dest):
            log(f"{name}: {dest} (verified before, sha256 {_recorded(dest)})")
            out[name] = dest
        elif dest.is_file():  # put there by hand: verify it like a download
            verify_checkpoint(dest, name)
            log(f"{name}: {dest} verified, sha256 {_record(dest)}")
            out[name] = dest
        else:
            todo.append(name)
    if not todo:
        return out
    if not archive.is_file():
        try:
            download(url, archive, progress)
        except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
            where = ", ".join(f"its {member_name(n)} at {folder / f'{n}.pth'}" for n in todo)
            raise FetchError(
                f"could not download {url} ({e}). Offline? On a machine with internet fetch {url} and put it at "
                f"{archive} (a partial {archive.name}.part resumes), or put {where}; then run "
                f"`wdistill teachers fetch {' '.join(todo)}` again to verify. Another mirror: "
                f"--url BASE or {BASE_URL_ENV}=BASE") from None
    expected = sha256 or PUBLISHED_SHA256.get(ARCHIVE)
    if expected:
        got = sha256_of(archive)
        if got != expected.lower():
            archive.unlink()
            raise FetchError(f"{url}: SHA-256 {got} but {expected} was expected; the file was deleted. Fetch it "
                             "again, from another mirror (--url) if it persists")
    for name in todo:
        dest = folder / f"{name}.pth"
        try:
            _extract(archive, name, dest)
        except FetchError as e:
            archive.unlink()  # a bad archive must not be trusted again: the next run downloads afresh
            raise FetchError(f"{e} ({archive} was deleted)") from None
        log(f"{name}: {dest} verified ({NUM_CLASSES} classes, strict keys), sha256 {_record(dest)}")
        out[name] = dest
    return out


def status() -> list[tuple[str, Path, str]]:
    """(name, path, state) per published teacher: 'verified', 'unverified' or 'missing'."""
    rows = []
    for name in TEACHERS:
        dest = teacher_dir() / f"{name}.pth"
        if not dest.is_file():
            state = "missing"
        else:
            state = "verified" if _recorded(dest) == sha256_of(dest) else "unverified"
        rows.append((name, dest, state))
    return rows
