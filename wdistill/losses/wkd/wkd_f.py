"""WKD-F: feature distillation by continuous Wasserstein distance between Gaussians
(Lv, Yang, Li, NeurIPS 2024)."""
from __future__ import annotations

import torch
import torch.nn as nn

from wdistill import ot
from wdistill.errors import ConfigError
from wdistill.losses._shared.heads import ConvReg
from wdistill.losses.base import SetupContext, Term
from wdistill.losses.recipes import bracket, ce, det, publish, publish_detection
from wdistill.losses.registry import register
from wdistill.losses.wkd.official import CIFAR as OFFICIAL_CIFAR
from wdistill.losses.wkd.official import f_params, l_params
from wdistill.losses.wkd.wkd_l import (
    DEFAULT_DECAY_FRAC,
    DETECTION_L,
    check_decay_args,
    cosine_decayed,
    decay_start_epoch,
)


def _cells(size: int, grid: int) -> list[tuple[int, int]]:
    # Adaptive-pooling bins: [floor(i*size/g), ceil((i+1)*size/g)).
    return [(i * size // grid, -(-(i + 1) * size // grid)) for i in range(grid)]


@ot.full_precision
def channel_gaussians(f: torch.Tensor, grid: int = 1, eps: float = 1e-5, cov: str = "diag"):
    """Per-cell channel Gaussians of a feature map (B, C, H, W), in float32 (float64 if given) whatever the
    autocast: they are the Gaussian W2's input, and a bfloat16 covariance moved cov "full"'s gradient by 8%.

    The map is cut into a grid x grid array of cells (adaptive-pooling bins); in each cell the
    channel vector at each position is a sample: mean ``mu`` (C,) and either per-channel std
    ``sqrt(unbiased var + eps)`` (cov "diag") or the unbiased covariance ``+ eps I`` (cov "full").

    Returns:
        mu (B, g*g, C) and std (B, g*g, C) or covariance (B, g*g, C, C).
    """
    if f.dim() != 4:
        raise ValueError(f"WKD-F needs a (B, C, H, W) feature map, got shape {tuple(f.shape)}")
    B, C, H, W = f.shape
    if H < grid or W < grid:
        raise ConfigError(f"grid={grid} is finer than the {H}x{W} feature map; use a smaller grid")
    mus, seconds = [], []
    for h0, h1 in _cells(H, grid):
        for w0, w1 in _cells(W, grid):
            x = f[:, :, h0:h1, w0:w1].flatten(2)  # (B, C, n)
            n = x.shape[2]
            if n < 2:
                raise ConfigError(f"grid={grid} leaves a 1-position cell in a {H}x{W} map; use a smaller grid")
            mu = x.mean(2)
            xc = x - mu.unsqueeze(2)
            mus.append(mu)
            if cov == "diag":
                seconds.append((xc.pow(2).sum(2) / (n - 1) + eps).sqrt())
            else:
                eye = torch.eye(C, dtype=f.dtype, device=f.device)
                seconds.append(xc @ xc.transpose(1, 2) / (n - 1) + eps * eye)
    return torch.stack(mus, 1), torch.stack(seconds, 1)


def wkd_f_parts(f_s: torch.Tensor, f_t: torch.Tensor, grid: int = 1, eps: float = 1e-5,
                cov: str = "diag") -> tuple[torch.Tensor, torch.Tensor]:
    """(mean_loss, cov_loss) of WKD-F between projected student and teacher maps (B, C, H, W).

    The maps may differ in height and width: each is cut into its own grid x grid cells (at grid 1
    the Gaussians are the channels' statistics over all positions, which need no spatial match).
    With per-cell Gaussians N(mu, Sigma) (see :func:`channel_gaussians`) and W2^2 split into
    ``||mu_s - mu_t||^2`` and the covariance part (``||sd_s - sd_t||^2`` for diagonal Gaussians,
    ``tr(S_t + S_s - 2 (S_t^1/2 S_s S_t^1/2)^1/2)`` for full ones), both summed over cells,
    channels and batch and divided by ``B * grid^2``.
    """
    if f_s.shape[:2] != f_t.shape[:2]:
        raise ValueError(f"WKD-F: projected student map {tuple(f_s.shape)} and teacher map {tuple(f_t.shape)} "
                         "differ in batch or channels")
    if cov not in ("diag", "full"):
        raise ConfigError(f"unknown cov {cov!r}; use 'diag' or 'full'")
    mu_s, sec_s = channel_gaussians(f_s, grid, eps, cov)
    mu_t, sec_t = channel_gaussians(f_t.detach(), grid, eps, cov)
    if cov == "diag":
        mean_part, cov_part = ot.gaussian_w2_diag(mu_t, sec_t, mu_s, sec_s, split=True)
    else:
        mean_part, cov_part = ot.gaussian_w2(mu_t, sec_t, mu_s, sec_s, split=True)
    denom = f_s.shape[0] * grid ** 2
    return mean_part.sum() / denom, cov_part.sum() / denom


class Bottleneck(nn.Module):
    """WKD-F's ImageNet projector: 1x1 conv -> hidden, 3x3 conv, 1x1 conv -> Ct, BN, ReLU."""

    def __init__(self, c_in: int, c_out: int, hidden: int = 256):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1), nn.Conv2d(hidden, hidden, 3, padding=1), nn.Conv2d(hidden, c_out, 1),
            nn.BatchNorm2d(c_out), nn.ReLU())

    def forward(self, x):
        return self.body(x)


