"""Contrastive representation distillation (memory banks, class-aware sampling, NCE)."""
from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .base import ConfigError, Term
from .heads import Embed
from .published import bracket, ce, publish
from .registry import register

POSITIVES = ("exact", "relax")
SCORINGS = ("auto", "gather", "matmul")
MATMUL_MAX_ELEMENTS = 2 ** 26  # "auto" builds the N x B score matrix up to 64M entries (256 MB)
NCE_EPS = 1e-7


def nce_loss(p: torch.Tensor, num_samples: int) -> torch.Tensor:
    """CRD's NCE loss with noise distribution Pn = 1/N (RepDistiller ``ContrastLoss``).

    p: (B, K+1) normalised scores, column 0 the positive. With m = K * Pn,
    ``D1 = p_pos / (p_pos + m + eps)``, ``D0 = m / (p_neg + m + eps)`` and
    ``L = -(sum log D1 + sum log D0) / B``.
    """
    m = (p.shape[1] - 1) / num_samples
    log_d1 = torch.log(p[:, 0] / (p[:, 0] + m + NCE_EPS))
    log_d0 = torch.log(m / (p[:, 1:] + m + NCE_EPS))
    return -(log_d1.sum() + log_d0.sum()) / p.shape[0]


def bank_scores(bank: torch.Tensor, anchor: torch.Tensor, idx: torch.Tensor, scoring: str) -> torch.Tensor:
    """``<bank[idx[b, k]], anchor[b]>``, (B, K+1).

    "gather" copies the B x (K+1) x d bank rows (the reference's way); "matmul" scores the whole
    bank once (B x N) and picks the columns: the same numbers from far less memory traffic when
    K+1 is large next to N / B.
    """
    if scoring == "gather":
        return torch.bmm(bank[idx], anchor.unsqueeze(2)).squeeze(2)
    return (anchor @ bank.t()).gather(1, idx)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _row_counts(t: torch.Tensor) -> list[int]:
    """Every rank's row count of ``t``."""
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    return [int(s) for s in sizes]


def gather_rows(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Concatenate every rank's rows of each tensor (ranks may hold different row counts)."""
    world = dist.get_world_size()
    sizes = _row_counts(tensors[0])
    out = []
    for t in tensors:
        padded = t.new_zeros((max(sizes),) + tuple(t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:s] for p, s in zip(parts, sizes)]))
    return out


