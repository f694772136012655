"""``wdistill auto``: which recipe distils best for this teacher, student and data."""
from __future__ import annotations

import sys

from wdistill.cli._args import add_config_args
from wdistill.config import load_config
from wdistill.workflows.auto_report import auto_from_config


def cmd_auto(args) -> int:
    report = auto_from_config(load_config(args.config, args.overrides), args.train,
                              command=" ".join(["wdistill", *sys.argv[1:]]))
    best, root = report["recommended"], report["root"]
    say = {"beats vanilla": "beats the vanilla student beyond noise", "reference": "no recipe beat it beyond noise"}
    print(f"recommended: {best['label']}, held-out top-1 {best['mean']:.2f} "
          f"({say.get(best['verdict'], 'not beyond noise: ' + best['verdict'])}); {root}/report.md, "
          f"{root}/recommended.yaml")
    for t in report["trained"]:
        print(f"  trained on the whole training split, seed {t['seed']}: test top-1 {t['test_top1']:.2f}")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("auto", help="find the recipe that distils best for this teacher, student and data "
                                    "(successive halving on held-out training data; report + recommended config)",
                       description="Compares the vanilla student and the recipes of auto.methods, each with a small "
                                   "grid around its published setting, on auto.holdout of the training split (never "
                                   "the test split), within auto.budget student epochs; writes report.md/.png/.json "
                                   "and recommended.yaml in run.out_dir/run.name. The config's loss is ignored. "
                                   "Method and settings: docs/auto.md.")
    add_config_args(s, "YAML run config with the student, the teacher(s), the data, the schedule (optim) and "
                       "optionally an auto: section")
    s.add_argument("--train", type=int, default=0, metavar="SEEDS",
                   help="then train the recommended config on the whole training split for SEEDS seeds and score "
                        "it on the test split")
    s.set_defaults(func=cmd_auto)
