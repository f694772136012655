"""WKD-L: logit distillation by discrete Wasserstein distance (Lv, Yang, Li, NeurIPS 2024)."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from wdistill import ot
from wdistill.errors import ConfigError, FileLoadError
from wdistill.io import safe_load
from wdistill.losses.base import SetupContext, Term, mean_distribution_logits
from wdistill.losses.recipes import ce, det, publish, publish_detection
from wdistill.losses.registry import register
from wdistill.losses.wkd.cost import classifier_weight, load_or_build_cka
from wdistill.losses.wkd.decay import DEFAULT_DECAY_FRAC, check_decay_args, cosine_decayed, decay_start_epoch  # noqa: F401
from wdistill.losses.wkd.official import CIFAR as OFFICIAL_CIFAR
from wdistill.losses.wkd.official import l_params

# ``kernel``: how WKD-L's loss runs; a torch.compile mode for the compiled forms ("reduce-overhead" replays CUDA graphs
# on a GPU and is plain inductor on the CPU).
KERNELS = {"eager": None, "compiled": "default", "cuda_graph": "reduce-overhead"}


@functools.cache
def compiled_parts(mode: str):
    """:func:`wkd_l_parts` through ``torch.compile`` in ``mode``, one wrapper per mode for the process: a wrapper per
    term would compile again for every distiller built (and reach dynamo's recompile limit)."""
    return torch.compile(wkd_l_parts, mode=mode)


def _labels(target: torch.Tensor) -> torch.Tensor:
    # Soft targets (mixup/cutmix) count as their arg-max class, as in the reference code.
    return target.argmax(1) if target.dim() == 2 else target


def wkd_l_parts(s_logits: torch.Tensor, t_logits: torch.Tensor, target: torch.Tensor, cost: torch.Tensor,
                tau: float, reg: float = 0.05, num_iters: int = 10, solver: str = "plain",
                t_logits_nt: torch.Tensor | None = None, **log_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """WKD-L's two parts: (target term, batch-mean Wasserstein distance of the non-target parts).

    Target separation: ``loss_t = -mean_b(pT_y * log pS_y)`` with T=1 softmaxes, teacher detached.
    Non-target parts: softmax at ``tau`` over the C-1 non-target classes for both models; the
    discrete WD between them under the category cost is solved with the full (C, C) cost and the
    target's mass set to 0 in both marginals, which equals the per-sample (C-1)x(C-1) problem
    (``benchtools.kernels.wkd_l_reference`` in a checkout) without forming per-sample costs.
    WD = <P, cost>, no entropy term.

    Args:
        s_logits, t_logits: (B, C) logits (teacher is detached here).
        target: (B,) labels (or (B, C) soft labels, arg-max taken).
        cost: (C, C) category cost.
        tau: temperature of the non-target distributions.
        reg, num_iters: Sinkhorn regularisation and plain-domain iteration count.
        solver: "plain" (published, fixed iterations) or "log" (converged log-domain).
        t_logits_nt: teacher logits of the non-target part, when they differ (an ensemble's mean
            distribution at tau); default ``t_logits``.
        log_kwargs: tol / max_iters / backprop_iters for the "log" solver.
    """
    y = _labels(target).unsqueeze(1)
    t_logits = t_logits.detach()
    if cost.shape != (s_logits.shape[1],) * 2:
        raise ValueError(f"WKD-L cost is {tuple(cost.shape)} but the logits have {s_logits.shape[1]} classes")
    log_ps = F.log_softmax(s_logits, dim=1)
    pt = F.softmax(t_logits, dim=1)
    loss_t = -(pt.gather(1, y) * log_ps.gather(1, y)).mean()
    # -inf at the target gives the renormalised non-target softmax with an exact 0 there.
    ps_nt = F.softmax(s_logits.scatter(1, y, float("-inf")) / tau, dim=1)
    t_nt = t_logits if t_logits_nt is None else t_logits_nt.detach()
    pt_nt = F.softmax(t_nt.scatter(1, y, float("-inf")) / tau, dim=1)
    cost = cost.to(ps_nt.dtype)
    if solver == "plain":
        wd = ot.sinkhorn2(ps_nt, pt_nt, cost, reg, num_iters)
    elif solver == "log":
        wd = ot.sinkhorn_log2(ps_nt, pt_nt, cost, reg, **log_kwargs)
    else:
        raise ValueError(f"unknown WKD-L solver {solver!r}; use 'plain' or 'log'")
    return loss_t, wd.mean()


@register
class WKDLogits(Term):
    """WKD-L (Lv, Yang, Li, "Wasserstein Distance Rivals Kullback-Leibler Divergence for Knowledge
    Distillation", NeurIPS 2024), the logit part.

    ``L = loss_t + lambda_L(e) * WD(pS_nt, pT_nt)``: target separation at T=1 (weight 1, never
    decayed) plus the entropic discrete Wasserstein distance between the non-target distributions
    at temperature tau, under the category cost ``c_ij = 1 - exp(-kappa (1 - CKA_ij))``
    (see :func:`wkd_l_parts`). ``lambda_L(e)`` is cosine-decayed to 0 once the epoch e, counted
    from 1 as in the official trainer, exceeds s: ``lambda_L * 0.5 * (1 + cos(pi (e - s) / (E - s)))``.

    Defaults are the paper's CIFAR-100 resnet32x4 -> resnet8x4 setting: lambda_l=600, tau=8,
    kappa=1, decay from epoch 150 of 240 (``decay_start_frac=150/240``; or give ``decay_start`` in
    epochs), Sinkhorn reg=0.05 with 10 plain-domain iterations (``solver="log"`` runs to convergence).
    ``target_weight`` (named option, published 1) scales the target part: it is a cross-entropy on the
    target class weighted by the teacher's probability of it, so beside a task loss that already holds a
    cross-entropy (a detector's RoI classification) it adds a second pull towards confidence; 0 keeps
    only the Wasserstein part.

    ``kernel`` (named option, the same arithmetic): "eager" (default), "compiled" (``torch.compile``: on a GPU the
    Sinkhorn loop's elementwise operations fuse, fewer launches) or "cuda_graph" (``torch.compile`` in
    "reduce-overhead" mode: the loss's forward and backward replayed as CUDA graphs; on the CPU the same as
    "compiled"). Both need ``solver="plain"`` (the log solver stops on a host-side check). The first step pays
    the compilation; ``benchtools gpu`` times each form inside the training step.

    cost: "cka" (teacher class features, built in setup and cached by the teacher's checksum;
    ``cka_mode`` "features" = last-stage map rows, "logits" = one logit row per image; the official
    generator's choice per teacher is ``wkd_official.CKA_SOURCE``), "cosine_classifier" (1 - cosine of the
    teacher's classifier rows), a path to a saved (C, C) cost, or a tensor. As in the official code,
    kappa sharpens both built distances, ``c = 1 - exp(-kappa d)``; a saved or given cost is used as
    it is (``wdistill cost-matrix --kappa`` applies kappa when it writes one).

    Ensembles (``teachers: [...]``; the papers leave this open): WKD-L is a logit term
    (``ensemble = "mean"``). The teacher distributions are the members' mean distributions, each
    at its own temperature: the target part reads the mean of the softmaxes at T=1, the non-target
    part the mean of the softmaxes at tau (then renormalised over the non-target classes). The
    category cost is the mean of the members' costs (per-teacher CKA, each cached by its teacher),
    so a pair of classes is far apart as much as the teachers agree it is on average; CKA on
    pooled features of several networks would mix feature spaces that need not be aligned.

    Detection (``task: detection``; the WKD authors have not published where WKD-L acts on a
    detector nor how its cost is built, so this is wdistill's decision): WKD-L acts on the RoI
    head's class logits of the student's sampled proposals, background included (K + 1 classes,
    the target of each RoI its matched label, 0 for background), the teacher's box head run on the
    same proposals: the place where KD and DKD act in mdistiller's detection code, so the three
    compare on the same distributions. The category cost is built as in the paper, linear CKA
    between the teacher's class-conditional features, with the paper's rows: an example's feature
    map, one row per position. For a detector the example is a box and its map is the RoI-Align
    map its box head reads (``cka_mode`` "features", 7 x 7 rows of 256 channels; "logits": one row
    of class logits per box), of every ground-truth box of the training images, and for the
    background class of as many of the teacher's own proposals per image whose IoU with every
    ground-truth box is below 0.5 (the sampler's background), so the cost also says how far
    background is from each object class (``wdistill.models.det_features``). The k-th box of
    one class meets the k-th of another position by position. Why not the box head's 1024-wide
    output, one row per box (this term's first detection cost): two classes' boxes are unrelated,
    so their CKA is ~0 for every pair (0.006-0.022 on FMNIST-Det's R50-FPN teacher) and the cost is
    uniform, which makes the Wasserstein distance a scaled total variation; paired positions
    share the map's spatial statistics, as in classification, and give a cost with structure.
    The teacher's classifier rows (``cost: cosine_classifier``) remain an option; CKA on
    whole-image features, the classification recipe, has no class per image when an image holds
    several objects.
    """

    name = "wkd_l"
    tasks = ("classification", "detection")
    built_by_setup = ("cost",)
    ensemble = "mean"
    ensemble_T = 1.0  # ``logits`` at T=1; the non-target part reads the members at tau (forward)

    def __init__(self, lambda_l: float = 600.0, tau: float = 8.0, kappa: float = 1.0, reg: float = 0.05,
                 num_iters: int = 10, solver: str = "plain", tol: float = 1e-5, max_iters: int = 1000,
                 decay_start: float | None = None, decay_start_frac: float | None = DEFAULT_DECAY_FRAC,
                 cost: str | torch.Tensor = "cka", cka_mode: str = "features", max_per_class: int | None = None,
                 target_weight: float = 1.0, kernel: str = "eager"):
        super().__init__()
        if kernel not in KERNELS:
            raise ConfigError(f"unknown kernel {kernel!r}; use one of {list(KERNELS)}")
        if kernel != "eager" and solver != "plain":
            raise ConfigError(f"kernel {kernel!r} needs solver 'plain': the 'log' solver stops on a host-side "
                              "convergence check, which a compiled graph cannot hold; use kernel 'eager' with it")
        if target_weight < 0:
            raise ConfigError(f"target_weight must be >= 0 (1 is published, 0 leaves the Wasserstein part alone), "
                              f"got {target_weight}")
        if solver not in ("plain", "log"):
            raise ConfigError(f"unknown solver {solver!r}; use 'plain' (published) or 'log' (converged)")
        if tau <= 0 or reg <= 0 or kappa <= 0:
            raise ConfigError(f"tau, reg and kappa must be > 0, got tau={tau}, reg={reg}, kappa={kappa}")
        if cka_mode not in ("features", "logits"):
            raise ConfigError(f"unknown cka_mode {cka_mode!r}; use 'features' or 'logits'")
        check_decay_args(decay_start, decay_start_frac)
        self.lambda_l, self.tau, self.kappa, self.reg, self.num_iters = lambda_l, tau, kappa, reg, num_iters
        self.solver, self.tol, self.max_iters = solver, tol, max_iters
        self.decay_start, self.decay_start_frac = decay_start, decay_start_frac
        self.cost_spec, self.cka_mode, self.max_per_class = cost, cka_mode, max_per_class
        self.target_weight, self.kernel = target_weight, kernel
        self.register_buffer("cost", torch.as_tensor(cost).float() if isinstance(cost, torch.Tensor) else None)

    def setup(self, ctx: SetupContext) -> None:
        if self.cost is None:
            self.cost = self._build_cost(ctx).float().to(ctx.device)
        if self.cost.shape != (ctx.num_classes, ctx.num_classes):
            raise ConfigError(f"WKD-L cost is {tuple(self.cost.shape)} but the data has {ctx.num_classes} classes")

    def _build_cost(self, ctx: SetupContext) -> torch.Tensor:
        spec = self.cost_spec
        members = getattr(ctx, "extra", {}).get("members")
        if members and spec in ("cka", "cosine_classifier"):  # an ensemble: the mean of the members' costs
            return torch.stack([self._build_cost(m).float().to(ctx.device) for m in members]).mean(0)
        if spec == "cka":
            return ot.cka_cost(load_or_build_cka(ctx, self.cka_mode, self.max_per_class), self.kappa)
        if spec == "cosine_classifier":
            if ctx.teacher is None:
                raise ConfigError("cost='cosine_classifier' needs a teacher")
            # The official code sharpens whatever distance it uses by kappa, this one included.
            dist = ot.classifier_cost(classifier_weight(ctx.teacher, ctx.num_classes).float())
            return 1 - torch.exp(-self.kappa * dist)
        if isinstance(spec, str):
            try:
                cost = safe_load(spec, what="WKD-L cost file",
                                 fix="give cost='cka', cost='cosine_classifier' or a file written by "
                                     "`wdistill cost-matrix`")
            except FileLoadError as e:
                raise ConfigError(str(e)) from None
            if not isinstance(cost, torch.Tensor):
                raise ConfigError(f"{spec} holds a {type(cost).__name__}, not a (C, C) cost tensor; save one with "
                                  "torch.save(cost, path)")
            return cost
        raise ConfigError(f"unsupported cost {spec!r}")

    def weight_at(self, batch: dict) -> float:
        start = decay_start_epoch(self.decay_start, self.decay_start_frac, batch.get("num_epochs"))
        return cosine_decayed(self.lambda_l, batch.get("epoch", 0), batch.get("num_epochs"), start)

    def forward(self, student, teacher, batch):
        s = student["logits"]
        members = teacher.get("members")
        with torch.autocast(device_type=s.device.type, enabled=False):
            dtype = torch.float64 if s.dtype == torch.float64 else torch.float32
            t_nt = None
            if members:  # an ensemble: the mean distribution at tau for the non-target part
                t_nt = mean_distribution_logits([m["logits"].detach().to(dtype) for m in members], self.tau)
            parts = wkd_l_parts if self.kernel == "eager" else compiled_parts(KERNELS[self.kernel])
            loss_t, wd = parts(
                s.to(dtype), teacher["logits"].detach().to(dtype), batch["target"], self.cost, self.tau,
                self.reg, self.num_iters, self.solver, t_logits_nt=t_nt,
                **({"tol": self.tol, "max_iters": self.max_iters} if self.solver == "log" else {}))
        self.record_parts(lambda: {"target": self.target_weight * loss_t, "wd": self.weight_at(batch) * wd})
        return self.target_weight * loss_t + self.weight_at(batch) * wd


# Published recipe: the official resnet32x4 -> resnet8x4 setting (wkd_official); candidates: weight
# 30 at tau 4 (an independent small-data point) and 100 at tau 4.
publish("wkd_l", label="WKD-L", order=16, terms=[ce(), {"name": "wkd_l", "weight": 1.0,
        **l_params(OFFICIAL_CIFAR["homogeneous"]["L"]), "decay_start_frac": DEFAULT_DECAY_FRAC}],
        grid=[{}, {"wkd_l.lambda_l": 30.0, "wkd_l.tau": 4.0}, {"wkd_l.lambda_l": 100.0, "wkd_l.tau": 4.0}],
        tune_priority=1, demo=4, quick=True)
# Detection (nothing published; wdistill's setting, docs/methods.md): the ImageNet R34 -> R18 row's lambda_L and tau
# (the large-scale setting), no decay (the detector's schedule drops the learning rate itself).
DETECTION_L = {"lambda_l": 30.0, "tau": 2.0, "kappa": 1.0, "decay_start_frac": None}
publish_detection("wkd_l", label="WKD-L", order=4, terms=[det(), {"name": "wkd_l", "weight": 1.0, **DETECTION_L}])
