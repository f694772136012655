"""The GPU benchmark's WKD-L kernel (issue 26): the loss's forward + backward at B=64/C=100 and B=256/C=1000,
microseconds and peak memory, eager, under ``torch.compile``, replayed as a CUDA graph, and the official
kernel (``wkd_logit_loss_with_speration`` from the WKD checkout given with ``--official``) on the same inputs."""
from __future__ import annotations

import statistics

import torch

from benchtools.gpu import GpuSetup, _timer
from benchtools.gpu_items import cell
from wdistill import ot
from wdistill.losses.wkd.wkd_l import KERNELS, compiled_parts, wkd_l_parts

TAU = 8.0


CAPTURED = "CUDA graph, captured"  # the whole forward + backward captured by hand: what replay alone costs


def variants(device: torch.device, compiled: bool, official: str | None) -> list[str]:
    """The forms timed: eager always; with --compile the WKD-L term's ``kernel`` forms ("compiled", and on a GPU
    "cuda_graph"); on a GPU the loss captured by hand as one CUDA graph; the official kernel with --official."""
    cuda = device.type == "cuda"
    return ["eager"] + ["compiled", *["cuda_graph"] * cuda] * compiled + [CAPTURED] * cuda + \
        ["official"] * (official is not None)


def _official_fn(path: str):
    from benchtools.official import load_official
    load_official(path)  # puts the checkout's mdistiller on the path
    from mdistiller.distillers.WKD import wkd_logit_loss_with_speration
    return wkd_logit_loss_with_speration


def wkd_l_kernel(batch: int, classes: int, setup: GpuSetup, variant: str = "eager", official: str | None = None
                 ) -> dict:
    """WKD-L's loss (target part + Wasserstein part, 10 plain Sinkhorn iterations) forward + backward at (B, C) in
    ``variant``: median seconds over ``setup.steps`` after ``setup.warmup``, and peak memory on a GPU."""
    device = torch.device(setup.device)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(batch, classes, generator=g).to(device).requires_grad_(True)
    t = torch.randn(batch, classes, generator=g).to(device)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    m = torch.rand(classes, classes, generator=g)
    cost = ot.cka_cost(((m + m.T) / 2).fill_diagonal_(1.0)).to(device)

    def ours(parts):
        def loss(s, t):
            lt, wd = parts(s, t, y, cost, TAU)
            return lt + wd
        return loss
    if variant == "official":
        theirs = _official_fn(official)
        fn = lambda s, t: theirs(s, t, y, TAU, 1.0, cost.clone(), 0.05, 10)  # noqa: E731 - gamma 1: the same sum
    elif variant in KERNELS:  # the term's own forms: eager, compiled, cuda_graph
        fn = ours(wkd_l_parts if variant == "eager" else compiled_parts(KERNELS[variant]))
    elif variant == CAPTURED:  # forward and backward captured once, replayed (inputs copied into its buffers)
        fn = torch.cuda.make_graphed_callables(ours(wkd_l_parts), (s.detach().clone().requires_grad_(True), t.clone()))
    else:
        raise ValueError(f"unknown WKD-L kernel form {variant!r}")

    def run():
        s.grad = None
        fn(s, t).backward()

    timer = _timer(device)
    for _ in range(setup.warmup):
        run()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [timer(run) for _ in range(setup.steps)]
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return {"B": batch, "C": classes, "variant": variant, "us": 1e6 * statistics.median(times), "peak_mib": peak}


def kernel_lines(rows: list[dict]) -> list[str]:
    lines = ["", "## WKD-L loss forward + backward", "",
             f"Target part + Wasserstein part (CKA-style cost, tau {TAU:g}, 10 plain Sinkhorn iterations at reg 0.05), "
             "float32, median after warm-up; the official kernel on the same inputs. eager, compiled and cuda_graph "
             "are the WKD-L term's `kernel` option (cuda_graph: torch.compile's \"reduce-overhead\" mode); "
             f"`{CAPTURED}` replays the forward and backward captured by hand, copying the inputs into its buffers.",
             "", "| B | C | form | microseconds | peak MiB |", "|---:|---:|---|---:|---:|"]
    for k in rows:
        if "error" in k:
            lines.append(f"| {k['B']} | {k['C']} | {k['variant']} | failed: {cell(k['error'])} | |")
            continue
        peak = "n/a" if k["peak_mib"] is None else f"{k['peak_mib']:.1f}"
        lines.append(f"| {k['B']} | {k['C']} | {k['variant']} | {k['us']:.0f} | {peak} |")
    for shape in dict.fromkeys((k["B"], k["C"]) for k in rows):
        forms = {k["variant"]: k["us"] for k in rows
                 if (k["B"], k["C"]) == shape and "error" not in k and k["variant"] in KERNELS}
        if len(forms) > 1:
            timed = ", ".join(f"{v} {us:.0f} us" for v, us in forms.items())
            lines += ["", f"Fastest of the term's `kernel` forms at B={shape[0]}, C={shape[1]}: "
                          f"{min(forms, key=forms.get)} ({timed})."]
    return lines
