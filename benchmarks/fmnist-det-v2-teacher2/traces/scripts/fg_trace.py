"""One-off: step_trace of a WKD-L detection run with the Wasserstein part on the object RoIs only (the target part
on all RoIs, as published; the Wasserstein part's mean over the object RoIs): does the classifier's weight growth
go with the background RoIs? One-off analysis behind the diagnostics notes (2026-12-06).

    PYTHONPATH=. python benchmarks/fmnist-det-v2-teacher2/traces/scripts/fg_trace.py RUN_DIR STEPS OUT.jsonl
"""
import sys
from pathlib import Path

import torch
import yaml

from benchtools import step_trace as st
from wdistill.losses.wkd import wkd_l as W

orig = W.wkd_l_parts
def fg_only(s_logits, t_logits, target, cost, tau, *args, **kw):
    loss_t, _ = orig(s_logits, t_logits, target, cost, tau, *args, **kw)
    fg = target != 0
    _, wd = orig(s_logits[fg], t_logits[fg], target[fg], cost, tau, *args, **kw)
    return loss_t, wd
W.wkd_l_parts = fg_only

torch.set_num_threads(1)
raw = yaml.safe_load((Path(sys.argv[1]) / "config.yaml").read_text())
res = st.trace(raw, int(sys.argv[2]), watch=["roi_heads.box_head", "roi_heads.box_predictor.cls_score"])
st.write(res, sys.argv[3])
print(st.summary(res["rows"], 10))
