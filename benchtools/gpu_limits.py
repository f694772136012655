"""What limits a training step that misses its target against its bound (issue 26: "name what limits any above").

A step above its bound is either host-bound (the device waits between kernels: too many small launches, Python
between them) or device-bound (the loss adds kernel time: the arithmetic or memory traffic of its terms). A few steps
of each under ``torch.profiler`` say which: the device operations per step and their busy time, the step's against
the bound's, beside the step's wall time from the unprofiled timing, and which kernels add the most time. On the CPU
(the quick mode) the same is read off the top-level operators: their count and their summed time.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchtools.gpu_items import cell, step_label

REPEATS = 3
IDLE = 0.2  # a step whose device is idle for more than this share of its wall time is host-bound


def _profile(fn, device: torch.device) -> tuple[float, float, Counter]:
    """Per step of ``fn``: (device operations, their busy milliseconds, busy milliseconds by operation name)."""
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
        for _ in range(REPEATS):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
    if cuda:
        ops = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        if not ops:
            raise RuntimeError("the profiler saw no device operations (no CUPTI activity on this machine)")
    else:
        ops = [e for e in prof.events() if e.cpu_parent is None]
    by_name = Counter()
    for e in ops:
        by_name[e.name] += e.time_range.elapsed_us() / 1e3 / REPEATS
    return len(ops) / REPEATS, sum(by_name.values()), by_name


def _short(name: str) -> str:
    """An operation's name, short enough for a table cell (a kernel's template arguments can run to pages)."""
    return name.removeprefix("autograd::engine::evaluate_function: ")[:60]


def limits(step, bound, step_s: float, device: torch.device) -> dict:
    """The profile of ``step`` against ``bound`` (each a function running one training step), ``step_s`` its
    unprofiled wall seconds, and the verdict."""
    _profile(bound, device)  # discarded: the profiler's own start-up slows the first operations it records
    ops, busy, names = _profile(step, device)
    ops_bound, busy_bound, names_bound = _profile(bound, device)
    names.subtract(names_bound)
    added = [(n, ms) for n, ms in names.most_common(3) if ms > 0]
    idle = max(0.0, 1 - busy / (1e3 * step_s))
    if idle > IDLE:
        verdict = (f"host-bound: the device is idle {idle:.0%} of the step, which launches {ops - ops_bound:+.0f} "
                   "operations over its bound")
    else:
        verdict = f"device-bound: {busy - busy_bound:+.2f} ms of device time over its bound"
    if added:
        verdict += "; most added time in " + ", ".join(f"{_short(n)} ({ms:.2f} ms)" for n, ms in added)
    return {"ops": ops, "ops_bound": ops_bound, "busy_ms": busy, "busy_bound_ms": busy_bound, "idle": idle,
            "added": added, "verdict": verdict}


def limit_lines(steps: list[dict]) -> list[str]:
    """The report's account of each step row that missed its target."""
    missed = [r for r in steps if "limits" in r]
    if not missed:
        return []
    lines = ["", "### What limits the steps above their target", "",
             f"{REPEATS} steps of each under torch.profiler, against {REPEATS} of its bound: device operations per "
             f"step (on the CPU: top-level operators) and their busy time; a step whose device is idle over "
             f"{IDLE:.0%} of its unprofiled wall time is host-bound (launches, Python), otherwise device-bound.", "",
             "| method | batch | operations (bound) | busy ms (bound) | step ms | limit |",
             "|---|---:|---:|---:|---:|---|"]
    for r in missed:
        x = r["limits"]
        if "error" in x:
            lines.append(f"| {step_label(r)} | {r['batch']} | | | | not profiled: {cell(x['error'])} |")
            continue
        lines.append(f"| {step_label(r)} | {r['batch']} | {x['ops']:.0f} ({x['ops_bound']:.0f}) | {x['busy_ms']:.2f} "
                     f"({x['busy_bound_ms']:.2f}) | {1e3 * r['step_s']:.2f} | {cell(x['verdict'])} |")
    return lines
