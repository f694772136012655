"""The CUDA path, checked and timed (issue 26; `python -m benchtools gpu`): every method's loss and
student gradient on CPU float32 against the device in float32 (TF32 off), in bfloat16 autocast and
in float16 with a GradScaler; the training step under ``torch.cuda.set_sync_debug_mode("error")``
(no host sync); step times against each method's own bound; the WKD-L kernel.

Everything also runs with ``--device cpu`` (then the parity is CPU against CPU, the sync check does
not apply and times come from ``time.perf_counter``): the tests run that quick mode, so the script a
GPU session runs in one go cannot rot.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from benchtools.gpu_limits import limits
from benchtools.gpu_syncs import sync_free, trainer_step
from benchtools.speed import SpeedSetup, SyntheticTask, speed_terms
from benchtools.targets import ratio_target
from wdistill.engine.precision import Precision
from wdistill.losses.recipes import RECIPES

TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}  # relative, on the loss and on the student's gradient


@dataclass(frozen=True)
class GpuSetup:
    """What the GPU benchmark measures; ``quick`` shrinks every shape for the CPU test."""

    device: str = "cuda"
    quick: bool = False
    batches: tuple[int, ...] = (64, 256)
    steps: int = 50
    warmup: int = 10

    def shapes(self) -> SpeedSetup:
        if self.quick:
            return SpeedSetup(teacher="resnet8", student="resnet8", batch=8, image=16, classes=10, num_samples=200)
        return SpeedSetup()


def environment(device: torch.device) -> dict:
    """The stamp: GPU, driver, CUDA and torch versions (CPU: its name and thread count)."""
    out = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        out.update(gpu=p.name, memory_gib=round(p.total_memory / 2 ** 30, 1), capability=f"{p.major}.{p.minor}",
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
        try:
            import pynvml  # optional: the driver version when NVML's bindings are installed
            pynvml.nvmlInit()
            out["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception:  # noqa: BLE001 - a missing binding only drops one line of the stamp
            out["driver"] = "unknown (no pynvml)"
    else:
        out.update(threads=torch.get_num_threads())
    return out


@contextmanager
def no_tf32():
    """Float32 parity means float32: TF32 matmuls and convolutions off for the duration."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _fixed_batch(task: SyntheticTask, method: str, device: torch.device) -> dict:
    """The task's batch on ``device``, with CRD/WCoRD's negatives drawn once so both devices see them."""
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in task.batch.items()}
    if any(t["name"] in ("crd", "wcord") for t in speed_terms(method)):
        g = torch.Generator().manual_seed(1)
        n, b = task.setup_.num_samples, len(task.batch["target"])
        idx = torch.randint(0, n, (b, 65), generator=g)
        idx[:, 0] = task.batch["index"]
        batch["contrast_index"] = idx.to(device)
    return batch


def _loss_and_grad(task: SyntheticTask, method: str, device: torch.device, autocast=None):
    """(loss, flat student gradient) of one forward/backward of a freshly built distiller."""
    torch.manual_seed(0)
    d = task.distiller(method, device)
    try:
        batch = _fixed_batch(task, method, device)
        ctx = torch.autocast(device.type, dtype=autocast) if autocast else nullcontext()
        with ctx:
            total, _, _ = d(batch)
        total.backward()
        grad = torch.cat([p.grad.flatten() for p in d.student.parameters() if p.grad is not None])
        return total.detach().double().cpu(), grad.detach().double().cpu()
    finally:
        d.close()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def parity(method: str, setup: GpuSetup) -> dict:
    """Loss and student gradient: CPU float32 against the device in float32 (TF32 off) and in
    bfloat16 autocast; float16 + GradScaler must give a finite loss and a step that stays finite."""
    device = torch.device(setup.device)
    shapes = setup.shapes()
    with no_tf32():
        ref = _loss_and_grad(SyntheticTask(shapes), method, torch.device("cpu"))
        dev = _loss_and_grad(SyntheticTask(shapes), method, device)
    row = {"method": method, "float32_loss": _rel(dev[0], ref[0]), "float32_grad": _rel(dev[1], ref[1])}
    bf16_ok = device.type == "cpu" or torch.cuda.is_bf16_supported()
    if bf16_ok:
        low = _loss_and_grad(SyntheticTask(shapes), method, device, torch.bfloat16)
        row.update(bfloat16_loss=_rel(low[0], ref[0]), bfloat16_grad=_rel(low[1], ref[1]))
    row["float16_scaler"] = _fp16_step_is_finite(method, shapes, device) if device.type == "cuda" else None
    row["ok"] = (row["float32_loss"] <= TOLERANCE["float32"] and row["float32_grad"] <= TOLERANCE["float32"]
                 and (not bf16_ok or max(row["bfloat16_loss"], row["bfloat16_grad"]) <= TOLERANCE["bfloat16"])
                 and row["float16_scaler"] in (None, True))
    return row


