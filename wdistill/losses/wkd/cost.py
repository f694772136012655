"""WKD-L category cost matrices: built once from the teacher, cached by the teacher's checksum."""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Callable, Iterable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from wdistill import ot
from wdistill.errors import FileLoadError
from wdistill.io import atomic_save, safe_load
from wdistill.models.det_features import class_box_features

log = logging.getLogger(__name__)


def _say(msg: str) -> None:
    # Building the cost can take minutes: always tell the user, whether or not logging is set up.
    log.info(msg)
    tqdm.write(msg)

MODES = ("features", "logits")


def teacher_checksum(model: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and values of ``model.state_dict()``."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def collect_class_features(teacher_tap: Callable[[torch.Tensor], dict], batches: Iterable[dict],
                           num_classes: int, mode: str = "features", max_per_class: int | None = None,
                           device: torch.device | str | None = None, progress: bool | None = True) -> torch.Tensor:
    """Teacher features of every class, rows paired across classes: (C, n, D).

    mode "features": the last-stage map ``feats[-1]`` (B, D, H, W) of each image, each spatial
    position a row (CIFAR-100 in WKD); mode "logits": one row of teacher logits per image (ImageNet
    in WKD). Images of a class are ordered by dataset index and the k-th image of every class is
    paired with the k-th of every other; all classes are cut to the smallest class count (or to
    ``max_per_class``), as in the reference construction. ``progress``: True shows a bar, None
    only on a terminal (as the trainer's bars), False never.
    """
    if mode not in MODES:
        raise ValueError(f"unknown CKA feature mode {mode!r}; use one of {MODES}")
    per_class: list[list[tuple[int, torch.Tensor]]] = [[] for _ in range(num_classes)]
    with torch.no_grad():
        # A bar with a total (a loader has a length) so it shows real progress, not a bare "0it".
        total = len(batches) if hasattr(batches, "__len__") else None
        bar = tqdm(batches, desc=f"WKD cost: teacher {mode}", total=total, leave=False,
                   disable=None if progress is None else not progress)
        for batch in bar:
            x = batch["image"] if device is None else batch["image"].to(device)
            out = teacher_tap(x)
            if mode == "features":
                f = out["feats"][-1].float()
                rows = f.flatten(2).transpose(1, 2)  # (B, HW, D)
            else:
                rows = out["logits"].float().unsqueeze(1)  # (B, 1, C)
            rows = rows.cpu()
            targets = batch["target"].tolist()
            index = batch["index"].tolist() if "index" in batch else [None] * len(targets)
            for r, y, i in zip(rows, targets, index):
                if not 0 <= y < num_classes:
                    raise ValueError(f"label {y} outside [0, {num_classes}) while building the WKD cost")
                per_class[y].append((len(per_class[y]) if i is None else i, r))
    return _stack_classes(per_class, max_per_class)


def _stack_classes(per_class: list[list[tuple[int, torch.Tensor]]], max_per_class: int | None) -> torch.Tensor:
    """(C, n * rows, D) from each class's (order key, rows of one example) entries: entries sorted by
    key, every class cut to the smallest entry count (or ``max_per_class``); the k-th entry of every
    class is paired with the k-th of every other."""
    counts = [len(c) for c in per_class]
    if min(counts) == 0:
        missing = [c for c, k in enumerate(counts) if k == 0][:10]
        raise ValueError(f"classes {missing} have no training images: the CKA cost needs every class; "
                         "use cost='cosine_classifier' or give a saved cost matrix")
    n = min(counts) if max_per_class is None else min(min(counts), max_per_class)
    stacked = []
    for rows in per_class:
        rows.sort(key=lambda p: p[0])
        stacked.append(torch.cat([r for _, r in rows[:n]], 0))
    return torch.stack(stacked)


