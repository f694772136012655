"""Probe a method's weight on the FULL schedule, scored on the validation split (never the test set).

The tuning budget of FMNIST-KD v1 uses the quick schedule (5,000 images, 6 epochs). When a tuned
row still lands below the vanilla student on the full protocol, this asks whether the quick
schedule misjudged the weight: each setting is trained on the full schedule (10,000 images, 12
epochs, seed 0) and scored on training images 10,000..14,999, beside a vanilla run on the same
split. It is a diagnosis for the results file, outside the equal tuning budget: its outcome is
reported, not written into the presets.

    python benchtools/full_schedule_probe.py --threads 1 crd crd.weight=0.8 crd.weight=0.24 crd.weight=0.08

Runs go to runs/bench/fmnist-kd-v1-valfull/<method>-<setting>/seed0 and resume if interrupted.
"""
import argparse
import json

import torch
import yaml

from benchtools import protocol, tuning
from wdistill.config.presets import recipe
from wdistill.workflows import reuse as runs

PROBE = protocol.Schedule("fmnist-kd-v1-valfull", False, 12, "val", (0,))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("method")
    ap.add_argument("settings", nargs="+", help="term.param=value, one run each")
    ap.add_argument("--runs", default="runs/bench")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    jobs = [("vanilla", "vanilla", recipe("vanilla"))]
    for s in args.settings:
        key, _, value = s.partition("=")
        terms = tuning.apply_candidate(recipe(args.method), {key: yaml.safe_load(value)})
        jobs.append((s, f"{args.method}-{s}", terms))
    rows = []
    for label, name, terms in jobs:
        cfg = protocol.student_config(args.method if name != "vanilla" else "vanilla", terms, PROBE, 0, args.runs,
                                      run_name=f"{name}/seed0")
        summary = runs.run_or_load(cfg)
        last = [json.loads(line) for line in (runs.run_dir_of(cfg) / "metrics.jsonl").read_text().splitlines()][-1]
        rows.append((label, summary["final_top1"], last["train_top1"], last["train_ce"]))
    print("| setting | val top-1 (final) | train top-1 | train CE |\n|---|---:|---:|---:|")
    for label, val, train, ce in rows:
        print(f"| {label} | {val:.2f} | {train:.2f} | {ce:.3f} |")


if __name__ == "__main__":
    main()