def _fp16_step_is_finite(method: str, shapes: SpeedSetup, device: torch.device) -> bool:
    torch.manual_seed(0)
    task = SyntheticTask(shapes)
    d = task.distiller(method, device)
    try:
        precision = Precision("fp16", device)  # the Trainer's: its scaler, its fused optimiser step
        opt = torch.optim.SGD(d.trainable_parameters(), lr=0.01, momentum=0.9, fused=precision.fused_optimizer)
        scaler = precision.scaler()
        batch = _fixed_batch(task, method, device)
        for _ in range(3):
            with precision.autocast():
                total, _, _ = d(batch)
            scaler.scale(total).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            d.after_step()
        return bool(torch.isfinite(total).item()) and all(torch.isfinite(p).all() for p in d.parameters())
    finally:
        d.close()


def _timer(device: torch.device):
    """A function that times ``fn``: CUDA events on a GPU, perf_counter on the CPU (seconds)."""
    def cuda(fn):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def cpu(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return cuda if device.type == "cuda" else cpu


def step_time(method: str, batch_size: int, setup: GpuSetup, sync_check: bool = False, compiled: bool = False,
              kernel: str | None = None) -> dict:
    """Median step seconds of ``method`` and of its bound (student CE step + teacher forward), bfloat16
    autocast and channels_last on a GPU; with ``sync_check`` three steps of the Trainer's own Stepper on the same
    distiller run under ``torch.cuda.set_sync_debug_mode("error")`` (on the CPU: ``host_sync``'s record) and a
    host sync is reported, not raised. ``compiled``: the
    student torch.compile'd as ``train.compile`` does (its compilation falls in the warm-up; the bound stays
    eager). ``kernel``: WKD-L's ``kernel`` option for the method's WKD-L term (its compilation in the warm-up).
    A step above its target is profiled against its bound (``limits``: what limits it, ``benchtools.gpu_limits``)."""
    device = torch.device(setup.device)
    task = SyntheticTask(replace(setup.shapes(), batch=batch_size))
    torch.manual_seed(0)
    d = task.distiller(method, device, {"wkd_l": {"kernel": kernel}} if kernel else None)
    if compiled:
        d.student_tap.model = torch.compile(d.student)  # as the Trainer does: the hooks stay on the student
    batch = _fixed_batch(task, method, device)
    step, bound = _step_and_bound(d, batch, device)
    try:
        timer = _timer(device)
        for _ in range(setup.warmup):
            step(), bound()
        row = {"method": method, "batch": batch_size, "sync_free": None, "compiled": compiled, "kernel": kernel}
        if sync_check:
            row["sync_free"], row["sync_error"] = sync_free(trainer_step(d, batch, device), device)
        times = [(timer(step), timer(bound)) for _ in range(setup.steps)]
        row.update(step_s=statistics.median(t for t, _ in times), bound_s=statistics.median(b for _, b in times))
        row["ratio"] = row["step_s"] / row["bound_s"]
        if row["ratio"] > ratio_target(method):
            try:  # a profiler that cannot run here must not cost the row its timing
                row["limits"] = limits(step, bound, row["step_s"], device)
            except Exception as e:  # noqa: BLE001 - recorded in the row and in the report
                row["limits"] = {"error": f"{type(e).__name__}: {e}"}
        return row
    finally:
        d.close()


def _step_and_bound(d, batch: dict, device: torch.device):
    """(one training step of distiller ``d`` on ``batch``, one step of its bound: the student's CE step and the
    teacher's forward), in bfloat16 autocast and channels_last on a GPU (``d`` and ``batch`` converted here)."""
    cuda = device.type == "cuda"
    if cuda:
        d.to(memory_format=torch.channels_last)
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)

    def step():
        with amp():
            total, _, _ = d(batch)
        total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        d.after_step()

    def bound():
        with amp():
            with torch.no_grad():
                d.teacher_outputs(batch["image"])
            loss = F.cross_entropy(d.student(batch["image"]), batch["target"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, bound


def methods_of(quick: bool) -> list[str]:
    """Every benchmark row but vanilla (the quick mode: one logit, one feature and one contrastive method)."""
    every = [m for m in RECIPES if m != "vanilla"]
    return ["kd", "wkd_lf", "crd_kd"] if quick else every
