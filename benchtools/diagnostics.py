"""Diagnostics of a teacher/student pair.

(a) CRD, Tian et al. ICLR 2020, Figure 2: the difference between the teacher's and the student's
    class-logit correlation matrices. With logits Z (N samples x C classes), the correlation
    matrix is ``R_ij = cov(Z_:i, Z_:j) / (sd_i sd_j)`` over the samples; the figure shows
    ``R_teacher - R_student`` (a student that transfers the teacher's class structure is near 0).
(b) WKD-L (Lv et al., NeurIPS 2024, section 3.1): the teacher's category cost
    ``c_ij = 1 - exp(-kappa (1 - CKA_ij))`` built by the same builder WKD-L trains with.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from wdistill import models
from wdistill.data import BatchLoader, load_dataset
from wdistill.io import load_dict
from wdistill.losses.wkd.cost import build_cost_matrix
from wdistill.models import load_checkpoint
from wdistill.models.taps import FeatureTap
from wdistill.workflows.plots import save_figure


@torch.no_grad()
def collect_logits(model: nn.Module, loader) -> torch.Tensor:
    """(N, C) float64 logits of ``model`` (eval mode) over ``loader``."""
    was = model.training
    model.eval()
    out = torch.cat([model(b["image"]).double() for b in loader])
    model.train(was)
    return out


def logit_correlation(logits: torch.Tensor) -> torch.Tensor:
    """(C, C) Pearson correlation between the class-logit columns of ``logits`` (N, C), over samples."""
    if logits.dim() != 2 or logits.shape[0] < 2:
        raise ValueError(f"need (N >= 2, C) logits, got {tuple(logits.shape)}")
    z = logits.double() - logits.double().mean(0)
    sd = z.pow(2).sum(0).sqrt()
    if (sd == 0).any():
        raise ValueError("a class logit is constant over the samples: its correlation is undefined")
    return (z.T @ z) / (sd[:, None] * sd[None, :])


def correlation_difference(t_logits: torch.Tensor, s_logits: torch.Tensor) -> torch.Tensor:
    """``R_teacher - R_student`` (C, C) on the same samples."""
    if t_logits.shape != s_logits.shape:
        raise ValueError(f"teacher logits {tuple(t_logits.shape)} and student logits {tuple(s_logits.shape)} "
                         "must come from the same samples and classes")
    return logit_correlation(t_logits) - logit_correlation(s_logits)


def heatmap(matrix: torch.Tensor, path: str | Path, title: str, labels=None, cmap: str = "viridis",
            symmetric: bool = False) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = matrix.detach().cpu().double().numpy()
    lim = abs(m).max() if symmetric else None
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(m, cmap=cmap, vmin=-lim if symmetric else None, vmax=lim)
    fig.colorbar(im, ax=ax)
    if labels is not None and len(labels) <= 20:
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = save_figure(fig, Path(path), dpi=110)
    plt.close(fig)
    return path


def load_model(path: str | Path, num_classes: int, in_channels: int) -> nn.Module:
    """A model from a checkpoint that records its ``arch`` (every run's student.pt does)."""
    state = load_dict(path)
    arch = state.get("arch") if isinstance(state, dict) else None
    if not arch:
        raise ValueError(f"{path} does not record its architecture ('arch'): use a run's student.pt")
    model = models.create(arch, num_classes=state.get("num_classes", num_classes),
                          in_channels=state.get("in_channels", in_channels))
    load_checkpoint(model, state)
    return model.eval()


def run_diagnostics(teacher_ckpt, student_ckpt, out="benchmarks/diagnostics", data: str = "fashion_mnist",
                    root=None, subset: int = 2000, kappa: float = 1.0) -> list[Path]:
    """Write ``corr_diff.png`` (teacher - student, on the first ``subset`` test images) and
    ``wkd_cost.png`` (teacher CKA cost from the first ``subset`` training images)."""
    train, test = load_dataset(data, root)
    test, train = test.subset(slice(0, subset)), train.subset(slice(0, subset))
    teacher = load_model(teacher_ckpt, test.num_classes, test.channels)
    student = load_model(student_ckpt, test.num_classes, test.channels)
    loader = BatchLoader(test, 500, False)
    diff = correlation_difference(collect_logits(teacher, loader), collect_logits(student, loader))
    out = Path(out)
    names = list(test.classes) or None
    p1 = heatmap(diff, out / "corr_diff.png", f"teacher - student logit correlation (mean |diff| "
                 f"{diff.abs().mean():.3f}), {len(test)} test images", names, "RdBu_r", symmetric=True)
    tap = FeatureTap(teacher)
    cost = build_cost_matrix(tap, BatchLoader(train, 500, False), train.num_classes, kappa, progress=False)
    tap.remove()
    p2 = heatmap(cost, out / "wkd_cost.png", f"teacher WKD-L category cost (CKA, kappa={kappa:g})", names)
    return [p1, p2]
