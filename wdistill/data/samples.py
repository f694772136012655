"""Reading one sample for the streaming path, and what happens when it cannot be read.

A streamed sample is read in a DataLoader worker. A worker never raises for a bad file (its
traceback would be all the user sees, and it names one file per restart): :class:`Keyed` catches
the failure, puts the next readable sample in its place (index ``i + 1``, ``i + 2``, ... modulo the
split, with the augmentation seed of position ``i``, so the replacement is deterministic) and
reports ``(index, file, reason)`` beside the batch. The main process then applies
``data.on_bad_image``: ``skip`` counts and logs it, ``error`` stops the run with every bad file
found so far (``StreamLoader``, and the Trainer, which writes a checkpoint first).

Failures that are not the file's fault are treated apart: an I/O error with an errno (EIO, ESTALE
on a network file system, ...) is retried ``READ_TRIES`` times before it counts, and
``MAX_NEIGHBOURS`` bad samples in a row stop a run even under ``skip``: that is a broken copy of the
data or a bug in a Dataset, not a few bad files.

:func:`inspect_file` is the full check behind ``wdistill data check``: empty files, files that do
not decode to the end (a truncated JPEG only fails when its pixels are read), and image modes that
convert to RGB with a loss.
"""
from __future__ import annotations

import errno
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from wdistill.errors import BadImages, ConfigError

READ_TRIES, RETRY_SECONDS = 3, 0.5
MAX_NEIGHBOURS = 16
EXPECTED_MODES = ("RGB", "L", "P")
MODE_NOTES = {"CMYK": "its colours change in the conversion", "I;16": "values above 255 are clipped",
              "I": "values above 255 are clipped", "F": "values above 255 are clipped",
              "RGBA": "the alpha channel is dropped", "LA": "the alpha channel is dropped",
              "PA": "the alpha channel is dropped", "1": "a bilevel image"}
_NOT_TRANSIENT = {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM}


class FolderImages(Dataset):
    """An image folder as (PIL RGB image, label): only the file list and labels live in memory."""

    def __init__(self, files: list, labels: list[int], classes: tuple[str, ...], name: str = "", empty=(),
                 root=None):
        self.files = [str(f) for f in files]
        self.root = Path(root) if root is not None else Path(self.files[0]).parent.parent if self.files else None
        self.empty = [str(f) for f in empty]  # 0-byte files, found by the listing before any decoding
        self.labels = [int(y) for y in labels]  # item access: a list is ~10x cheaper than a tensor
        self.targets = torch.tensor(self.labels, dtype=torch.long)
        self.classes, self.name = tuple(classes), name

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = self.files[i]
        try:
            if path.lower().endswith(".npy"):
                return Image.fromarray(np.load(path, allow_pickle=False)).convert("RGB"), self.labels[i]
            with Image.open(path) as im:
                return im.convert("RGB"), self.labels[i]
        except Exception as e:
            raise ValueError(f"cannot read image {path}: {e}; delete or replace the file") from e


def describe(dataset, i: int) -> str:
    """How a sample is named to the user: its file, or its index in a Dataset."""
    files = getattr(dataset, "files", None)
    return str(files[i]) if files is not None and i < len(files) else f"item {i} of {type(dataset).__name__}"


def reason_of(e: BaseException) -> str:
    """The short reason a sample failed: the underlying exception's type and first line."""
    cause = e.__cause__ or e
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def _transient(e: BaseException) -> bool:
    """An I/O error worth retrying: it carries an errno (network file systems), and not one that
    says the file is missing or forbidden. Decoding errors carry none."""
    while e is not None:
        if isinstance(e, OSError) and e.errno is not None:
            return e.errno not in _NOT_TRANSIENT
        e = e.__cause__
    return False


