"""Run OT arithmetic in float32/float64 whatever the surrounding autocast dtype.

Sinkhorn kernels exp(-C/reg), log-sum-exps and eigen-decompositions lose everything in bfloat16
or float16, so every public solver is wrapped by :func:`full_precision`.
"""
from __future__ import annotations

import functools

import torch


def common_dtype(*tensors) -> torch.dtype:
    """float64 if any floating tensor is float64, else float32."""
    floats = [t for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return torch.float64 if any(t.dtype == torch.float64 for t in floats) else torch.float32


def full_precision(fn):
    """Decorator: disable autocast and cast floating tensor arguments to float32 (float64 kept)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if not tensors:
            return fn(*args, **kwargs)
        dtype = common_dtype(*tensors)

        def cast(a):
            return a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a

        with torch.autocast(device_type=tensors[0].device.type, enabled=False):
            return fn(*[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})

    return wrapper
