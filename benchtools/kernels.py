"""Kernel benchmarks of `python -m benchtools speed`: OT losses beside a straightforward formulation
(and POT), CRD bank scoring, augmentation throughput. Every pair is also checked to give the same
value. Project tooling: lives beside the package, not in it (`python -m benchtools speed` uses it when run
from a checkout)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from benchtools.measure import interleaved_medians, median_time, peak_memory
from wdistill import ot
from wdistill.data.augment import Augment
from wdistill.losses._shared.memory import bank_scores
from wdistill.losses.crd import nce_loss
from wdistill.losses.wcord.wcord import WCoRD
from wdistill.losses.wkd.wkd_f import wkd_f_parts
from wdistill.losses.wkd.wkd_l import _labels, wkd_l_parts


def wkd_l_reference(s_logits: torch.Tensor, t_logits: torch.Tensor, target: torch.Tensor, cost: torch.Tensor,
                    tau: float, reg: float = 0.05, num_iters: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Straightforward WKD-L: drop the target column, gather a (C-1)x(C-1) cost per sample and run
    the plain Sinkhorn recursion on each. O(B C^2) memory; for tests and speed comparisons only."""
    y = _labels(target)
    B, C = s_logits.shape
    keep = torch.ones(B, C, dtype=torch.bool, device=s_logits.device).scatter(1, y.unsqueeze(1), False)
    log_ps = F.log_softmax(s_logits, dim=1)
    pt = F.softmax(t_logits.detach(), dim=1)
    loss_t = -(pt[torch.arange(B), y] * log_ps[torch.arange(B), y]).mean()
    ps = F.softmax(s_logits[keep].reshape(B, C - 1) / tau, dim=1)
    pt_nt = F.softmax(t_logits.detach()[keep].reshape(B, C - 1) / tau, dim=1)
    costs = cost.to(ps.dtype).expand(B, C, C)[keep.unsqueeze(2) & keep.unsqueeze(1)].reshape(B, C - 1, C - 1)
    K = torch.exp(-costs / reg)
    u = torch.full_like(ps, 1.0 / (C - 1))
    for _ in range(num_iters):
        v = pt_nt / ((K.transpose(1, 2) @ u.unsqueeze(2)).squeeze(2) + 1e-8)
        u = ps / ((K @ v.unsqueeze(2)).squeeze(2) + 1e-8)
    plan = u.unsqueeze(2) * K * v.unsqueeze(1)
    return loss_t, (plan * costs).sum((1, 2)).mean()


def _fwd_bwd(loss_fn, leaf: torch.Tensor):
    def run():
        leaf.grad = None
        loss = loss_fn()
        loss.backward()
        return loss.detach()
    return run


def _pair(name, shape, ours, baseline, steps, warmup, min_seconds=1.0, block=4):
    """Two implementations of one kernel, ``(impl, fn[, value])`` each, timed interleaved in blocks
    (same machine load for both, warm caches for each, at least ``min_seconds`` of rounds), then peak
    memory and value of each. Kernels that take a second or more: ``block=1``."""
    ms = interleaved_medians({"ours": ours[1], "baseline": baseline[1]}, steps, warmup, min_seconds, block)
    rows = []
    for key, (impl, fn, *value) in (("ours", ours), ("baseline", baseline)):
        out = {}
        peak = peak_memory(lambda: out.setdefault("value", fn()))
        rows.append({"kernel": name, "shape": shape, "impl": impl, "ms": 1e3 * ms[key], "peak_mb": peak / 2 ** 20,
                     "value": float(value[0] if value else out["value"])})
    return rows


def _entry(name, shape, impl, fn, steps, warmup, value=None):
    sec, _ = median_time(fn, steps, warmup)
    out = {}
    peak = peak_memory(lambda: out.setdefault("value", fn()))  # the profiled call also gives the value
    return {"kernel": name, "shape": shape, "impl": impl, "ms": 1e3 * sec, "peak_mb": peak / 2 ** 20,
            "value": float(out["value"] if value is None else value)}


