"""Evaluation: top-1/top-5 and cross-entropy of a model over a loader, summed on the device."""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn

from wdistill.engine.loop import Meter


@torch.no_grad()
def evaluate(model: nn.Module, loader, amp_ctx=nullcontext) -> dict:
    """top-1, top-5 (%) and mean cross-entropy of ``model`` over ``loader`` (summed over ranks
    when the loader is sharded). Sums stay on the device until the end."""
    was = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    meter = Meter(device)
    for key in ("n", "loss", "top1", "top5"):  # every rank sums every key, even with no batch of its own
        meter.add(key, torch.zeros((), device=device))
    for batch in loader:
        with amp_ctx():
            logits = model(batch["image"]).float()
        target = batch["target"]
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        meter.add("n", torch.full((), float(len(target)), device=logits.device))  # a fill, not a host copy
        meter.add("loss", nn.functional.cross_entropy(logits, target, reduction="sum"))
        meter.add("top1", (top[:, 0] == target).sum())
        meter.add("top5", (top == target[:, None]).any(1).sum())
    model.train(was)
    s = meter.read(loader.world_size)
    n = s["n"] or float("nan")
    return {"top1": 100.0 * s["top1"] / n, "top5": 100.0 * s["top5"] / n, "loss": s["loss"] / n}


class Ensemble(nn.Module):
    """Mean logits of frozen models (a single teacher is an ensemble of one)."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        return torch.stack([m(x) for m in self.members]).mean(0)

    def train(self, mode: bool = True):
        return super().train(False)
