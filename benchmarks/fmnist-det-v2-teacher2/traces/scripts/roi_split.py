"""One-off analysis behind the diagnostics notes (2026-12-06): at each step of a WKD-L detection run, the gradient of
WKD-L's two parts and of the RoI classification loss on the RoI class logits, split into background and object RoIs.

    PYTHONPATH=. python benchmarks/fmnist-det-v2-teacher2/traces/scripts/roi_split.py RUN_DIR STEPS OUT.jsonl

Built on benchtools/step_trace.py (its replay of the run's steps in a scratch folder, with this watcher). It wraps
WKD-L's forward to keep the logits and the RoI labels it saw; one row per step: RoI counts and, per part, the
gradient's L2 norm over the background rows and over the object rows.
"""
import json
import sys
from pathlib import Path

import torch
import yaml

from benchtools import step_trace as st
from wdistill.losses.wkd import wkd_l as W

seen = {}
_forward = W.WKDLogits.forward


def forward(self, student, teacher, batch):
    seen["logits"], seen["labels"] = student["logits"], batch["target"]
    return _forward(self, student, teacher, batch)


W.WKDLogits.forward = forward


class Split(st.StepWatcher):
    def __init__(self, trainer, steps):
        self.trainer, self.steps, self.rows = trainer, steps, []

    def before_backward(self, step, batch, parts):
        if step >= self.steps:
            raise st._Done
        term, weight = self.trainer.distiller.terms["wkd_l"], self.trainer.distiller.weights["wkd_l"]
        kept, term.last_parts = term.last_parts, None
        z, bg = seen["logits"], seen["labels"] == 0
        row = {"step": step, "n_bg": int(bg.sum()), "n_fg": int((~bg).sum())}
        for name, value in (("wd", weight * kept["wd"]), ("target", weight * kept["target"]), ("det", parts["det"])):
            g = torch.autograd.grad(value, z, retain_graph=True)[0]  # det: only its RoI classification reads z
            row[name] = {"bg": float(g[bg].norm()), "fg": float(g[~bg].norm())}
        self.rows.append(row)


torch.set_num_threads(1)
raw = yaml.safe_load((Path(sys.argv[1]) / "config.yaml").read_text())
res = st.trace(raw, int(sys.argv[2]), watcher=Split)
Path(sys.argv[3]).write_text("\n".join(json.dumps(r) for r in res["rows"]) + "\n")
