"""The ``optim`` and ``train`` sections: the optimiser and its schedule; precision, scale-out,
logging, step checkpoints and the signals that stop a run cleanly."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from wdistill.config.schema_data import Strict

# Signals train.stop_signals may name (SIGKILL and SIGSTOP cannot be caught).
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP")
_UNITS = {"step": None, "steps": None, "s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60,
          "minute": 60, "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600}


def checkpoint_interval(value) -> tuple[int | None, float | None]:
    """``train.checkpoint_every`` as (steps, seconds): ``500`` or ``"500 steps"`` -> (500, None),
    ``"30 min"`` -> (None, 1800.0), None -> (None, None). A bad value raises ValueError."""
    if value is None:
        return None, None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"train.checkpoint_every={value}: give a number of steps >= 1, a time such as '30 min', "
                             "or null")
        return value, None
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*", str(value))
    unit = found.group(2).lower() if found else None
    if not found or unit not in _UNITS or float(found.group(1)) <= 0:
        raise ValueError(f"train.checkpoint_every={value!r}: give a number of steps (500 or '500 steps'), a time "
                         "('30 min', '2 h', '90 s') or null (epoch ends only)")
    number = float(found.group(1))
    if _UNITS[unit] is None:
        if number != int(number):
            raise ValueError(f"train.checkpoint_every={value!r}: a number of steps is a whole number")
        return int(number), None
    return None, number * _UNITS[unit]


class OptimSection(Strict):
    epochs: int = Field(240, ge=1, description="Training epochs (the CIFAR-100 recipe: 240).")
    lr: float = Field(0.05, gt=0, allow_inf_nan=False, description="Initial SGD learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(False, description="Nesterov momentum.")
    weight_decay: float = Field(5e-4, ge=0, allow_inf_nan=False, description="SGD weight decay.")
    schedule: Literal["multistep", "cosine", "constant"] = Field("multistep", description="Learning-rate schedule.")
    milestones: list[int] = Field(
        default_factory=lambda: [150, 180, 210],
        description="multistep: increasing epochs at which the rate is multiplied by gamma.",
    )
    gamma: float = Field(0.1, gt=0, allow_inf_nan=False, description="multistep: factor at each milestone.")
    warmup_epochs: int = Field(0, ge=0, description="Linear warm-up epochs before the schedule (< epochs).")

    @model_validator(mode="after")
    def _schedule_fits(self):
        if any(m < 1 for m in self.milestones) or self.milestones != sorted(self.milestones):
            raise ValueError(f"optim.milestones {self.milestones} must be increasing epochs >= 1")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise ValueError(f"optim.warmup_epochs={self.warmup_epochs} must be below optim.epochs={self.epochs}")
        return self


class TrainSection(Strict):
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Arithmetic of the forward pass. auto: bfloat16 autocast on a CUDA GPU that has it "
        "(Ampere and later), float16 autocast with loss scaling on older CUDA GPUs, float32 on CPU and MPS. "
        "fp16 always scales the loss, and its optimiser step is fused (the overflow check stays on the GPU). The OT "
        "solvers and WKD-F's Gaussian statistics run in float32 inside any of them.")
    tf32: bool = Field(False, description="TensorFloat-32 for float32 matrix products and convolutions on CUDA "
                       "(Ampere and later). Off: float32 stays float32, so the OT solvers' products (Sinkhorn, "
                       "CKA, covariances), which run in float32 inside autocast, keep their 23-bit mantissa and a "
                       "precision=fp32 run matches the CPU; under bf16/fp16 autocast it changes little else.")
    channels_last: bool = Field(False, description="channels_last memory format (usually faster on CPU and GPU). "
                                "Detection: the detectors' weights, so their convolutions' outputs.")
    compile: bool = Field(False, description="torch.compile the student. Detection: the student's backbone (body "
                          "and FPN) in place; the RPN and the RoI heads stay eager.")
    sync_bn: bool = Field(False, description="SyncBatchNorm over all processes (GPU runs under torchrun). Detection: "
                          "the student's BatchNorm layers (a detector trained from scratch); FrozenBatchNorm stays.")
    tensorboard: bool = Field(False, description="Also log to run_dir/tb (needs the tensorboard extra).")
    progress: bool = Field(True, description="Progress bars (shown on a terminal only).")
    eval_every: int = Field(1, gt=0, description="Evaluate on the test split every N epochs (and after the last).")
    accumulate: int = Field(
        1,
        ge=1,
        description="Gradient accumulation: each optimiser step sums this many "
        "micro-batches (batch_size stays the batch of one step).",
    )
    log_every: int = Field(
        50,
        ge=1,
        description="Loss, accuracy and the non-finite check are read from the "
        "device (a host sync) every this many steps.",
    )
    max_steps: int | None = Field(
        None,
        gt=0,
        description="Stop each epoch after this many steps (smoke tests of large presets); None: the whole epoch.",
    )
    stop_after: int | None = Field(None, gt=0, description="Pause after this many epochs: last.pt is written and "
                                   "the run continues later (--resume, or a larger value); the schedule still spans "
                                   "optim.epochs (`wdistill auto` trains candidates rung by rung this way).")
    clip_grad_norm: float | None = Field(
        None, gt=0, description="Clip the gradient's total L2 norm over the trained parameters to this value before "
        "each optimiser step (after loss-scale unscaling); the metrics record the share of steps clipped "
        "(train_clipped). null: no clipping, as in the published recipes. Detection toolkits use it to survive "
        "loss spikes (mmdetection's configs often set 35).")
    grad_share: bool = Field(True, description="Once per epoch, measure each loss term's gradient norm on the "
                             "student (one extra backward per term) and record its share (metrics grad_share_<id>); "
                             "warn when a term's is under 1% or over 100x the cross-entropy's.")
    checkpoint_every: int | str | None = Field(
        "30 min",
        description="Also write last.pt inside epochs: every N optimiser steps (an integer, or '500 steps'), or "
        "every so many minutes of training ('30 min', '2 h', '90 s'); null: at epoch ends only. --resume "
        "continues at the next batch, bit-identical to an uninterrupted run. The default bounds what a SIGKILL "
        "(out-of-memory killer, node failure), which no handler sees, can lose, for well under 1% of the time.",
    )
    stop_signals: list[str] = Field(
        default_factory=lambda: ["SIGTERM", "SIGUSR1"],
        description="Signals that stop a run cleanly: the current step finishes, last.pt is written, the process "
        "exits with code 75 (resume with --resume); a second one a second or more later exits at once. SIGTERM is "
        "what SLURM, Kubernetes and spot instances send before a kill; SIGUSR1 is SLURM's usual --signal. Any of "
        f"{', '.join(STOP_SIGNALS)}; [] leaves every signal's default.",
    )

    @model_validator(mode="before")
    @classmethod
    def _amp_is_precision(cls, data):
        """``amp``, precision's earlier name: true meant half precision (now bf16), false float32."""
        if isinstance(data, dict) and "amp" in data:
            data = dict(data)
            amp = data.pop("amp")
            if "precision" in data:
                raise ValueError("train.amp and train.precision both given: keep precision (amp is its old name)")
            data["precision"] = "bf16" if amp else "fp32"
        return data

    @field_validator("checkpoint_every", mode="before")
    @classmethod
    def _interval(cls, v):
        checkpoint_interval(v)
        return v

    @field_validator("stop_signals")
    @classmethod
    def _signals(cls, v: list[str]) -> list[str]:
        out = []
        for name in v:
            full = name.upper() if name.upper().startswith("SIG") else "SIG" + name.upper()
            if full not in STOP_SIGNALS:
                raise ValueError(f"train.stop_signals: {name!r} is not one of {', '.join(STOP_SIGNALS)}")
            out.append(full)
        return list(dict.fromkeys(out))

    def interval(self) -> tuple[int | None, float | None]:
        """``checkpoint_every`` as (steps, seconds); one of them or both None."""
        return checkpoint_interval(self.checkpoint_every)
