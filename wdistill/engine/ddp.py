"""Scale-out: torchrun + torch.nn.parallel.DistributedDataParallel.

``data.batch_size`` is the global batch of one optimiser step, the same number on one process or
many: each of the N ranks takes batch_size / N rows of it (and splits those into
``train.accumulate`` micro-batches). DDP averages the gradients while the backward pass runs, so
one step on N ranks equals one step on one process with the whole batch (up to float rounding and
BatchNorm, whose statistics are per rank unless ``train.sync_bn``).
"""
from __future__ import annotations

import atexit
import gc
import inspect
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from wdistill.errors import ConfigError
from wdistill.losses._shared import distributed as helpers


def init_distributed() -> tuple[int, int]:
    """(rank, world size). Under torchrun, even with one process, or wherever WORLD_SIZE > 1, joins
    the process group: NCCL on GPUs, gloo on CPUs. A one-process torchrun thus trains through DDP
    and NCCL as a job of many does (on one GPU, the only way to exercise that path).

    torchrun keeps one key-value store for all the attempts of a job, so after an elastic restart
    (``--max-restarts``) the new workers would find the dead attempt's addresses under the same keys
    and fail to connect. Each attempt therefore keys its process groups under its own prefix.

    A group joined here is left at the interpreter's exit (:func:`leave`, registered with atexit), so a Python
    script under torchrun needs no call of its own; a group its caller made is the caller's to destroy."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    if launched and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if "TORCHELASTIC_RESTART_COUNT" in os.environ:
            store, rank, world = next(dist.rendezvous("env://"))
            store = dist.PrefixStore(f"wdistill/attempt_{restart_count()}", store)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world)
        else:
            dist.init_process_group(backend)
        atexit.unregister(leave)  # once, however often this process joins
        atexit.register(leave)
    return helpers.rank(), helpers.world_size()


def backend() -> str | None:
    """The process group's backend ("nccl", "gloo"), or None when this process trains alone."""
    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def leave() -> None:
    """Leave the process group, if this process is in one: at the interpreter's exit when wdistill joined it
    (:func:`init_distributed`), and on every way out of the command line. Left to interpreter shutdown, the
    group's destructor can abort the process ("terminate called without an active exception") after a finished
    job, which torchrun then counts as a failed worker. The same abort follows a group that outlives the destroy,
    so the references go first: wdistill's own gloo groups (the banks' twin under NCCL, the trainers' votes), and
    cyclic garbage's, by a collection (a DDP wrap in a cycle lives until one). A Trainer its caller keeps holds
    none of them once ``fit()`` has returned."""
    if dist.is_available() and dist.is_initialized():
        helpers.forget_groups()
        gc.collect()
        dist.destroy_process_group()


def restart_count() -> int:
    """How many times torchrun's elastic agent restarted this job's workers (``--max-restarts``):
    after a restart the run continues from its last checkpoint instead of starting over."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def peer_lost(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because another rank died (gloo's "Connection reset /
    closed by peer", NCCL's remote errors), not a bug of this process."""
    text = str(e)
    return isinstance(e, getattr(dist, "DistError", ())) or any(
        m in text for m in ("Connection reset by peer", "Connection closed by peer", "remote worker", "ncclRemoteError",
                            "NCCL communicator was aborted"))


def per_rank_batch(global_batch: int, world_size: int, accumulate: int = 1) -> int:
    """Rows one rank feeds through one forward; errors name the fix when it does not divide."""
    parts = world_size * accumulate
    if global_batch % parts:
        raise ConfigError(f"data.batch_size={global_batch} is the global batch and must divide into "
                          f"{world_size} process(es) x train.accumulate={accumulate} equal micro-batches; "
                          f"use a multiple of {parts}, e.g. {max(parts, global_batch // parts * parts)}")
    return global_batch // parts


# torch 2.13 replaced DDP's broadcast_buffers by forward_sync_buffers: both, set False, stop the broadcast of
# buffers before every forward, but broadcast_buffers=False also skipped their broadcast at the start.
_FORWARD_SYNC_BUFFERS = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters


def wrap(module: nn.Module, device: torch.device, find_unused: bool) -> nn.Module:
    """``module`` under DistributedDataParallel when this process is in a process group, else itself
    (buckets of gradients are all-reduced while the backward pass runs).

    Buffers are not re-broadcast on every forward (memory banks are kept consistent by their
    terms, BatchNorm statistics at epoch ends or by SyncBatchNorm); DDP broadcasts rank 0's
    parameters and buffers once, here."""
    if backend() is None:
        return module
    ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
    no_forward_sync = {"forward_sync_buffers" if _FORWARD_SYNC_BUFFERS else "broadcast_buffers": False}
    wrapped = DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused, **no_forward_sync)
    if not _FORWARD_SYNC_BUFFERS:
        broadcast_buffers(module, dist.get_world_size())  # what broadcast_buffers=False leaves out before torch 2.13
    return wrapped


def all_sum(t: torch.Tensor, world_size: int) -> torch.Tensor:
    """Sum of ``t`` over ranks (``t`` itself on one process)."""
    if world_size > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def loader_share(data, accumulate: int, rank: int, world_size: int, log) -> tuple[int, dict]:
    """This rank's micro-batch, and the loader arguments of its part of the data: its share of the
    global training and evaluation batches (``data.batch_size``, ``data.eval_batch_size``), and a
    log that is silent off rank 0."""
    micro = per_rank_batch(data.batch_size, world_size, accumulate)
    return micro, dict(rank=rank, world_size=world_size, batch_size=micro * accumulate,
                       eval_batch_size=max(1, data.eval_batch_size // world_size),
                       log=log if rank == 0 else (lambda msg: None))


def broadcast_buffers(model: nn.Module, world_size: int) -> None:
    """Give every rank rank 0's buffers of ``model`` (BatchNorm running statistics)."""
    if world_size > 1:
        for b in model.buffers():
            dist.broadcast(b, 0)


def sync_batchnorm(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """``train.sync_bn``: under torch.distributed every BatchNorm of ``model`` becomes a
    SyncBatchNorm (statistics over the global batch, as multi-GPU ImageNet recipes do)."""
    if world_size == 1:
        return model
    if device.type == "cpu":
        raise ConfigError("train.sync_bn needs GPUs: torch's SyncBatchNorm has no CPU kernel. "
                          "Set train.sync_bn=false for a CPU (gloo) run")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
