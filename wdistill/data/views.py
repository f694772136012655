"""Views: a fixed transform of the image one model sees (cross-modal and privileged-information
distillation; CRD section 4.3, WCoRD section 4.2).

A view is applied on the device to the batch the loader produced, i.e. AFTER the shared
augmentation: teacher and student views of a sample come from the same crop and flip. Images are
already normalised there, so "zeroed" means set to the data set's mean. Every view keeps the
channel count (``channels`` zeroes the other channels), so the model is built as for the full
image; ``downsample`` changes the spatial size, which models with a global (adaptive) pooling
take as they are (the zoo's CIFAR resnets take 14x14 Fashion-MNIST).

Views:
  identity                     the image itself (the default)
  downsample  factor k         k x k average pooling (28x28 -> 14x14 for k=2)
  mask        box [t, l, h, w] the box (fractions of height/width) zeroed; default the bottom half
  channels    channels [i..]   only these channels kept, the others zeroed
  lowpass     size k           k x k box blur, stride 1, zero padding counted out (mean of the
                               pixels inside the image)
  highpass    size k           image minus its lowpass view
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

VIEW_NAMES = ("identity", "downsample", "mask", "channels", "lowpass", "highpass")


class ViewSpec(BaseModel):
    """``teacher.view`` / ``student.view``: the transform that model sees (see wdistill.data.views)."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["identity", "downsample", "mask", "channels", "lowpass", "highpass"] = Field(
        "identity", description="identity | downsample (factor) | mask (box) | channels (channels) | "
        "lowpass (size) | highpass (size); applied after the shared augmentation.")
    factor: int = Field(2, ge=1, description="downsample: average-pooling factor.")
    size: int = Field(5, ge=1, description="lowpass/highpass: side of the box blur (odd).")
    box: tuple[float, float, float, float] = Field(
        (0.5, 0.0, 0.5, 1.0), description="mask: [top, left, height, width] as fractions of the image, zeroed.")
    channels: list[int] = Field(default_factory=lambda: [0], description="channels: the channel indices kept.")

    @model_validator(mode="after")
    def _check(self):
        if self.name in ("lowpass", "highpass") and self.size % 2 == 0:
            raise ValueError(f"view size {self.size} must be odd (a centred box blur), e.g. 5")
        t, l, h, w = self.box
        if not (0 <= t <= 1 and 0 <= l <= 1 and 0 <= h <= 1 and 0 <= w <= 1):
            raise ValueError(f"view box {list(self.box)} must be fractions in [0, 1]: [top, left, height, width]")
        if any(c < 0 for c in self.channels) or not self.channels:
            raise ValueError(f"view channels {self.channels} must be non-empty channel indices >= 0")
        return self


def box_blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over the k x k window around each pixel (inside the image only), per channel."""
    pad = k // 2
    return F.avg_pool2d(x, k, stride=1, padding=pad, count_include_pad=False)


class View(nn.Module):
    """The transform of a :class:`ViewSpec`; no parameters, no buffers (nothing to checkpoint)."""

    def __init__(self, spec: ViewSpec | dict | None = None):
        super().__init__()
        self.spec = spec if isinstance(spec, ViewSpec) else ViewSpec.model_validate(spec or {})

    @property
    def is_identity(self) -> bool:
        return self.spec.name == "identity"

    def check(self, channels: int, size: tuple[int, int] | None = None) -> None:
        """Raise ValueError if the view cannot apply to images of ``channels`` x ``size``."""
        s = self.spec
        if s.name == "channels" and max(s.channels) >= channels:
            raise ValueError(f"view channels {s.channels} but the images have {channels} channel(s)")
        if size and s.name == "downsample" and min(size) < s.factor:
            raise ValueError(f"view downsample factor {s.factor} exceeds the image size {tuple(size)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if s.name == "identity":
            return x
        if s.name == "downsample":
            return F.avg_pool2d(x, s.factor) if s.factor > 1 else x
        if s.name == "lowpass":
            return box_blur(x, s.size)
        if s.name == "highpass":
            return x - box_blur(x, s.size)
        if s.name == "mask":
            H, W = x.shape[-2:]
            t, l, h, w = s.box
            top, left = round(t * H), round(l * W)
            keep = torch.ones(H, W, dtype=x.dtype, device=x.device)
            keep[top:top + round(h * H), left:left + round(w * W)] = 0
            return x * keep
        if s.name == "channels":
            keep = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
            keep[s.channels] = 1
            return x * keep.view(1, -1, 1, 1)
        raise AssertionError(s.name)

    def extra_repr(self) -> str:
        return self.spec.name


class Viewed(nn.Module):
    """``model(view(x))``: a model on its own view, for evaluation (taps stay on ``model``)."""

    def __init__(self, model: nn.Module, view: View | ViewSpec | dict | None):
        super().__init__()
        self.model = model
        self.view = view if isinstance(view, View) else View(view)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.view(x))