@register
class CRD(Term):
    """Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020 (NCE form of the
    contrastive objective with a memory bank, as in the reference code).

    ``e_s = Embed_s(embed_s)``, ``e_t = Embed_t(embed_t)`` (Linear to ``feat_dim``, l2-normalised;
    both heads learned, the teacher's features detached). Two memory banks (N x feat_dim buffers,
    init uniform in +-1/sqrt(feat_dim/3)) hold past student (``bank_s``) and teacher
    (``bank_t``) embeddings of every training row. For each sample, idx = [positive, K negatives]:
    the positive is the sample itself ("exact") or a random sample of its class ("relax"); the
    negatives are drawn uniformly, without replacement, from the *other* classes (a loader-provided
    ``batch['contrast_index']`` (B, K+1) is used instead when present). Scores
    ``p_s = exp(<bank_t[idx], e_s> / tau) / Z_s`` (student anchor) and
    ``p_t = exp(<bank_s[idx], e_t> / tau) / Z_t`` (teacher anchor), with each Z fixed once, on the
    first batch, to ``mean(exp(...)) * N`` and kept in the ``Z`` buffer.
    ``L = NCE(p_s) + NCE(p_t)`` (see :func:`nce_loss`). After the loss, in training mode, the rows
    of the batch are updated: ``bank[i] <- normalise(m * bank[i] + (1 - m) * e)``; with
    ``sync_bank`` and torch.distributed running, the banks start from rank 0's, every rank applies
    every rank's rows and Z is the mean over ranks (the reference does not synchronise).

    Negatives are drawn without replacement whenever the other-class pool holds K rows
    (RepDistiller's default), on the device (see :meth:`_distinct_negatives`); ``replacement=True``
    draws them independently with replacement instead (one ``randint``; at K=16384 of 49500
    CIFAR-100 candidates ~15% of those draws repeat an earlier one).

    Args:
        feat_dim: embedding width (128), num_negatives: K (16384), tau: temperature (0.07),
        momentum: bank momentum m (0.5), positive: "exact" or "relax" ("exact"),
        scoring: "auto", "gather" or "matmul" (same values; "auto" = matmul when N * B <= 64M),
        sync_bank: all-gather bank updates across ranks under DDP (True),
        replacement: draw negatives with replacement (False: without, as RepDistiller).
        (RepDistiller names: feat_dim, nce_k, nce_t, nce_m, mode.)

    Recommended weight: 0.8 (RepDistiller, CIFAR-100); CRD+KD adds ``kd`` with weight 1.
    """

    name = "crd"
    needs_train_targets = True

    def __init__(self, feat_dim: int = 128, num_negatives: int = 16384, tau: float = 0.07,
                 momentum: float = 0.5, positive: str = "exact", scoring: str = "auto",
                 sync_bank: bool = True, replacement: bool = False):
        super().__init__()
        if positive not in POSITIVES:
            raise ConfigError(f"crd positive={positive!r} is unknown; use one of {POSITIVES}")
        if scoring not in SCORINGS:
            raise ConfigError(f"crd scoring={scoring!r} is unknown; use one of {SCORINGS}")
        if num_negatives < 1 or tau <= 0 or not 0 <= momentum < 1:
            raise ConfigError(f"crd needs num_negatives >= 1, tau > 0 and 0 <= momentum < 1; got "
                              f"{num_negatives}, {tau}, {momentum} (published: 16384, 0.07, 0.5)")
        self.feat_dim, self.num_negatives, self.tau, self.momentum = feat_dim, num_negatives, tau, momentum
        self.positive, self.scoring, self.sync_bank, self.replacement = positive, scoring, sync_bank, replacement
        self._short_pool = False
        self.embed_s = self.embed_t = None
        self.register_buffer("Z", torch.full((2,), -1.0))  # (student anchor, teacher anchor); < 0: unset
        self._z_ready = False

    def setup(self, ctx):
        n, dev = ctx.num_samples, ctx.device
        targets = torch.as_tensor(ctx.train_targets).long().to(dev)
        if targets.shape != (n,):
            raise ConfigError(f"crd needs one label per training row: train_targets has shape "
                              f"{tuple(targets.shape)} but num_samples={n}")
        counts = torch.bincount(targets, minlength=ctx.num_classes)
        others = n - counts[counts > 0]
        if int(others.min()) == 0:
            raise ConfigError("crd draws negatives from other classes, but the training set has a "
                              "single class; use a non-contrastive method (e.g. kd, rkd, pkt)")
        # RepDistiller draws without replacement when the other-class pool holds K rows, else with.
        self._short_pool = int(others.min()) < self.num_negatives
        if self._short_pool and not self.replacement:
            warnings.warn(f"crd: some class has only {int(others.min())} samples of other classes, "
                          f"fewer than num_negatives={self.num_negatives}; negatives are drawn with "
                          "replacement, so they repeat (lower num_negatives to avoid it)")
        self._max_count = int(counts.max())
        steps = torch.arange(1, n + 1, device=dev)
        self.register_buffer("_strides", steps[torch.gcd(steps, torch.tensor(n, device=dev)) == 1], persistent=False)
        # Class-sorted rows: the other-class rows of class c are every slot outside
        # [starts[c], starts[c] + counts[c]), so a negative is one random offset into N - n_c slots.
        self.register_buffer("_targets", targets, persistent=False)
        self.register_buffer("_counts", counts, persistent=False)
        self.register_buffer("_starts", torch.cumsum(counts, 0) - counts, persistent=False)
        self.register_buffer("_order", torch.argsort(targets, stable=True), persistent=False)
        self.embed_s = Embed(ctx.student_out["embed"].flatten(1).shape[1], self.feat_dim).to(dev)
        self.embed_t = Embed(ctx.teacher_out["embed"].flatten(1).shape[1], self.feat_dim).to(dev)
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        self.register_buffer("bank_s", (torch.rand(n, self.feat_dim, device=dev) * 2 - 1) * stdv)
        self.register_buffer("bank_t", (torch.rand(n, self.feat_dim, device=dev) * 2 - 1) * stdv)
        if self.sync_bank and _distributed():  # ranks may be seeded differently: start from rank 0's
            dist.broadcast(self.bank_s, 0)
            dist.broadcast(self.bank_t, 0)
        self.Z = self.Z.to(dev)

    def sample_contrast(self, index: torch.Tensor) -> torch.Tensor:
        """(B, K+1) bank rows: column 0 the positive, then K negatives of other classes.

        Under torch.distributed (with ``sync_bank``) every rank draws the rows of the whole global
        batch from the same random stream and keeps its own slice, so the draws do not depend on
        how the global batch is split over processes."""
        if self.sync_bank and _distributed():
            sizes = _row_counts(index)
            rank = dist.get_rank()
            (everyone,) = gather_rows(index)
            start = sum(sizes[:rank])
            return self._sample(everyone)[start:start + sizes[rank]]
        return self._sample(index)

    def _sample(self, index: torch.Tensor) -> torch.Tensor:
        b, k, n = index.shape[0], self.num_negatives, self._targets.shape[0]
        y = self._targets[index]
        count, start = self._counts[y], self._starts[y]
        if self.replacement or self._short_pool:
            r = torch.randint(2 ** 62, (b, k), device=index.device) % (n - count)[:, None]
            slot = r + (r >= start[:, None]) * count[:, None]
            neg = self._order[slot]
        else:
            neg = self._distinct_negatives(y)
        if self.positive == "exact":
            pos = index
        else:
            pos = self._order[start + torch.randint(2 ** 62, (b,), device=index.device) % count]
        return torch.cat([pos[:, None], neg], dim=1)

    def _distinct_negatives(self, y: torch.Tensor) -> torch.Tensor:
        """(B, K) rows of other classes than ``y``, distinct within each row, in a few tensor ops.

        One random permutation ``perm`` of the N rows per step. Row b reads it along the
        progression ``perm[(o_b + a_b j) mod N]``, j = 0, 1, ..., from a random offset o_b with a
        random stride a_b coprime to N (so the progression visits every row once), and keeps the
        first K rows whose class is not y_b. The progression is a bijection, so each row reads a
        uniform ordering of the N rows, and dropping class y_b leaves a uniform ordering of its
        other-class pool: each row's K negatives are a uniform K-subset drawn without
        replacement, as RepDistiller's ``np.random.choice(..., replace=False)``. Rows of one step
        share ``perm``; random strides keep their sets from being shifted copies of each other.
        K + (largest class) reads always hold K rows of another class."""
        b, k, n = y.shape[0], self.num_negatives, self._targets.shape[0]
        dev = y.device
        perm = torch.randperm(n, device=dev)
        offset = torch.randint(n, (b, 1), device=dev)
        stride = self._strides[torch.randint(len(self._strides), (b, 1), device=dev)]
        steps = torch.arange(k + self._max_count, device=dev)
        window = perm[(offset + stride * steps) % n]                         # (B, K + max count)
        other = self._targets[window] != y[:, None]
        keep = other & (torch.cumsum(other, 1) <= k)                       # the first K of them
        return window[keep].view(b, k)

    def resolved_scoring(self, batch_size: int) -> str:
        """The scoring "auto" stands for at this batch size."""
        if self.scoring != "auto":
            return self.scoring
        return "matmul" if self.bank_s.shape[0] * batch_size <= MATMUL_MAX_ELEMENTS else "gather"

    def _set_z(self, out_s: torch.Tensor, out_t: torch.Tensor) -> None:
        if not self._z_ready:
            self._z_ready = bool((self.Z > 0).all())
        if self._z_ready:
            return
        z = torch.stack([out_s.mean(), out_t.mean()]).detach() * self.bank_s.shape[0]
        if self.sync_bank and _distributed():
            dist.all_reduce(z)
            z /= dist.get_world_size()
        self.Z.copy_(z)
        self._z_ready = True

    def _load_from_state_dict(self, *args, **kwargs):
        self._z_ready = False  # a loaded Z may be set or unset: look again on the next step
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def _update_banks(self, index: torch.Tensor, e_s: torch.Tensor, e_t: torch.Tensor) -> None:
        if self.sync_bank and _distributed():
            index, e_s, e_t = gather_rows(index, e_s, e_t)
        # Out of place: the matmul scoring saved the old bank for this step's backward.
        for name, e in (("bank_s", e_s), ("bank_t", e_t)):
            bank = getattr(self, name)
            rows = bank[index] * self.momentum + e.to(bank.dtype) * (1 - self.momentum)
            setattr(self, name, bank.index_copy(0, index, F.normalize(rows, dim=1)))

    def forward(self, student, teacher, batch):
        if self.embed_s is None:
            raise RuntimeError("crd: call setup(ctx) before the first forward")
        index = batch["index"].to(self.bank_s.device).long()
        idx = batch.get("contrast_index")
        if idx is None:
            idx = self.sample_contrast(index)
        else:
            idx = idx.to(index.device).long()
            if idx.dim() != 2 or idx.shape[0] != index.shape[0] or idx.shape[1] < 2:
                raise ConfigError(f"crd: batch['contrast_index'] must be (B, K+1) with K >= 1 and "
                                  f"B={index.shape[0]}, got {tuple(idx.shape)}")
        n, scoring = self.bank_s.shape[0], self.resolved_scoring(index.shape[0])
        # Scores go through exp(./0.07): keep them in the banks' precision whatever autocast says.
        with torch.autocast(device_type=index.device.type, enabled=False):
            e_s = self.embed_s(student["embed"].to(self.bank_s.dtype))
            e_t = self.embed_t(teacher["embed"].detach().to(self.bank_s.dtype))
            out_s = torch.exp(bank_scores(self.bank_t, e_s, idx, scoring) / self.tau)
            out_t = torch.exp(bank_scores(self.bank_s, e_t, idx, scoring) / self.tau)
            self._set_z(out_s, out_t)
            loss = nce_loss(out_s / self.Z[0], n) + nce_loss(out_t / self.Z[1], n)
        if self.training:
            self._update_banks(index, e_s.detach(), e_t.detach())
        return loss


# Published recipes (RepDistiller run_cifar_distill.sh: CE + 0.8 CRD; CRD+KD adds KD at alpha 1, T=4),
# with 4096 negatives instead of 16384 (the benchmark's small training sets).
_CRD = {"name": "crd", "weight": 0.8, "num_negatives": 4096}
publish("crd", label="CRD", order=13, terms=[ce(), _CRD], grid=bracket("crd", "weight", 0.8), tune_priority=5)
publish("crd_kd", label="CRD+KD", order=14, terms=[ce(), {"name": "kd", "weight": 1.0, "T": 4}, _CRD],
        grid=bracket("crd", "weight", 0.8), tune_priority=8, demo=3)
