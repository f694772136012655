"""One-off: a detection run with a stronger weight decay on the RoI classifier (``cls_score``) alone, every other
parameter at the run's own 1e-4: does holding back the classifier's weight growth stop WKD-L's runaway, and what does
it cost vanilla? One-off analysis behind the diagnostics notes (2026-12-06, fourth), run with ``PYTHONPATH=.`` from a
checkout:

    python benchmarks/fmnist-det-v2-teacher2/traces/scripts/cls_wd.py trace RUN_DIR STEPS WD OUT.jsonl
        a step trace of RUN_DIR's config (benchtools/step_trace.py, watching the RoI head)
    python benchmarks/fmnist-det-v2-teacher2/traces/scripts/cls_wd.py run RUNS_ROOT ROW SEED WD
        a whole protocol-D student run under diag/<ROW>-clswd<WD>/seed<SEED>; its config.yaml is the row's, so the
        change is written beside it (CHANGE.txt)
"""
import json
import sys
from pathlib import Path

import torch
import yaml

from benchtools import det_protocol as P
from benchtools import step_trace as st
from benchtools.runs import run_or_report
from wdistill.engine.trainer import Trainer

CLS = "roi_heads.box_predictor.cls_score"


def decay_classifier(wd: float) -> None:
    """Every trainer built from now on gives the classifier's parameters an optimiser group of their own."""
    plain = Trainer.make_optimizer

    def make_optimizer(self, params, lr):
        cls = {id(p) for p in self.distiller.student.get_submodule(CLS).parameters()}
        opt = plain(self, [p for p in params if id(p) not in cls], lr)
        opt.add_param_group({"params": [p for p in params if id(p) in cls], "weight_decay": wd})
        return opt

    Trainer.make_optimizer = make_optimizer


def trace(run_dir: str, steps: str, wd: str, out: str) -> None:
    decay_classifier(float(wd))
    raw = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    res = st.trace(raw, int(steps), watch=["roi_heads.box_head", CLS])
    st.write(res, out)
    print(st.summary(res["rows"], 10))
    print(st.sizes_summary(res["rows"], 10))


def run(root: str, row: str, seed: str, wd: str) -> None:
    decay_classifier(float(wd))
    name = f"diag/{row}-clswd{float(wd):g}/seed{seed}"
    cfg = P.student_config(row, int(seed), root, run_name=name)
    out = Path(cfg["run"]["out_dir"]) / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "CHANGE.txt").write_text(f"weight_decay {wd} on {CLS} (cls_wd.py); config.yaml is row {row}'s\n")
    res = run_or_report(cfg)
    print(json.dumps({k: res.get(k) for k in ("final_AP", "final_AP50", "final_AP75", "wall_seconds", "diverged")}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"trace": trace, "run": run}[sys.argv[1]](*sys.argv[2:])
