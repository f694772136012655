"""One-off: step_trace of a detection run with a stronger weight decay on the RoI classifier (``cls_score``) alone,
every other parameter at the run's own: does holding back the classifier's weight growth stop WKD-L's runaway?
One-off analysis behind the diagnostics notes (2026-12-06, fourth).

    PYTHONPATH=. python benchmarks/fmnist-det-v2-teacher2/traces/scripts/cls_wd_trace.py RUN_DIR STEPS WD OUT.jsonl
"""
import json
import sys
from pathlib import Path

import torch
import yaml

from benchtools import step_trace as st
from wdistill.engine.trainer import Trainer

CLS = "roi_heads.box_predictor.cls_score"
wd = float(sys.argv[3])
plain = Trainer.make_optimizer


def make_optimizer(self, params, lr):
    cls = {id(p) for p in self.distiller.student.get_submodule(CLS).parameters()}
    opt = plain(self, [p for p in params if id(p) not in cls], lr)
    opt.add_param_group({"params": [p for p in params if id(p) in cls], "weight_decay": wd})
    return opt


Trainer.make_optimizer = make_optimizer
torch.set_num_threads(1)
raw = yaml.safe_load((Path(sys.argv[1]) / "config.yaml").read_text())
res = st.trace(raw, int(sys.argv[2]), watch=["roi_heads.box_head", CLS])
lines = [json.dumps(r) for r in res["rows"]] + [json.dumps({"ended": res["ended"]})]
Path(sys.argv[4]).write_text("\n".join(lines) + "\n")
print(st.summary(res["rows"], 10))
print(st.sizes_summary(res["rows"], 10))
