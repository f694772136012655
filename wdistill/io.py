"""Files on disk: atomic writes and the one way anything is loaded back (weights only).

A write that fails for lack of room (a full disk, a quota, a read-only file system, a file-size
limit) becomes one :class:`StorageError` naming the path, the space it needed and what was free;
the file it was replacing is untouched (the write went to a temporary file).

Every checkpoint, cache and cost file goes through :func:`safe_load`: ``torch.load`` with
``weights_only=True`` refuses any pickled object that is not a tensor or plain Python data, so a
crafted file can never run code. Corrupt, truncated or hostile files become one clear
:class:`FileLoadError` naming the file and what to do, never a raw unpickling traceback.
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import stat
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch

from wdistill.errors import ConfigError, FileLoadError, StorageError


def safe_load(path: str | os.PathLike, map_location="cpu", what: str = "checkpoint", fix: str = ""):
    """``torch.load(path, weights_only=True)`` with errors a user can act on."""
    path = Path(path)
    if not path.is_file():
        raise FileLoadError(f"{what} {path} does not exist{': ' + fix if fix else ''}")
    if path.stat().st_size == 0:
        raise FileLoadError(f"{what} {path} is empty (0 bytes), probably from an interrupted copy"
                            f"{': ' + fix if fix else ''}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure mode becomes one message
        raise FileLoadError(f"{what} {path} cannot be loaded: {_reason(path, e)}{'. ' + fix if fix else ''}") from None


def _reason(path: Path, e: Exception) -> str:
    text = str(e)
    if zipfile.is_zipfile(path):
        if isinstance(e, pickle.UnpicklingError) or "weights_only" in text:
            return ("it holds pickled Python objects, which wdistill never unpickles because unpickling can run "
                    "code (only tensors and plain data load)")
        return f"it is damaged ({text.strip().splitlines()[0] if text.strip() else type(e).__name__})"
    if "zip archive" in text:
        return "it is truncated or corrupt (its zip archive is incomplete), probably from an interrupted write or copy"
    return ("it is not a torch.save file of tensors and plain data (it may be another kind of file, damaged, or a "
            "pickle of Python objects, which is never unpickled)")


# errno -> what it means for a run file (the reasons a write fails for want of room or permission)
_NO_ROOM = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only",
            errno.EFBIG: "the file is larger than this process may write (ulimit -f) or the file system allows",
            errno.EACCES: "permission is denied", errno.EPERM: "the operation is not permitted"}


def nbytes(obj) -> int:
    """Roughly the bytes ``obj`` takes in a torch.save file (its tensors, plus a little per entry)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size() + 64
    if isinstance(obj, dict):
        return sum(nbytes(k) + nbytes(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj) + 8
    return len(str(obj)) + 8


def _os_error(e: BaseException) -> OSError | None:
    """The OSError with an errno behind ``e`` (torch.save reports ENOSPC as a RuntimeError whose
    context is the OSError; safetensors as a message ending in "(os error 28)"), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_ROOM:
            return e
        found = re.search(r"\(os error (\d+)\)", str(e))
        if found and int(found.group(1)) in _NO_ROOM:
            code = int(found.group(1))
            return OSError(code, os.strerror(code))
        e = e.__cause__ or e.__context__
    return None


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@contextmanager
def storage_errors(path: str | os.PathLike, needed: int):
    """Turn a write of ``path`` that fails for want of room or permission into a StorageError."""
    try:
        yield
    except StorageError:
        raise
    except BaseException as e:  # noqa: BLE001 - only a lack of room is rewritten; everything else re-raised
        os_err = _os_error(e)
        if os_err is None:
            raise
        path = Path(path)
        try:
            free = f"{_size(shutil.disk_usage(path.parent).free)} free there"
        except OSError:
            free = "the free space could not be read"
        err = StorageError(f"cannot write {path}: {_NO_ROOM[os_err.errno]} ({os_err.strerror}). It needs about "
                           f"{_size(needed)}, {free}. {path.name} was not changed (the write went to a temporary "
                           "file). Free space (or point run.out_dir at a disk with room), then run the command "
                           "again (a training run: with --resume)")
        err.errno = os_err.errno
        raise err from None


def _plain_mode(path: Path) -> int:
    """The permissions a plain ``open(path, "w")`` leaves: the old file's, else 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        pass
    try:  # the umask without setting it (Linux 4.7+): os.umask() would change it for every thread a moment
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def check_file_path(path: Path) -> None:
    """ConfigError when ``path`` cannot name a file: it is a directory, or a parent of it is a file."""
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a directory; give the path of a file (in it, or beside it)")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"cannot write {path}: {parent} is a file, not a directory; choose another path")


def _atomic_write(path: str | os.PathLike, mode: str, write, needed: int = 0) -> None:
    """``write(f)`` into a temporary file in ``path``'s directory, fsync, then rename over ``path``:
    a reader (or a crash) sees the old file or the new one, never a partial one. A failure for want
    of room raises :class:`StorageError` (``needed``: the bytes the file takes, for its message)."""
    path = Path(path)
    check_file_path(path)
    tmp = None
    with storage_errors(path, needed):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.fchmod(fd, _plain_mode(path))  # mkstemp's file is the owner's alone (0600)
            with os.fdopen(fd, mode) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save ``obj`` to ``path`` atomically."""
    _atomic_write(path, "wb", lambda f: torch.save(obj, f), nbytes(obj))


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` atomically."""
    _atomic_write(path, "wb", lambda f: f.write(data), len(data))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` to ``path`` atomically."""
    _atomic_write(path, "w", lambda f: f.write(text), len(text.encode()))


def load_dict(path: str | os.PathLike, map_location="cpu", what: str = "checkpoint") -> dict:
    """A checkpoint that must hold a dict (run states, exports); never unpickles objects."""
    obj = safe_load(path, map_location, what,
                    fix="use a file written by wdistill (last.pt, best.pt, student.pt) or a plain state_dict")
    if not isinstance(obj, dict):
        raise FileLoadError(f"{what} {path} holds a {type(obj).__name__}, not a dict of tensors")
    return obj
