"""Memory banks and label-aware negative sampling shared by the contrastive terms (CRD, WCoRD).

One vocabulary for both terms' options: ``num_negatives`` (K), ``momentum`` (m), ``scoring``
("auto", "gather", "matmul"), ``sync_bank``. A bank is an (N, d) buffer of the term (its
checkpoint key stays the term's own), with one row per training sample:

* :func:`init_bank` - CRD's uniform rows in +-1/sqrt(d/3), or normalised Gaussian rows;
* :func:`bank_scores` - ``<bank[idx[b, k]], anchor[b]>`` by gathering rows or by one (B, N) matmul;
* :class:`PendingRows` - rows recorded by ``forward`` (every micro-batch), gathered over ranks and
  written by ``after_step``: ``bank[i] <- normalise(m * bank[i] + (1 - m) * e)``;
* :class:`ClassSampler` - K negatives per anchor from the other classes (or from every row).
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from wdistill.errors import ConfigError
from wdistill.losses._shared import distributed as ddist

SCORINGS = ("auto", "gather", "matmul")
MATMUL_MAX_ELEMENTS = 2 ** 26  # "auto" builds the N x B score matrix up to 64M entries (256 MB)


def cap_negatives(term: str, k: int, pool: int) -> int:
    """The negatives per anchor in force: ``k``, or the size of the smallest pool they are drawn from
    when that is smaller (with one warning naming both), so that no negative repeats."""
    if pool >= k:
        return k
    warnings.warn(f"{term}: the smallest pool of negatives holds {pool} training rows, fewer than num_negatives={k}: "
                  f"using {pool} negatives per anchor (the published K applies wherever the data allow it)",
                  stacklevel=3)
    return pool


def check_options(term: str, num_negatives: int, momentum: float, scoring: str) -> None:
    if scoring not in SCORINGS:
        raise ConfigError(f"{term} scoring={scoring!r} is unknown; use one of {SCORINGS}")
    if num_negatives < 1 or not 0 <= momentum < 1:
        raise ConfigError(f"{term} needs num_negatives >= 1 and 0 <= momentum < 1; got {num_negatives}, {momentum} "
                          "(published: 16384, 0.5)")


def resolve_scoring(scoring: str, num_rows: int, batch_size: int, max_elements: int = MATMUL_MAX_ELEMENTS) -> str:
    """The scoring "auto" stands for: matmul while the (B, N) score matrix stays small."""
    if scoring != "auto":
        return scoring
    return "matmul" if num_rows * batch_size <= max_elements else "gather"


def bank_scores(bank: torch.Tensor, anchor: torch.Tensor, idx: torch.Tensor, scoring: str) -> torch.Tensor:
    """``<bank[idx[b, k]], anchor[b]>``, (B, K').

    "gather" copies the B x K' x d bank rows (the reference's way); "matmul" scores the whole
    bank once (B x N) and picks the columns: the same numbers from far less memory traffic when
    K' is large next to N / B.
    """
    if scoring == "gather":
        return torch.bmm(bank[idx], anchor.unsqueeze(2)).squeeze(2)
    return (anchor @ bank.t()).gather(1, idx)


def init_bank(num_rows: int, dim: int, init: str, device) -> torch.Tensor:
    """"uniform": CRD's rows, uniform in +-1/sqrt(dim/3); "normal": unit-norm Gaussian rows."""
    if init == "uniform":
        stdv = 1.0 / math.sqrt(dim / 3)
        return (torch.rand(num_rows, dim, device=device) * 2 - 1) * stdv
    return F.normalize(torch.randn(num_rows, dim, device=device), dim=1)


@torch.no_grad()
def momentum_update_(bank: torch.Tensor, index: torch.Tensor, values: torch.Tensor, momentum: float,
                     normalise: bool = True) -> None:
    """``bank[i] <- normalise(m * bank[i] + (1 - m) * v)`` for the rows ``index``, in place
    (without ``normalise``: the convex combination itself)."""
    rows = bank[index] * momentum + values.to(bank.dtype) * (1 - momentum)
    bank.index_copy_(0, index, F.normalize(rows, dim=1) if normalise else rows)