@register
class WKDFeatures(Term):
    """WKD-F (Lv, Yang, Li, "Wasserstein Distance Rivals Kullback-Leibler Divergence for Knowledge
    Distillation", NeurIPS 2024), the feature part.

    The student's last-stage map ``feats[layer]`` goes through a projector to the teacher's shape;
    each map is modelled per grid cell by a channel Gaussian, and
    ``L = lambda_F(e) * (gamma * mean_loss + cov_loss)`` with the Gaussian W2 parts of
    :func:`wkd_f_parts` and the same cosine decay as WKD-L.

    Defaults are the paper's CIFAR-100 resnet32x4 -> resnet8x4 setting: lambda_f=0.08, gamma=4,
    grid=1, decay from epoch 150 of 240 (decay_start_frac=150/240), diagonal Gaussians with
    eps=1e-5. ``projector``: "convreg" (FitNet ConvReg + BN + ReLU, a 1x1 conv when sizes match; when
    the student map is smaller than its rules cover, a 1x1 conv that keeps the student's size: the
    Gaussians are per-cell statistics and need no spatial match), "conv" (the same without the
    ReLU, for signed targets), "bottleneck" (ImageNet setting) or "none" (shapes must match).
    ``cov="full"`` uses the full-covariance Bures-Wasserstein distance instead (an option; not in
    the published results).

    Detection: WKD-F distils the RoI-Align features (``roi_feats``, R x 256 x 7 x 7) of the
    student's sampled proposals against the teacher's on the same proposals, one Gaussian per RoI
    (and per cell with ``grid`` > 1: 2-4 on a 7 x 7 map), diagonal by default, as the WKD authors
    describe their Faster R-CNN setting (official repository, issue #5: diagonal covariance;
    a finer grid or a full covariance may help, both options here); ``layer`` is not used. The
    recipe's projector is "conv": RoI-Align features of FPN maps are signed, which a ReLU'd
    projection could not match.
    """

    name = "wkd_f"
    tasks = ("classification", "detection")
    built_by_setup = ("projector",)

    def __init__(self, lambda_f: float = 0.08, gamma: float = 4.0, grid: int = 1, eps: float = 1e-5,
                 projector: str = "convreg", cov: str = "diag", layer: int = -1,
                 decay_start: float | None = None, decay_start_frac: float | None = DEFAULT_DECAY_FRAC):
        super().__init__()
        if projector not in ("convreg", "conv", "bottleneck", "none"):
            raise ConfigError(f"unknown projector {projector!r}; use 'convreg', 'conv', 'bottleneck' or 'none'")
        if cov not in ("diag", "full"):
            raise ConfigError(f"unknown cov {cov!r}; use 'diag' or 'full'")
        if grid < 1:
            raise ConfigError(f"grid must be >= 1, got {grid}")
        check_decay_args(decay_start, decay_start_frac)
        self.lambda_f, self.gamma, self.grid, self.eps = lambda_f, gamma, grid, eps
        self.projector_kind, self.cov, self.layer = projector, cov, layer
        self.decay_start, self.decay_start_frac = decay_start, decay_start_frac
        self.projector: nn.Module | None = None
        self.on_rois = False  # detection: the RoI-Align features instead of feats[layer] (set up by setup)

    def _map(self, out: dict) -> torch.Tensor:
        return out["roi_feats"] if self.on_rois else out["feats"][self.layer]

    def setup(self, ctx: SetupContext) -> None:
        self.on_rois = getattr(ctx, "task", "classification") == "detection"
        s_shape, t_shape = tuple(self._map(ctx.student_out).shape), tuple(self._map(ctx.teacher_out).shape)
        if self.projector_kind in ("convreg", "conv"):  # a student map too small for its rules keeps its own size
            self.projector = ConvReg(s_shape, t_shape, use_relu=self.projector_kind == "convreg", mismatch="channels")
        elif self.projector_kind == "bottleneck":
            self.projector = Bottleneck(s_shape[1], t_shape[1])
        else:
            if s_shape[1] != t_shape[1]:
                raise ConfigError(f"projector='none' needs equal channel counts, got student {s_shape[1]} and "
                                  f"teacher {t_shape[1]}; use projector='convreg'")
            self.projector = nn.Identity()
        self.projector.to(ctx.device)

    def forward(self, student, teacher, batch):
        f_s = self.projector(self._map(student))
        f_t = self._map(teacher).detach()
        with torch.autocast(device_type=f_s.device.type, enabled=False):
            dtype = torch.float64 if f_s.dtype == torch.float64 else torch.float32
            mean_loss, cov_loss = wkd_f_parts(f_s.to(dtype), f_t.to(dtype), self.grid, self.eps, self.cov)
        start = decay_start_epoch(self.decay_start, self.decay_start_frac, batch.get("num_epochs"))
        weight = cosine_decayed(self.lambda_f, batch.get("epoch", 0), batch.get("num_epochs"), start)
        return weight * (self.gamma * mean_loss + cov_loss)