def collect_box_class_features(teacher: nn.Module, batches: Iterable[dict], num_classes: int,
                               mode: str = "features", max_per_class: int | None = None,
                               device: torch.device | str | None = None, progress: bool | None = True) -> torch.Tensor:
    """A teacher detector's box rows of every class, background included: (K + 1, n * R, D).

    Each training image's ground-truth boxes give rows of their class and as many background
    proposals give rows of class 0 (:func:`wdistill.models.det_features.class_box_features`; mode
    "features": each box's RoI-Align map, R = S x S rows, one per position; "logits": its class
    logits, R = 1). Boxes keep the order of the batches; the k-th box of every class is paired with
    the k-th of every other, position with position, all classes cut to the smallest box count (or
    ``max_per_class`` boxes, which also ends the pass once every class has that many).
    ``batches``: detection batches (``images``, ``targets``), un-flipped.
    """
    per_class: list[list[tuple[int, torch.Tensor]]] = [[] for _ in range(num_classes)]
    total = len(batches) if hasattr(batches, "__len__") else None
    bar = tqdm(batches, desc=f"WKD cost: teacher box {mode}", total=total, leave=False,
               disable=None if progress is None else not progress)
    for batch in bar:
        images = [x if device is None else x.to(device) for x in batch["images"]]
        targets = [{k: v.to(images[0].device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
                   for t in batch["targets"]]
        rows, labels, _ = class_box_features(teacher, images, targets, mode)
        for r, y in zip(rows.float().cpu(), labels.tolist()):
            if not 0 <= y < num_classes:
                raise ValueError(f"box label {y} outside [0, {num_classes}) while building the WKD cost")
            if max_per_class is None or len(per_class[y]) < max_per_class:
                per_class[y].append((len(per_class[y]), r))
        if max_per_class is not None and min(len(c) for c in per_class) >= max_per_class:
            break
    return _stack_classes(per_class, max_per_class)


def build_cost_matrix(teacher_tap: Callable[[torch.Tensor], dict], batches: Iterable[dict], num_classes: int,
                      kappa: float = 1.0, mode: str = "features", max_per_class: int | None = None,
                      device: torch.device | str | None = None, progress: bool | None = True) -> torch.Tensor:
    """WKD-L category cost ``c_ij = 1 - exp(-kappa (1 - CKA_ij))`` from teacher features (C, C).

    Lv et al., NeurIPS 2024 (WKD-L): linear CKA between the teacher's class-conditional
    features (see :func:`collect_class_features` for the rows), sharpened by kappa.
    """
    feats = collect_class_features(teacher_tap, batches, num_classes, mode, max_per_class, device, progress)
    return ot.cka_cost(ot.class_cka_matrix(feats), kappa)


def load_or_build_cka(ctx, mode: str, max_per_class: int | None, progress: bool | None = None) -> torch.Tensor:
    """The (C, C) CKA matrix for ``ctx``'s teacher: loaded from ``ctx.cache_dir`` or built and saved.
    Only a build shows a progress bar (``progress`` as in :func:`collect_class_features`).

    The cache key holds the teacher's state_dict checksum, the task, the mode, the row cap and the
    training-set size, so a different teacher or data set never reuses a stale matrix. For a
    detector (``ctx.task == "detection"``) the rows are its RoI-Align features (or class logits) of
    ground-truth boxes and background proposals (:func:`collect_box_class_features`), background
    included.
    """
    detection = getattr(ctx, "task", "classification") == "detection"
    if (ctx.teacher if detection else ctx.teacher_tap) is None or ctx.train_batches is None:
        raise ValueError("the CKA cost needs a teacher and the training batches; give cost='cosine_classifier' "
                         "or the path of a saved (C, C) cost matrix instead")
    path = None
    if ctx.cache_dir and ctx.teacher is not None:
        # det2_: the RoI-Align rows by position (det_ held the box head's output, whose CKA was ~0 for every pair)
        key = (f"{teacher_checksum(ctx.teacher)[:16]}_{'det2_' if detection else ''}{mode}_{max_per_class or 'all'}"
               f"_n{ctx.num_samples}")
        path = os.path.join(ctx.cache_dir, f"wkd_cka_{key}.pt")
        if os.path.exists(path):
            try:
                cka = safe_load(path, what="cached WKD-L CKA matrix")
            except FileLoadError as e:  # a corrupt cache is rebuilt, never trusted
                _say(f"WKD-L: {e}; rebuilding it")
                cka = None
            if isinstance(cka, torch.Tensor) and cka.shape == (ctx.num_classes, ctx.num_classes) \
                    and torch.isfinite(cka).all():
                _say(f"WKD-L: loaded the CKA matrix from {path}")
                return cka
    _say(f"WKD-L: building the CKA matrix from teacher {'box ' if detection else ''}{mode} ({ctx.num_classes} "
         "classes)")
    if detection:
        feats = collect_box_class_features(ctx.teacher, ctx.train_batches(), ctx.num_classes, mode, max_per_class,
                                           ctx.device, progress)
    else:
        feats = collect_class_features(ctx.teacher_tap, ctx.train_batches(), ctx.num_classes, mode,
                                       max_per_class, ctx.device, progress)
    cka = ot.class_cka_matrix(feats).cpu()
    if path is not None:
        os.makedirs(ctx.cache_dir, exist_ok=True)
        atomic_save(cka, path)
        _say(f"WKD-L: saved the CKA matrix to {path}")
    return cka


def classifier_weight(teacher: nn.Module, num_classes: int) -> torch.Tensor:
    """The weight of the teacher's last ``nn.Linear`` with ``num_classes`` outputs."""
    found = [m for m in teacher.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not found:
        raise ValueError(f"cost='cosine_classifier' needs a final nn.Linear with {num_classes} outputs in the "
                         "teacher; none found: use cost='cka' or give a saved cost matrix")
    return found[-1].weight.detach()