def wkd_l_rows(B: int, C: int, steps: int = 10, warmup: int = 2, seed: int = 0) -> list[dict]:
    """WKD-L loss forward+backward: full CxC cost with the target's mass zeroed (ours) vs per-sample
    (C-1)x(C-1) costs (``wkd_l_reference``), tau=8, reg=0.05, 10 iterations."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, C, generator=g).requires_grad_(True)
    t = torch.randn(B, C, generator=g)
    y = torch.randint(0, C, (B,), generator=g)
    cost = ot.cka_cost(_sym_cka(C, g))

    def ours():
        lt, wd = wkd_l_parts(s, t, y, cost, 8.0)
        return lt + wd

    def reference():
        lt, wd = wkd_l_reference(s, t, y, cost, 8.0)
        return lt + wd

    shape = f"B={B}, C={C}"
    return _pair("WKD-L loss fwd+bwd", shape, ("full CxC cost, target mass 0 (ours)", _fwd_bwd(ours, s)),
                 ("per-sample (C-1)x(C-1) costs", _fwd_bwd(reference, s)), steps, warmup,
                 block=1 if B * C * C >= 10 ** 8 else 4)


def _sym_cka(C: int, g: torch.Generator) -> torch.Tensor:
    """A symmetric CKA-like matrix: 1 on the diagonal, (0, 1) elsewhere."""
    m = torch.rand(C, C, generator=g)
    m = (m + m.T) / 2
    return m.fill_diagonal_(1.0)


def lckt_rows(B: int = 64, d: int = 128, steps: int = 10, warmup: int = 2, seed: int = 0) -> list[dict]:
    """WCoRD's LCKT: cosine cost + IPOT plan (beta 0.5, 50 iterations) + <T, C>, forward+backward,
    beside POT's exact network-simplex solver ``ot.emd`` on the same cost (forward only, NumPy)."""
    import ot as pot

    g = torch.Generator().manual_seed(seed)
    hs = torch.nn.functional.normalize(torch.randn(B, d, generator=g), dim=1).requires_grad_(True)
    ht = torch.nn.functional.normalize(torch.randn(B, d, generator=g), dim=1)
    term = WCoRD()
    w = np.full(B, 1.0 / B)
    cost_np = ot.cosine_cost(hs.detach(), ht).double().numpy()
    emd_value = float(pot.emd2(w, w, cost_np))
    shape = f"B={B}, d={d}"
    return _pair(
        "LCKT (batch OT)",
        shape,
        ("IPOT 50 it., torch fwd+bwd (ours)", _fwd_bwd(lambda: term.lckt(hs, ht), hs)),
        ("POT ot.emd2 exact, fwd only", lambda: pot.emd2(w, w, cost_np), emd_value),
        steps,
        warmup,
    )