# Published recipes: the official resnet32x4 -> resnet8x4 settings (wkd_official); the L+F candidates
# move WKD-L as its own row's do.
_DECAY = {"decay_start_frac": DEFAULT_DECAY_FRAC}
_ROW = OFFICIAL_CIFAR["homogeneous"]
publish("wkd_f", label="WKD-F", order=17, tune_priority=3,
        terms=[ce(), {"name": "wkd_f", "weight": 1.0, **f_params(_ROW["F"]), **_DECAY}],
        grid=bracket("wkd_f", "lambda_f", _ROW["F"]["lambda_f"]))
publish("wkd_lf", label="WKD-L+WKD-F", order=18, tune_priority=2, demo=5, quick=True, terms=[
    ce(), {"name": "wkd_l", "weight": 1.0, **l_params(_ROW["LF"]), **_DECAY},
    {"name": "wkd_f", "weight": 1.0, **f_params(_ROW["LF"]), **_DECAY}],
    grid=[{}, {"wkd_l.lambda_l": 30.0, "wkd_l.tau": 4.0}, {"wkd_l.lambda_l": 10.0, "wkd_l.tau": 4.0}])
# Detection (the WKD authors: RoI-Align features, diagonal Gaussians; their weights are not published):
# one Gaussian per RoI, a 1x1 conv + BN projector, no decay; WKD-L+WKD-F adds the two rows' terms.
DETECTION_F = {"lambda_f": 0.02, "gamma": 2.0, "grid": 1, "projector": "conv", "decay_start_frac": None}
publish_detection("wkd_f", label="WKD-F", order=5, terms=[det(), {"name": "wkd_f", "weight": 1.0, **DETECTION_F}])
publish_detection("wkd_lf", label="WKD-L+WKD-F", order=6, terms=[
    det(), {"name": "wkd_l", "weight": 1.0, **DETECTION_L}, {"name": "wkd_f", "weight": 1.0, **DETECTION_F}])
