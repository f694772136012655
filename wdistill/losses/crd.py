"""Contrastive representation distillation (memory banks, class-aware sampling, NCE)."""
from __future__ import annotations

import torch

from wdistill.errors import ConfigError
from wdistill.losses._shared import distributed as ddist
from wdistill.losses._shared.heads import Embed
from wdistill.losses._shared.memory import (  # noqa: F401 (re-exported)
    MATMUL_MAX_ELEMENTS,
    SCORINGS,
    ClassSampler,
    PendingRows,
    bank_scores,
    cap_negatives,
    check_options,
    init_bank,
    momentum_update_,
    resolve_scoring,
)
from wdistill.losses.base import Term
from wdistill.losses.recipes import bracket, ce, publish
from wdistill.losses.registry import register

POSITIVES = ("exact", "relax")
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
    ``L = NCE(p_s) + NCE(p_t)`` (see :func:`nce_loss`). In training mode forward records the batch's
    embeddings and ``after_step`` (after the optimiser step) updates their rows:
    ``bank[i] <- normalise(m * bank[i] + (1 - m) * e)``; with
    ``sync_bank`` and torch.distributed running, the banks start from rank 0's, every rank applies
    every rank's rows and Z is the mean over ranks (the reference does not synchronise).

    Negatives are drawn without replacement (RepDistiller's default whenever the other-class pool holds
    K rows), on the device (``memory.ClassSampler.distinct_other_class``). When the smallest pool is
    smaller than K (a small data set), K is capped at it, with one warning, so that no negative
    repeats (RepDistiller draws K with replacement there: ``replacement=True``). ``replacement=True``
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
    built_by_setup = ("embed_s",)
    num_negatives_param = "num_negatives"
    needs_train_targets = True

    def __init__(self, feat_dim: int = 128, num_negatives: int = 16384, tau: float = 0.07,
                 momentum: float = 0.5, positive: str = "exact", scoring: str = "auto",
                 sync_bank: bool = True, replacement: bool = False):
        super().__init__()
        if positive not in POSITIVES:
            raise ConfigError(f"crd positive={positive!r} is unknown; use one of {POSITIVES}")
        check_options("crd", num_negatives, momentum, scoring)
        if tau <= 0:
            raise ConfigError(f"crd needs tau > 0, got {tau} (published: 0.07)")
        self.feat_dim, self.num_negatives, self.tau, self.momentum = feat_dim, num_negatives, tau, momentum
        self.positive, self.scoring, self.sync_bank, self.replacement = positive, scoring, sync_bank, replacement
        self.k = num_negatives  # negatives per anchor in force: num_negatives, capped by setup
        self.embed_s = self.embed_t = None
        self.register_buffer("Z", torch.full((2,), -1.0))  # (student anchor, teacher anchor); < 0: unset
        self._z_ready = False
        self.sampler: ClassSampler | None = None
        self._pending = PendingRows()  # this step's rows, written to the banks by after_step

    def setup(self, ctx):
        n, dev = ctx.num_samples, ctx.device
        targets = torch.as_tensor(ctx.train_targets).long().to(dev)
        if targets.shape != (n,):
            raise ConfigError(f"crd needs one label per training row: train_targets has shape "
                              f"{tuple(targets.shape)} but num_samples={n}")
        self.sampler = ClassSampler(targets, ctx.num_classes)
        fewest = self.sampler.fewest_others()
        if fewest == 0:
            raise ConfigError("crd draws negatives from other classes, but the training set has a "
                              "single class; use a non-contrastive method (e.g. kd, rkd, pkt)")
        # The published K wherever the other-class pool holds it; a smaller pool caps K (one warning)
        # instead of repeating negatives, unless replacement=True (RepDistiller's small-pool draw).
        self.k = self.num_negatives if self.replacement else cap_negatives("crd", self.num_negatives, fewest)
        self.embed_s = Embed(ctx.student_out["embed"].flatten(1).shape[1], self.feat_dim).to(dev)
        self.embed_t = Embed(ctx.teacher_out["embed"].flatten(1).shape[1], self.feat_dim).to(dev)
        self.register_buffer("bank_s", init_bank(n, self.feat_dim, "uniform", dev))
        self.register_buffer("bank_t", init_bank(n, self.feat_dim, "uniform", dev))
        if self.sync_bank:  # ranks may be seeded differently: start from rank 0's
            ddist.broadcast_(self.bank_s)
            ddist.broadcast_(self.bank_t)
        self.Z = self.Z.to(dev)

    def sample_contrast(self, index: torch.Tensor) -> torch.Tensor:
        """(B, K+1) bank rows: column 0 the positive, then K negatives of other classes.

        Under torch.distributed (with ``sync_bank``) every rank draws the rows of the whole global
        batch from the same random stream and keeps its own slice, so the draws do not depend on
        how the global batch is split over processes."""
        if self.sync_bank and ddist.distributed():
            sizes = ddist.row_counts(index)
            (everyone,) = ddist.gather_rows(index, sizes=sizes)
            start = sum(sizes[:ddist.rank()])
            return self._sample(everyone)[start:start + sizes[ddist.rank()]]
        return self._sample(index)

    def _sample(self, index: torch.Tensor) -> torch.Tensor:
        y = self.sampler.targets[index]
        if self.replacement:
            negatives = self.sampler.other_class(y, self.k)
        else:
            negatives = self.sampler.distinct_other_class(y, self.k)
        pos = index if self.positive == "exact" else self.sampler.same_class(y)
        return torch.cat([pos[:, None], negatives], dim=1)

    def resolved_scoring(self, batch_size: int) -> str:
        """The scoring "auto" stands for at this batch size."""
        return resolve_scoring(self.scoring, self.bank_s.shape[0], batch_size, MATMUL_MAX_ELEMENTS)

    def _set_z(self, out_s: torch.Tensor, out_t: torch.Tensor) -> None:
        if not self._z_ready:
            self._z_ready = bool((self.Z > 0).all())
        if self._z_ready:
            return
        z = torch.stack([out_s.mean(), out_t.mean()]).detach() * self.bank_s.shape[0]
        if self.sync_bank:
            ddist.all_mean_(z)
        self.Z.copy_(z)
        self._z_ready = True

    def _load_from_state_dict(self, *args, **kwargs):
        self._z_ready = False  # a loaded Z may be set or unset: look again on the next step
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def after_step(self, student, teacher, batch) -> None:
        """Update the bank rows of this step's samples (every micro-batch, every rank's with ``sync_bank``)."""
        rows = self._pending.take(sync=self.sync_bank)
        if rows is None:
            return
        index, e_s, e_t = rows
        # In place: the step's backward, which needed the old bank, is over.
        momentum_update_(self.bank_s, index, e_s, self.momentum)
        momentum_update_(self.bank_t, index, e_t, self.momentum)

    def forward(self, student, teacher, batch):
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
            self._pending.add(index, e_s, e_t)
        return loss


# Published recipes (RepDistiller run_cifar_distill.sh: CE + 0.8 CRD; CRD+KD adds KD at alpha 1, T=4),
# with 4096 negatives instead of 16384 (the benchmark's small training sets).
_CRD = {"name": "crd", "weight": 0.8, "num_negatives": 4096}
publish("crd", label="CRD", order=13, terms=[ce(), _CRD], grid=bracket("crd", "weight", 0.8), tune_priority=5)
publish("crd_kd", label="CRD+KD", order=14, terms=[ce(), {"name": "kd", "weight": 1.0, "T": 4}, _CRD],
        grid=bracket("crd", "weight", 0.8), tune_priority=8, demo=3)