class Keyed(Dataset):
    """``dataset[(index, seed)]`` -> (transformed image, target, index used, bad samples met), for
    the DataLoader workers. A sample that cannot be read or transformed is replaced by the next
    readable one (see the module docstring); if ``MAX_NEIGHBOURS`` in a row fail, the image is
    None and the main process stops the run."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def _read(self, i: int, seed: int):
        for attempt in range(READ_TRIES):
            try:
                item = self.dataset[i]
                if not (isinstance(item, (tuple, list)) and len(item) >= 2):
                    raise TypeError(f"dataset item {i} is a {type(item).__name__}: a dataset must return "
                                    "(image, target)")
                return self.transform(item[0], seed), label_index(item[1])
            except Exception as e:
                if attempt + 1 == READ_TRIES or not _transient(e):
                    raise
                time.sleep(RETRY_SECONDS)

    def __getitem__(self, key):
        i, seed = key
        n, bad = len(self.dataset), []
        for j in (i + k for k in range(min(MAX_NEIGHBOURS, n))):
            j %= n
            try:
                x, target = self._read(j, seed)
                return x, target, j, tuple(bad)
            except Exception as e:  # noqa: BLE001 - any failure to read one sample is reported, never raised
                bad.append((j, describe(self.dataset, j), reason_of(e)))
        return None, -1, i, tuple(bad)


def label_index(y) -> int:
    """A label as a class index: an int, or an array or tensor holding one."""
    shape = tuple(getattr(y, "shape", ()))
    if shape and math.prod(shape) != 1:
        raise ValueError(f"a label must be one class index, got an array of shape {shape} (one-hot or soft labels "
                         "are not class indices: return y.argmax())")
    return int(y)


def collate(items):
    """(images, targets, indices, bad samples of the batch, whether a sample found no replacement). Images of
    different shapes stay a list, for the main process to refuse (:func:`check_sizes`)."""
    bad = [b for item in items for b in item[3]]
    if any(item[0] is None for item in items):
        return None, None, None, bad, True
    images = [item[0] for item in items]
    if len({x.shape for x in images}) == 1:
        images = torch.stack(images)
    return images, torch.tensor([item[1] for item in items]), torch.tensor([item[2] for item in items]), bad, False


def check_sizes(images, index: torch.Tensor, what: str) -> None:
    """ConfigError naming two items of a batch whose images differ in shape (``collate`` left them a list)."""
    if isinstance(images, list):
        j = next(j for j, x in enumerate(images) if x.shape != images[0].shape)
        raise ConfigError(f"{what} holds images of different shapes (channels, height, width): item {int(index[0])} "
                          f"is {tuple(images[0].shape)}, item {int(index[j])} {tuple(images[j].shape)}, and a batch "
                          "needs one. Crop them (data.random_resized_crop, the side in pixels: evaluation takes the "
                          "centre crop), or resize them and give them one colour mode in the Dataset")


def check_batch(images, targets: torch.Tensor, index: torch.Tensor, num_classes: int | None, what: str) -> None:
    """A batch from :func:`collate` (host tensors): its images of one size, its labels class indices."""
    check_sizes(images, index, what)
    if num_classes is not None:
        check_labels(targets, index, num_classes, what)


def check_labels(targets: torch.Tensor, index: torch.Tensor, num_classes: int, what: str) -> None:
    """ConfigError naming the first item of a batch (CPU tensors) whose label is not a class index."""
    wrong = (targets < 0) | (targets >= num_classes)
    if wrong.any():
        at = int(wrong.nonzero()[0])
        raise ConfigError(f"item {int(index[at])} of {what} has the label {int(targets[at])}, not a class index in "
                          f"[0, {num_classes}): labels must count the classes from 0; if the data have more "
                          f"classes than {num_classes}, set data.num_classes")


def bad_message(bad, what: str, resumable: bool = False, exhausted: bool = False) -> str:
    """One paragraph: every bad file found so far in ``what`` (e.g. "the training split"), and the fixes."""
    names = sorted({(name, reason) for _, name, reason in bad})
    listed = "; ".join(f"{name} ({reason})" for name, reason in names[:50])
    more = f"; and {len(names) - 50} more" if len(names) > 50 else ""
    head = (f"{MAX_NEIGHBOURS} samples in a row cannot be read in {what}, so this is no longer a few bad files "
            "but a broken copy of the data or a bug in the Dataset: " if exhausted else
            f"{len(names)} image(s) in {what} cannot be read (data.on_bad_image=error): ")
    fix = ("Repair the data (`wdistill data check CONFIG` lists every bad file in one pass)" if exhausted else
           "Delete or replace them (`wdistill data check CONFIG` lists every bad file in one pass), or set "
           "data.on_bad_image=skip to train with the next readable sample in their place")
    then = "; then run the same command with --resume: the run stopped after writing last.pt" if resumable else ""
    return head + listed + more + ". " + fix + then


def raise_bad(bad, what: str, resumable: bool = False, exhausted: bool = False):
    raise BadImages(bad_message(bad, what, resumable, exhausted))


def inspect_file(path: str) -> tuple[str, str] | None:
    """The problem with one image file, ``(kind, detail)`` with kind "empty", "unreadable" or "mode"
    (decodes, but to RGB with a loss), or None when it decodes fully as RGB, L or P."""
    try:
        if os.path.getsize(path) == 0:
            return "empty", "0 bytes"
        if path.lower().endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
            if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))):
                return "unreadable", f"an .npy image must be uint8 (H, W) or (H, W, 1|3|4), got {arr.dtype} {arr.shape}"
            return None
        with Image.open(path) as im:
            mode = im.mode
            im.load()  # decodes every pixel: a truncated file fails here, not at open
    except Exception as e:  # noqa: BLE001 - every failure is a finding of the check
        return "unreadable", reason_of(e)
    if mode not in EXPECTED_MODES:
        return "mode", f"mode {mode}, converted to RGB: {MODE_NOTES.get(mode, 'check that it looks right')}"
    return None


def _exit_when_the_parent_asks() -> None:
    """A worker's thread: SIGTERM from the main process (its shutdown) ends the worker at once, as
    torch's own worker handler does; SIGTERM from anyone else (a scheduler) is dropped."""
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == os.getppid():
            os._exit(0)


@contextmanager
def workers_start_shielded(names: tuple[str, ...]):
    """Start DataLoader workers inside this block: with SIGTERM among the stop signals ``names``, this
    thread blocks it meanwhile, so that each worker, which inherits the signal mask of the thread that
    forks it, starts with SIGTERM blocked in every thread. torch starts threads in a worker before its
    ``worker_init_fn`` runs, and a SIGTERM sent to the process goes to any thread that does not block
    it: blocking it in :func:`ignore_signals` alone left those threads open, and the worker killed
    (one CI run in several). A SIGTERM meant for this process meanwhile stays pending, then arrives."""
    if "SIGTERM" not in names:
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_signals(names: tuple[str, ...], worker_id: int = 0) -> None:
    """A worker's ``worker_init_fn``: the run's stop signals do not stop a worker. A scheduler's
    SIGTERM reaches every process of a job, and a worker it killed would crash the main process
    before its checkpoint; the main process stops its workers itself. SIGTERM is still obeyed when
    the main process sends it (its fallback at shutdown): it is blocked (from the fork on, see
    :func:`workers_start_shielded`) and read by a thread that checks the sender, since ignoring it
    would leave the main process waiting for the worker."""
    for name in names:
        if name != "SIGTERM":
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if "SIGTERM" in names:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit it
        threading.Thread(target=_exit_when_the_parent_asks, daemon=True, name="sigterm-from-parent").start()


def default_workers() -> int:
    """``data.workers`` when unset: one per CPU core the process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(8, n))
