"""Small learnable parts shared by several loss terms: embedding heads and the FitNet connector."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class Embed(nn.Module):
    """CRD embedding head (Tian et al., ICLR 2020): ``l2_normalise(Linear(x))``.

    Args:
        dim_in: input width (the ``embed`` vector, or any tensor flattened from dim 1).
        dim_out: output width, 128 in CRD and WCoRD.
        spectral_norm: wrap the Linear in spectral normalisation (WCoRD's Lipschitz control).
    """

    def __init__(self, dim_in: int, dim_out: int = 128, spectral_norm: bool = False):
        super().__init__()
        if dim_in <= 0 or dim_out <= 0:
            raise ValueError(f"Embed needs positive widths, got dim_in={dim_in}, dim_out={dim_out}")
        self.linear = nn.Linear(dim_in, dim_out)
        if spectral_norm:
            self.linear = nn.utils.parametrizations.spectral_norm(self.linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


class ConvReg(nn.Module):
    """FitNet regressor (Romero et al. 2015) mapping a student map to the teacher's shape.

    Rules of the reference implementation (RepDistiller ``ConvReg``), for (C, H, W) shapes:
    3x3 stride-2 conv if s_H = 2 t_H; 4x4 stride-2 transposed conv if 2 s_H = t_H; otherwise a
    conv with kernel (1+s_H-t_H, 1+s_W-t_W) (a 1x1 conv when sizes match); then BatchNorm and,
    if ``use_relu``, ReLU.

    A student map smaller than the teacher's other than by exactly half has no reference rule:
    with ``mismatch="error"`` that is an error; with ``mismatch="channels"`` a 1x1 conv maps the
    channels only and keeps the student's size (``matches_size`` False): the term then compares
    the maps on a common grid (``pairing.match_spatial``) or, like WKD-F, through statistics that
    need no spatial match.

    Args:
        s_shape, t_shape: feature shapes (B, C, H, W) or (C, H, W) of student and teacher.
        use_relu: apply ReLU after BatchNorm (AB uses ``False``).
        mismatch: "error" or "channels" (see above).
    """

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int], use_relu: bool = True,
                 mismatch: str = "error"):
        super().__init__()
        s_c, s_h, s_w = _chw(s_shape, "student")
        t_c, t_h, t_w = _chw(t_shape, "teacher")
        self.matches_size = True
        if s_h == 2 * t_h and s_w == 2 * t_w:
            self.conv = nn.Conv2d(s_c, t_c, 3, stride=2, padding=1)
        elif 2 * s_h == t_h and 2 * s_w == t_w:
            self.conv = nn.ConvTranspose2d(s_c, t_c, 4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, (1 + s_h - t_h, 1 + s_w - t_w))
        elif mismatch == "channels":
            self.conv, self.matches_size = nn.Conv2d(s_c, t_c, 1), False
        else:
            raise ValueError(
                f"ConvReg cannot map a student map of size {s_h}x{s_w} to a teacher map of size "
                f"{t_h}x{t_w}: the student map must be larger or equal, or exactly half the size; "
                "tap a different student/teacher layer")
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu
        self.out_shape = (t_c, t_h, t_w) if self.matches_size else (t_c, s_h, s_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


def _chw(shape: Sequence[int], who: str) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3:
        raise ValueError(f"ConvReg needs a {who} feature shape (B, C, H, W) or (C, H, W), got {shape}")
    return shape
