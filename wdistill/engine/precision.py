"""The arithmetic a run trains in (``train.precision``) and the GPU back-end switches it starts with.

``auto`` is what a GPU user expects and a CPU user does not pay for: bfloat16 autocast on a CUDA GPU
that supports it (Ampere, Hopper and later: no loss scaling needed, float32's range), float16
autocast with a GradScaler on older CUDA GPUs, float32 elsewhere (bfloat16 on most CPUs is slower
than float32, and the published results are float32). The OT solvers run in float32 inside any
autocast (``wdistill.ot``), so mixed precision touches the networks, not the transport.

On CUDA, :func:`configure_backends` turns on ``cudnn.benchmark`` (batches have one shape, so the
fastest convolution algorithm is found once) and sets TF32 from ``train.tf32``.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from wdistill.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` made concrete for ``device``; a precision the device cannot run is refused."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16; use "
                          "fp16 (with loss scaling) or auto")
    if name == "fp16" and device.type == "mps":
        raise ConfigError("train.precision=fp16 is not supported on MPS here; use fp32 or auto")
    return name


class Precision:
    """Autocast context and gradient scaler of one run."""

    def __init__(self, name: str, device: torch.device):
        self.name = resolve_precision(name, device)
        self.dtype = DTYPES[self.name]
        self.device_type = device.type

    def autocast(self):
        """The forward pass's context: autocast to ``dtype``, or nothing in float32."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, enabled for float16 only (bfloat16 has float32's exponent range)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")

    @property
    def fused_optimizer(self) -> bool | None:
        """The optimiser's ``fused``: True with loss scaling, whose overflow flag a fused step reads on the device
        (skipping its update there), where an unfused step makes the scaler read it on the host, a sync every
        step; the same update either way. None (torch's choice) otherwise."""
        return True if self.name == "fp16" else None


def configure_backends(device: torch.device, tf32: bool) -> None:
    """cuDNN autotuning on, TF32 on or off for float32 matrix products and convolutions (CUDA only)."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
