"""The GPU benchmark's OT solver parity (issue 26): each solver at the shapes its method uses, value and input
gradient on CPU float32 against the device in float32 (TF32 off), and under bfloat16 autocast given bfloat16
inputs, as a network in autocast hands them over (the solvers compute in float32 inside it)."""
from __future__ import annotations

from typing import Callable

import torch

from benchtools.gpu import TOLERANCE, GpuSetup, _rel, no_tf32
from benchtools.gpu_items import cell
from wdistill import ot
from wdistill.losses.wcord.critic import batch_ot_loss
from wdistill.losses.wkd.wkd_f import wkd_f_parts
from wdistill.losses.wkd.wkd_l import wkd_l_parts

# (name, what it is, shape arguments): WKD-L on CIFAR-100 and ImageNet logits (CKA cost, tau 4, 10 plain
# iterations at reg 0.05); WCoRD's LCKT on 128-d embeddings (IPOT, beta 0.5, 50 iterations; and the log-domain
# Sinkhorn option); WKD-F on resnet32x4's last map (diagonal Gaussians, and the full-covariance option).
CASES = (("sinkhorn", "WKD-L, B=64, C=100", (64, 100)), ("sinkhorn", "WKD-L, B=256, C=1000", (256, 1000)),
         ("ipot", "WCoRD LCKT, B=64, d=128", (64, 128)), ("ipot", "WCoRD LCKT, B=256, d=128", (256, 128)),
         ("sinkhorn_log", "WCoRD LCKT solver=sinkhorn, B=64, d=128", (64, 128)),
         ("gaussian_diag", "WKD-F, B=64, 256 x 8 x 8", (64, 256, 8)),
         ("gaussian_full", "WKD-F cov=full, B=64, 256 x 8 x 8", (64, 256, 8)))
QUICK = (("sinkhorn", "WKD-L, B=8, C=10", (8, 10)), ("ipot", "WCoRD LCKT, B=8, d=16", (8, 16)),
         ("sinkhorn_log", "WCoRD LCKT solver=sinkhorn, B=8, d=16", (8, 16)),
         ("gaussian_diag", "WKD-F, B=8, 16 x 4 x 4", (8, 16, 4)),
         ("gaussian_full", "WKD-F cov=full, B=8, 16 x 4 x 4", (8, 16, 4)))


def _problem(kind: str, shape: tuple) -> tuple[list[torch.Tensor], Callable[..., torch.Tensor]]:
    """The inputs (CPU float32, from a fixed seed; the first is the one differentiated) and the loss of them."""
    g = torch.Generator().manual_seed(0)
    if kind == "sinkhorn":
        b, c = shape
        cost = ot.cka_cost(ot.class_cka_matrix(torch.randn(c, 4, 16, generator=g)), 1.0)
        target = torch.randint(0, c, (b,), generator=g)
        return ([3 * torch.randn(b, c, generator=g), 3 * torch.randn(b, c, generator=g)],
                lambda s, t: wkd_l_parts(s, t, target.to(s.device), cost.to(s.device), tau=4.0)[1])
    if kind in ("ipot", "sinkhorn_log"):
        b, d = shape
        solver = "ipot" if kind == "ipot" else "sinkhorn"
        return ([torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)],
                lambda h_s, h_t: batch_ot_loss(h_s, h_t, solver, 0.5, 50, 0.05))
    b, c, hw = shape
    cov = "diag" if kind == "gaussian_diag" else "full"
    return ([torch.randn(b, c, hw, hw, generator=g), torch.randn(b, c, hw, hw, generator=g) + 0.5],
            lambda f_s, f_t: sum(wkd_f_parts(f_s, f_t, cov=cov)))


def _value_and_grad(fn, inputs: list[torch.Tensor], device: torch.device, dtype: torch.dtype | None = None):
    x = [t.to(device, dtype or t.dtype, copy=True) for t in inputs]  # fresh leaves, the inputs untouched
    x[0].requires_grad_(True)
    ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else no_tf32()
    with ctx:
        value = fn(*x)
    value.backward()
    return value.detach().double().cpu(), x[0].grad.detach().double().cpu()


def solver_parity(kind: str, label: str, shape: tuple, setup: GpuSetup) -> dict:
    """One case: relative differences of the value and of the gradient against CPU float32."""
    device = torch.device(setup.device)
    inputs, fn = _problem(kind, shape)
    with no_tf32():
        ref = _value_and_grad(fn, inputs, torch.device("cpu"))
    dev = _value_and_grad(fn, inputs, device)
    row = {"solver": label, "float32_value": _rel(dev[0], ref[0]), "float32_grad": _rel(dev[1], ref[1])}
    if device.type == "cpu" or torch.cuda.is_bf16_supported():
        low = _value_and_grad(fn, inputs, device, torch.bfloat16)
        row.update(bfloat16_value=_rel(low[0], ref[0]), bfloat16_grad=_rel(low[1], ref[1]))
    row["ok"] = max(row["float32_value"], row["float32_grad"]) <= TOLERANCE["float32"] and \
        max(row.get("bfloat16_value", 0.0), row.get("bfloat16_grad", 0.0)) <= TOLERANCE["bfloat16"]
    return row


def cases(quick: bool):
    return QUICK if quick else CASES


def solver_lines(rows: list[dict]) -> list[str]:
    lines = ["", "## OT solvers: parity at the methods' shapes", "",
             "Value and gradient of the first input (the student's side) against CPU float32: the device in float32 "
             "(TF32 off, 1e-4), and under bfloat16 autocast given bfloat16 inputs (3e-2; the solvers compute in "
             "float32 inside it).", "",
             "| solver | float32 value | float32 grad | bfloat16 value | bfloat16 grad | ok |",
             "|---|---:|---:|---:|---:|:-:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['solver']} | failed: {cell(r['error'])} | | | | NO |")
            continue
        low = [f"{r[k]:.1e}" if k in r else "n/a" for k in ("bfloat16_value", "bfloat16_grad")]
        lines.append(f"| {r['solver']} | {r['float32_value']:.1e} | {r['float32_grad']:.1e} | {low[0]} | {low[1]} | "
                     f"{'yes' if r['ok'] else 'NO'} |")
    return lines
