"""Timing and peak-memory measurement shared by the speed benchmarks."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_time(fn: Callable[[], object], steps: int, warmup: int) -> tuple[float, list[float]]:
    """Median wall seconds of ``steps`` calls of ``fn`` after ``warmup`` untimed calls (and all times)."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def interleaved_medians(fns: dict[str, Callable[[], object]], steps: int, warmup: int,
                        min_seconds: float = 0.0, block: int = 1) -> dict[str, float]:
    """Median wall seconds of each function, called in turn so that all see the same machine load:
    ``warmup`` untimed rounds, then ``steps`` timed rounds, and more until the timed rounds have taken
    ``min_seconds`` (millisecond kernels: enough calls for a stable median). Per round each function
    runs ``block`` times in a row; with ``block > 1`` the first call of each block is not timed, so
    a small kernel is timed warm rather than right after a large one has flushed the caches."""
    if steps < 1 or warmup < 0 or min_seconds < 0 or block < 1:
        raise ValueError(f"need steps >= 1, warmup >= 0, min_seconds >= 0, block >= 1, got {steps}, {warmup}, "
                         f"{min_seconds}, {block}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    start, rounds = time.perf_counter(), 0
    while rounds < steps or time.perf_counter() - start < min_seconds:
        for key, fn in fns.items():
            for i in range(block):
                t0 = time.perf_counter()
                fn()
                if block == 1 or i > 0:
                    times[key].append(time.perf_counter() - t0)
        rounds += 1
    return {k: statistics.median(v) for k, v in times.items()}


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak bytes allocated by ``fn`` on the CPU above what was live when it started.

    Method: torch.profiler with ``profile_memory=True`` records every allocation and free of
    PyTorch's CPU allocator as a ``[memory]`` event with a signed byte count; the running sum of
    those events in time order is the memory ``fn`` holds at each moment, and its maximum is the
    peak. It counts tensors only (not Python objects or NumPy arrays), which is what the OT
    kernels allocate. The result of ``fn`` is dropped only after the profile ends, so it counts.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak
