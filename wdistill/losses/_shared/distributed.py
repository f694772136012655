"""torch.distributed helpers shared by the terms (memory banks, batch-wide OT) and the engine.

Each is the identity on one process, so callers need no ``if distributed`` branches of their own.
"""
from __future__ import annotations

import weakref

import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in the default group (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def distributed() -> bool:
    return world_size() > 1


_HOST: list = []  # [(the default group, its gloo twin)]


def host_group():
    """A gloo group of every rank, for values the host holds: None (the default group) when that is gloo already.

    A collective of an NCCL group runs on the GPU, so reading its result makes the host wait for every kernel
    queued before it; the same exchange of CPU tensors on gloo leaves the GPU's queue alone. Made on first use
    (every rank must reach that point, as every rank runs the same loss), once per default group."""
    if dist.get_backend() == "gloo":
        return None
    world = dist.group.WORLD
    if not (_HOST and _HOST[0][0] is world):
        _HOST[:] = [(world, dist.new_group(backend="gloo"))]
    return _HOST[0][1]


_HELD: set = set()  # gloo groups lent as weak references (the trainers' stop-signal votes)


def held_gloo_group() -> weakref.ref:
    """A new gloo group of every rank (every rank must call this at the same point), held here and lent as a weak
    reference, so that :func:`forget_groups` can drop it while its user lives on."""
    group = dist.new_group(backend="gloo")
    _HELD.add(group)
    return weakref.ref(group)


def release_gloo_group(ref: weakref.ref) -> None:
    """Destroy a group of :func:`held_gloo_group` now (each rank on its own, no collective): its threads and sockets
    go with it, which a process that makes many (a sweep of trainers) would otherwise keep to the end."""
    group = ref()
    if group in _HELD:
        _HELD.discard(group)
        dist.destroy_process_group(group)


def forget_groups() -> None:
    """Drop the gloo groups kept here (:func:`host_group`'s twin, :func:`held_gloo_group`'s), before the process
    groups are destroyed. A group still referenced after ``destroy_process_group`` is torn down later, at
    interpreter shutdown, where gloo can abort the process ("terminate called without an active exception") after
    its work is done."""
    _HOST.clear()
    _HELD.clear()


def row_counts(t: torch.Tensor) -> list[int]:
    """Every rank's row count of ``t``, from the host's shapes: no device value is read."""
    if not distributed():
        return [t.shape[0]]
    n = torch.tensor([t.shape[0]])  # on the CPU, whatever device t is on
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n, group=host_group())
    return [int(s) for s in sizes]


def gather_rows(*tensors: torch.Tensor, sizes: list[int] | None = None) -> list[torch.Tensor]:
    """Every rank's rows of each tensor, concatenated in rank order (ranks may hold different row
    counts, ``sizes`` if the caller has them from :func:`row_counts`; no gradient)."""
    if not distributed():
        return list(tensors)
    sizes = sizes or row_counts(tensors[0])
    out = []
    for t in tensors:
        padded = t.new_zeros((max(sizes),) + tuple(t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(world_size())]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:s] for p, s in zip(parts, sizes)]))
    return out


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over ranks (no gradient); every rank must give the same shape (drop_last)."""
    if not distributed():
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def all_gather_keep_local_grad(x: torch.Tensor) -> torch.Tensor:
    """Like :func:`all_gather`, with this rank's slice still attached to the graph."""
    if not distributed():
        return x
    parts = list(all_gather(x.detach()).chunk(world_size()))
    parts[rank()] = x
    return torch.cat(parts)


def all_mean_(t: torch.Tensor) -> torch.Tensor:
    """``t`` replaced, in place, by its mean over ranks."""
    if distributed():
        dist.all_reduce(t)
        t /= world_size()
    return t


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """``t`` replaced, in place, by rank ``src``'s."""
    if distributed():
        dist.broadcast(t, src)
    return t
