"""One-off: a whole protocol-D student run (400 steps, scored on the test canvases) with a stronger weight decay on
the RoI classifier (``cls_score``) alone, every other parameter at the row's own 1e-4: does holding back the
classifier's weight growth keep WKD-L at its rule's weight stable, and what does it cost vanilla? The run directory
is diag/<ROW>-clswd<WD>/seed<SEED>; its config.yaml is the row's, so the change is written beside it (CHANGE.txt).
One-off analysis behind the diagnostics notes (2026-12-06, fourth).

    PYTHONPATH=. python benchmarks/fmnist-det-v2-teacher2/traces/scripts/cls_wd_run.py RUNS_ROOT ROW SEED WD
"""
import json
import sys
from pathlib import Path

import torch

from benchtools import det_protocol as P
from benchtools.runs import run_or_report
from wdistill.engine.trainer import Trainer

CLS = "roi_heads.box_predictor.cls_score"
root, row, seed, wd = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
plain = Trainer.make_optimizer


def make_optimizer(self, params, lr):
    cls = {id(p) for p in self.distiller.student.get_submodule(CLS).parameters()}
    opt = plain(self, [p for p in params if id(p) not in cls], lr)
    opt.add_param_group({"params": [p for p in params if id(p) in cls], "weight_decay": wd})
    return opt


Trainer.make_optimizer = make_optimizer
torch.set_num_threads(1)
name = f"diag/{row}-clswd{wd:g}/seed{seed}"
cfg = P.student_config(row, seed, root, run_name=name)
out = Path(cfg["run"]["out_dir"]) / name
out.mkdir(parents=True, exist_ok=True)
(out / "CHANGE.txt").write_text(f"weight_decay {wd:g} on {CLS} (cls_wd_run.py); config.yaml is row {row}'s\n")
res = run_or_report(cfg)
print(json.dumps({k: res.get(k) for k in ("final_AP", "final_AP50", "final_AP75", "wall_seconds", "diverged")}))
