"""No host sync in a training step (issue 26), checked where CI runs: on the CPU, by
``benchtools/host_sync.py``'s record of the operations that make a CUDA step wait for the GPU.

The record must find each kind of sync planted in a step and nothing in a clean one; then every
method's step, taken by the Trainer's own Stepper, and a real run's steps must have none."""
import pytest
import torch
import torch.nn.functional as F

from benchtools.gpu import GpuSetup, _fixed_batch
from benchtools.gpu_syncs import real_run_syncs, sync_free, trainer_step
from benchtools.host_sync import blocking_copies, host_syncs
from benchtools.speed import SyntheticTask
from wdistill.losses.recipes import RECIPES

W = torch.randn(6, 5, requires_grad=True)
SPD = torch.eye(4) * 2 + 0.1
PLANTED = {
    "item": (lambda: W.detach().sum().item(), "_local_scalar_dense"),
    "float": (lambda: float(W.detach().sum()), "_local_scalar_dense"),
    "if": (lambda: 1 if (W > 0).all() else 0, "_local_scalar_dense"),
    "tolist": (lambda: W.tolist(), "Tensor.tolist"),
    "cpu": (lambda: W.cpu(), "Tensor.cpu"),
    "mask": (lambda: W[W > 0].sum().backward(), "boolean-mask"),
    "nonzero": (lambda: torch.nonzero(W), "nonzero"),
    "unique": (lambda: torch.unique(torch.arange(3)), "_unique2"),
    "bincount": (lambda: torch.bincount(torch.arange(3)), "bincount"),
    "repeat_interleave": (lambda: torch.arange(2).repeat_interleave(torch.ones(2, dtype=torch.long)),
                          "repeat_interleave"),
    "svd": (lambda: torch.linalg.matrix_norm(W, ord=2).backward(), "_linalg_svd"),
    "eigh": (lambda: torch.linalg.eigh(SPD), "_linalg_eigh"),
    "inv": (lambda: torch.linalg.inv(SPD), "_linalg_check_errors"),
    "host data": (lambda: torch.tensor(2.0), "lift_fresh"),
}
CLEAN = {
    "a step": lambda: (F.cross_entropy(W, torch.zeros(6, dtype=torch.long)) + W.new_full((), 2.0)).backward(),
    "where": lambda: torch.where(W > 0, W, 0.0).sum(),
    "gather": lambda: W.gather(1, torch.zeros(6, 1, dtype=torch.long)),
    "inv_ex": lambda: torch.linalg.inv_ex(SPD),
    "repeat_interleave sized": lambda: torch.arange(2).repeat_interleave(torch.ones(2, dtype=torch.long),
                                                                         output_size=2),
}


@pytest.mark.parametrize("name", PLANTED)
def test_the_record_finds_each_kind_of_host_sync(name):
    fn, op = PLANTED[name]
    found = host_syncs(fn)
    assert len(found) >= 1 and op in found[0], found
    assert torch.Tensor.tolist(torch.ones(1)) == [1.0] and "watched" not in repr(torch.Tensor.tolist)  # restored


@pytest.mark.parametrize("name", CLEAN)
def test_the_record_finds_nothing_in_device_only_work(name):
    assert host_syncs(CLEAN[name]) == []


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("method", list(RECIPES))
def test_every_method_steps_without_a_host_sync(method, precision):
    """The Trainer's Stepper (autocast, meter, non-finite guard, gradient clipping, after-step hooks) on
    each method's distiller, in float32 and under bfloat16 autocast (a GPU's default): after two warm-up
    steps (one-off set-up, such as CRD's normalising constant, may read a value once), three steps with
    no host sync."""
    setup = GpuSetup(device="cpu", quick=True)
    task = SyntheticTask(setup.shapes())
    cpu = torch.device("cpu")
    d = task.distiller(method, cpu)
    try:
        ok, first = sync_free(trainer_step(d, _fixed_batch(task, method, cpu), cpu, precision=precision), cpu)
    finally:
        d.close()
    assert ok, f"{method}: {first}"


def test_a_real_runs_steps_have_no_host_sync(tmp_path):
    """Through the Trainer itself (its loop, the forward with the epoch, the gradient-share probe, the in-memory
    loader's batch copies and augmentation), CE + WKD-L + DKD + RKD + CRD, as the GPU benchmark runs it: every
    step after the first two, with the fetch of its batch, recorded."""
    out = real_run_syncs(torch.device("cpu"), tmp_path)
    assert out == {"steps": 8, "syncs": []}


def _loaders():
    from wdistill.data import bundled_sample
    from wdistill.data.loader import BatchLoader
    from wdistill.data.stream import StreamLoader
    ds = bundled_sample("train").subset(slice(0, 32))
    yield "crop + flip", BatchLoader(ds, 8, True, crop_padding=2, flip=True)
    yield "resized crop + flip", BatchLoader(ds, 8, True, flip=True, resized_crop=20)
    yield "evaluation", BatchLoader(ds, 8, False, resized_crop=20)
    yield "streamed", StreamLoader(ds, 8, True, mean=ds.mean, std=ds.std)


def test_the_loaders_copy_batches_to_the_device_without_waiting():
    """Every copy of a batch (images, targets, indices, augmentation draws) to the device is non_blocking, and the
    normalisation constants are moved once: a blocking copy from host memory made the GPU drain every step. The
    record sees a blocking copy (the check of the check), then none in two passes of each loader."""
    with blocking_copies() as found:
        torch.ones(2).to("cpu")
        torch.ones(2).to(torch.device("cpu"), non_blocking=True)
    assert len(found) == 1 and "test_host_sync.py" in found[0]
    for name, loader in _loaders():
        next(iter(loader))  # the first batch may move the constants once
        with blocking_copies() as found:
            batches = [b for _ in range(2) for b in loader]
        assert batches and found == [], (name, found)