def wkd_f_rows(B: int = 64, C: int = 256, H: int = 8, steps: int = 10, warmup: int = 2, seed: int = 0) -> list[dict]:
    """WKD-F Gaussian W2 forward+backward: diagonal (published) and full covariance (option), beside
    POT's Bures-Wasserstein distance per sample (full covariance, straightforward loop)."""
    import ot as pot

    g = torch.Generator().manual_seed(seed)
    fs = torch.randn(B, C, H, H, generator=g).requires_grad_(True)
    ft = torch.randn(B, C, H, H, generator=g)

    def diag():
        m, c = wkd_f_parts(fs, ft, cov="diag")
        return m + c

    def full():
        m, c = wkd_f_parts(fs, ft, cov="full")
        return m + c

    def pot_loop():
        total = 0.0
        for b in range(B):
            xs, xt = fs[b].detach().flatten(1).T.double(), ft[b].flatten(1).T.double()
            ms, mt = xs.mean(0), xt.mean(0)
            cs = torch.cov(xs.T) + 1e-5 * torch.eye(C, dtype=torch.float64)
            ct = torch.cov(xt.T) + 1e-5 * torch.eye(C, dtype=torch.float64)
            total += float(pot.gaussian.bures_wasserstein_distance(mt, ms, ct, cs) ** 2)
        return torch.tensor(total / B)

    shape = f"B={B}, C={C}, {H}x{H}"
    return [
        _entry("WKD-F W2 diagonal (published)", shape, "ours, fwd+bwd", _fwd_bwd(diag, fs), steps, warmup),
        _entry(
            "WKD-F W2 full covariance (option)",
            shape,
            "ours, batched, fwd+bwd",
            _fwd_bwd(full, fs),
            max(1, steps // 2),
            1,
        ),
        _entry(
            "WKD-F W2 full covariance (option)",
            shape,
            "POT bures_wasserstein_distance per sample, fwd only",
            pot_loop,
            max(1, steps // 5),
            0,
        ),
    ]


def crd_rows(
    B: int = 64, K: int = 16384, N: int = 50_000, d: int = 128, steps: int = 10, warmup: int = 2, seed: int = 0
) -> list[dict]:
    """CRD NCE loss (both anchors) forward+backward with matmul scoring vs gather scoring."""
    g = torch.Generator().manual_seed(seed)
    bank_s = torch.nn.functional.normalize(torch.randn(N, d, generator=g), dim=1)
    bank_t = torch.nn.functional.normalize(torch.randn(N, d, generator=g), dim=1)
    es = torch.nn.functional.normalize(torch.randn(B, d, generator=g), dim=1).requires_grad_(True)
    et = torch.nn.functional.normalize(torch.randn(B, d, generator=g), dim=1).requires_grad_(True)
    idx = torch.randint(0, N, (B, K + 1), generator=g)
    Z = float(torch.exp(bank_scores(bank_t, es.detach(), idx, "matmul") / 0.07).mean() * N)

    def loss(scoring):
        out_s = torch.exp(bank_scores(bank_t, es, idx, scoring) / 0.07) / Z
        out_t = torch.exp(bank_scores(bank_s, et, idx, scoring) / 0.07) / Z
        return nce_loss(out_s, N) + nce_loss(out_t, N)

    def run(scoring):
        def f():
            es.grad = et.grad = None
            value = loss(scoring)
            value.backward()
            return value.detach()

        return f

    shape = f"B={B}, K={K}, N={N}"
    return _pair(
        "CRD NCE loss fwd+bwd",
        shape,
        ("matmul scoring (B x N, then pick)", run("matmul")),
        ("gather scoring (B x K x d rows)", run("gather")),
        steps,
        warmup,
        block=1,
    )


def augment_throughput(batch: int = 64, size: int = 32, steps: int = 50, warmup: int = 5, seed: int = 0) -> dict:
    """Images/s of crop(pad 4) + flip + normalise on uint8 (batch, 3, size, size) batches."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    aug = Augment((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 4, True)
    sec, _ = median_time(lambda: aug(x, g), steps, warmup)
    return {"batch_s": sec, "images_per_s": batch / sec}


def imagenet_augment_share(
    batch: int = 64,
    stored: int = 256,
    crop: int = 224,
    model: str = "resnet18",
    steps: int = 3,
    warmup: int = 1,
    seed: int = 0,
) -> dict:
    """RandomResizedCrop(``crop``) + flip + normalise of uint8 (batch, 3, stored, stored) batches,
    beside one CE training step of ``model`` on such a batch (same run): time and share of it."""
    from wdistill.models import create

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, 3, stored, stored), dtype=torch.uint8, generator=g)
    aug = Augment((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0, True, resized_crop=crop)
    aug_s, _ = median_time(lambda: aug(x, g), max(steps, 5), warmup)
    net = create(model, num_classes=1000).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    images = aug(x, g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(images), y)
        loss.backward()
        opt.step()

    step_s, _ = median_time(step, steps, warmup)
    return {
        "batch_s": aug_s,
        "images_per_s": batch / aug_s,
        "step_s": step_s,
        "share": aug_s / step_s,
        "shape": f"{batch}x3x{stored}x{stored} uint8 -> {crop}",
        "model": model,
    }
