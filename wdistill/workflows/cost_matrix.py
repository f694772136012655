"""``wdistill cost-matrix CONFIG``: WKD-L's category cost built once from a trained teacher and
written to a file that a ``wkd_l`` term names with ``cost: FILE`` (``wdistill.losses.wkd.cost``
holds the math: linear CKA between class-conditional teacher features, sharpened by kappa)."""
from __future__ import annotations

from pathlib import Path

import torch

from wdistill.config import RunConfig
from wdistill.data.build import build_loaders
from wdistill.engine.build import build_model, check_models, resolve_device
from wdistill.errors import ConfigError
from wdistill.io import atomic_save
from wdistill.losses.wkd.cost import build_cost_matrix, teacher_checksum
from wdistill.models import FeatureTap


def make_cost_matrix(cfg: RunConfig, mode: str = "features", kappa: float = 1.0, max_per_class: int | None = None,
                     output: str | Path | None = None) -> tuple[Path, torch.Tensor]:
    """Build the (C, C) cost from the config's one teacher on its training data; returns (file, cost)."""
    sections = cfg.teacher_sections()
    if len(sections) != 1:
        raise ConfigError("cost-matrix needs exactly one 'teacher:' section (model + checkpoint) in the config")
    check_models(cfg, student=False)  # the teacher's name and checkpoint, before the data loads
    device = resolve_device(cfg.run.device)
    data = build_loaders(cfg.data, seed=cfg.run.seed, device=device)  # memory or streaming, as training
    teacher = build_model(sections[0], data.num_classes, data.channels, "teacher").to(device).eval()
    tap = FeatureTap(teacher, sections[0].taps)
    cost = build_cost_matrix(tap, data.plain_batches(), data.num_classes, kappa=kappa, mode=mode,
                             max_per_class=max_per_class).cpu()
    out = Path(output or f"wkd_cost_{sections[0].model}_{teacher_checksum(teacher)[:12]}_{mode}_k{kappa:g}.pt")
    atomic_save(cost, out)
    return out, cost
