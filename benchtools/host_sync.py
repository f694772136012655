"""Host syncs seen on the CPU (issue 26): the operations that would make a CUDA training step wait
for the GPU, recorded while a step runs on any device.

On a GPU, ``torch.cuda.set_sync_debug_mode("error")`` is the check (``benchtools/gpu.py`` runs it).
It needs CUDA, so CI could never run it. This module records the same kinds of operation from the
operators a step dispatches (a ``TorchDispatchMode``, which sees forward and backward) and from the
tensor methods that copy to the host, so a sync added to any method's step fails a CPU test:

- a value read on the host: ``.item()``, ``float(t)``, ``bool(t)``, ``if t:`` (``_local_scalar_dense``),
  ``.tolist()``, ``.numpy()``, ``.cpu()``;
- output sizes that depend on values: ``nonzero``, boolean-mask indexing, ``masked_select``,
  ``unique``, ``bincount``, ``repeat_interleave`` without ``output_size``, ``torch.equal``;
- linear algebra that checks its solver's status on the host (``svd``, ``eigh``, ``eig``, ``inv``,
  ``cholesky``, ``solve``, ``lstsq``; their ``_ex`` forms don't check and are not listed);
- a tensor made from host data in the step (``torch.tensor(...)``, ``torch.as_tensor(list)``): on a GPU
  a blocking host-to-device copy, which the debug mode reports.

What it cannot see in a step: a host-to-device copy of an existing tensor (``.to("cuda")``), since
on the CPU a host tensor and a device tensor look alike, and CUDA's own synchronising calls. The GPU
run's debug mode sees those. Where every tensor is host data (a loader's batch on its way to the
device), :func:`blocking_copies` records each copy to a device that is not ``non_blocking=True``.
"""
from __future__ import annotations

import traceback
from contextlib import contextmanager
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_READ = "a value read on the host"
_SIZE = "an output size that depends on values"
_LINALG = "a solver status checked on the host"
SYNCING = {
    aten._local_scalar_dense: _READ,
    aten.nonzero: _SIZE, aten.masked_select: _SIZE, aten._unique2: _SIZE, aten.unique_dim: _SIZE,
    aten.unique_consecutive: _SIZE, aten.bincount: _SIZE, aten.equal: _READ,
    aten._linalg_check_errors: _LINALG, aten._linalg_svd: _LINALG, aten._linalg_eigh: _LINALG,
    aten.linalg_eig: _LINALG, aten.linalg_lstsq: _LINALG,
    aten.lift_fresh: "a tensor made from host data (torch.tensor): a blocking copy on a GPU",
}
_HOST_METHODS = ("tolist", "numpy", "cpu")  # .item() is seen as _local_scalar_dense


def _caller() -> str:
    """``file:line`` of the innermost frame outside torch and this module (the backward's call site for an
    operation of the backward pass)."""
    for frame in reversed(traceback.extract_stack()):
        if "/torch/" not in frame.filename and frame.filename != __file__:
            return f"{frame.filename}:{frame.lineno}"
    return "?"


def _bool_index(indices) -> bool:
    return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)


class HostSyncs(TorchDispatchMode):
    """Records ``(operator, why)`` for each operation of a host-syncing kind dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = SYNCING.get(func.overloadpacket)
        if func.overloadpacket in (aten.index, aten.index_put, aten.index_put_) and _bool_index(args[1]):
            why = "boolean-mask indexing: " + _SIZE
        elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            why = "repeat_interleave without output_size: " + _SIZE
        if why:
            self.found.append((str(func), f"{why} ({_caller()})"))
        return func(*args, **kwargs)


@contextmanager
def recording():
    """Yields a list that fills with ``"operator: why"`` for each host sync inside the block."""
    found: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in _HOST_METHODS}

    def watched(name):
        def method(self, *args, **kwargs):
            found.append(f"Tensor.{name}(): {_READ} ({_caller()})")
            return originals[name](self, *args, **kwargs)
        return method

    for name in _HOST_METHODS:
        setattr(torch.Tensor, name, watched(name))
    mode = HostSyncs()
    try:
        with mode:
            yield found
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
        found.extend(f"{op}: {why}" for op, why in mode.found)


def host_syncs(fn: Callable[[], object], repeats: int = 1) -> list[str]:
    """The host syncs of ``repeats`` calls of ``fn``, each named once, in first-seen order."""
    with recording() as found:
        for _ in range(repeats):
            fn()
    return list(dict.fromkeys(found))


def _names_a_device(args, kwargs) -> bool:
    return "device" in kwargs or any(isinstance(a, (torch.device, str)) or torch.is_tensor(a) for a in args)


@contextmanager
def blocking_copies():
    """Yields a list that fills with ``"file:line"`` (:func:`_caller`) of each ``Tensor.to(device ...)`` call
    inside the block without ``non_blocking=True``: from host memory, each is a copy that makes the host wait on
    a GPU."""
    found: list[str] = []
    original = torch.Tensor.to

    def to(self, *args, **kwargs):
        if _names_a_device(args, kwargs) and not kwargs.get("non_blocking", False):
            found.append(_caller())
        return original(self, *args, **kwargs)
    torch.Tensor.to = to
    try:
        yield found
    finally:
        torch.Tensor.to = original