class PendingRows:
    """(index, values...) recorded by each training forward of one optimiser step, taken once by
    ``after_step``: concatenated over micro-batches and, with ``sync``, over ranks."""

    def __init__(self):
        self._rows: list[tuple[torch.Tensor, ...]] = []

    def add(self, index: torch.Tensor, *values: torch.Tensor) -> None:
        self._rows.append((index, *(v.detach() for v in values)))

    def take(self, sync: bool = True) -> list[torch.Tensor] | None:
        if not self._rows:
            return None
        rows = [torch.cat(x) for x in zip(*self._rows)]
        self._rows = []
        return ddist.gather_rows(*rows) if sync else rows


class ClassSampler(nn.Module):
    """Rows of the training set by label, drawn on the device without a Python loop.

    The rows sorted by class put class c in slots [start[c], start[c] + count[c]) of ``order``,
    so a row of another class is one random offset into the N - count[c] other slots. The tables
    are non-persistent buffers: rebuilt by ``setup``, never in a checkpoint.
    """

    def __init__(self, targets: torch.Tensor, num_classes: int):
        super().__init__()
        targets = torch.as_tensor(targets).long()
        counts = torch.bincount(targets, minlength=num_classes)
        self.register_buffer("targets", targets, persistent=False)
        self.register_buffer("counts", counts, persistent=False)
        self.register_buffer("starts", torch.cumsum(counts, 0) - counts, persistent=False)
        self.register_buffer("order", torch.argsort(targets, stable=True), persistent=False)
        n = targets.shape[0]
        steps = torch.arange(1, n + 1, device=targets.device)
        self.register_buffer("strides", steps[torch.gcd(steps, torch.tensor(n, device=targets.device)) == 1],
                             persistent=False)  # every stride coprime to N
        self.max_count = int(counts.max())

    @property
    def num_rows(self) -> int:
        return self.targets.shape[0]

    def fewest_others(self) -> int:
        """The smallest pool of other-class rows over the classes present (0: a single class)."""
        return int((self.num_rows - self.counts[self.counts > 0]).min())

    def other_class(self, y: torch.Tensor, k: int) -> torch.Tensor:
        """(B, k) rows whose labels differ from y[b], uniform over them, with replacement."""
        n, count, start = self.num_rows, self.counts[y][:, None], self.starts[y][:, None]
        r = torch.randint(2 ** 62, (y.shape[0], k), device=y.device) % (n - count)
        return self.order[r + (r >= start) * count]

    def distinct_other_class(self, y: torch.Tensor, k: int) -> torch.Tensor:
        """(B, k) rows of other classes than ``y``, distinct within each row, in a few tensor ops
        (needs k <= the smallest other-class pool).

        One random permutation ``perm`` of the N rows per call. Row b reads it along the
        progression ``perm[(o_b + a_b j) mod N]``, j = 0, 1, ..., from a random offset o_b with a
        random stride a_b coprime to N (so the progression visits every row once), and keeps the
        first k rows whose class is not y_b. The progression is a bijection, so each row reads a
        uniform ordering of the N rows, and dropping class y_b leaves a uniform ordering of its
        other-class pool: each row's k negatives are a uniform k-subset drawn without
        replacement, as RepDistiller's ``np.random.choice(..., replace=False)``. Rows of one call
        share ``perm``; random strides keep their sets from being shifted copies of each other.
        k + (largest class) reads always hold k rows of another class."""
        b, n, dev = y.shape[0], self.num_rows, y.device
        perm = torch.randperm(n, device=dev)
        offset = torch.randint(n, (b, 1), device=dev)
        stride = self.strides[torch.randint(len(self.strides), (b, 1), device=dev)]
        window = perm[(offset + stride * torch.arange(k + self.max_count, device=dev)) % n]  # (B, k + max count)
        other = self.targets[window] != y[:, None]
        keep = other & (torch.cumsum(other, 1) <= k)  # the first k of them
        # window[keep].view(b, k) without a boolean mask (a host sync on a GPU): each kept entry to its slot
        # 0..k-1 of the row, the others to a spare slot k, dropped
        slot = torch.where(keep, torch.cumsum(keep, 1) - 1, k)
        return window.new_empty(b, k + 1).scatter_(1, slot, window)[:, :k]

    def same_class(self, y: torch.Tensor) -> torch.Tensor:
        """(B,) one random row of each label y[b]."""
        r = torch.randint(2 ** 62, y.shape, device=y.device) % self.counts[y]
        return self.order[self.starts[y] + r]

    def uniform(self, b: int, k: int, device) -> torch.Tensor:
        """(b, k) rows of any label, with replacement."""
        return torch.randint(0, self.num_rows, (b, k), device=device)
