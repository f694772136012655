"""``wdistill eval``, ``probe``, ``export`` and ``cost-matrix``: commands that read what a run wrote."""
from __future__ import annotations

import argparse
import json

import torch

from wdistill.cli._args import add_config_args, positive_int
from wdistill.config import load_config
from wdistill.engine.rundir import WHICH
from wdistill.workflows import probe, score
from wdistill.workflows.cost_matrix import make_cost_matrix
from wdistill.workflows.export import export_run


def cmd_eval(args) -> int:
    print(json.dumps(score.score(args.checkpoint, args.which, args.data, args.root, args.model, args.subset,
                                 args.batch_size, args.center_crop, args.view, args.device), indent=2))
    return 0


def cmd_probe(args) -> int:
    print(json.dumps(probe.probe_run(args.run_dir, args.l2, args.which, args.device, not args.no_linear,
                                     args.finetune, args.lr, args.resume), indent=2))
    return 0


def cmd_export(args) -> int:
    out, record = export_run(args.run_dir, args.which, args.output)
    print(f"wrote {out} and {out.with_suffix('.safetensors').name} (arch {record['arch']})")
    return 0


def cmd_cost_matrix(args) -> int:
    out, cost = make_cost_matrix(load_config(args.config, args.overrides), args.mode, args.kappa,
                                 args.max_per_class, args.output)
    off = cost[~torch.eye(len(cost), dtype=torch.bool)]
    print(f"wrote {out}: ({len(cost)}, {len(cost)}) cost, off-diagonal min {off.min():.4f} "
          f"mean {off.mean():.4f} max {off.max():.4f}; use it with `cost: {out}` in a wkd_l term")
    return 0


def _add_eval(sub) -> None:
    s = sub.add_parser("eval", help="top-1/top-5 of a run or checkpoint on the test split of its own data",
                       description=score.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("checkpoint", help="a run directory, or student.pt / best.pt / last.pt / an exported "
                                      "or published checkpoint")
    s.add_argument("--which", choices=list(WHICH), default=None,
                   help="for a run directory: student.pt (default, the final epoch), best.pt or last.pt")
    s.add_argument("--data", default=None, help="data set name (default: the one the run recorded; "
                                                "required when the file records none)")
    s.add_argument("--root", default=None, help="data directory (default: the recorded one)")
    s.add_argument("--model", default=None, help="architecture, if the checkpoint does not record it")
    s.add_argument("--subset", type=positive_int, default=None, help="evaluate on the first N test images only")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument(
        "--center-crop",
        type=int,
        default=None,
        help="evaluate on the centre NxN crop (the ImageNet recipe: images stored at 256, --center-crop 224)",
    )
    s.add_argument(
        "--view",
        default=None,
        choices=score.VIEWS,
        help="score on this view (default parameters) instead of the student view the run recorded",
    )
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_eval)


def _add_probe(sub) -> None:
    s = sub.add_parser(
        "probe",
        help="linear probe (and --finetune) of a run's student embedding, written to RUN_DIR/probe.json",
        description=probe.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("run_dir", help="a run directory written by `wdistill train/distill`")
    s.add_argument("--l2", type=float, default=1e-4, help="L2 penalty of the probe's weights (default 1e-4)")
    s.add_argument(
        "--which",
        choices=list(WHICH),
        default=None,
        help="which weights of the run (default student.pt, the final epoch)",
    )
    s.add_argument(
        "--finetune",
        type=positive_int,
        default=None,
        metavar="N",
        help="also fine-tune the whole student by cross-entropy for N epochs (RUN_DIR/finetune)",
    )
    s.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (cosine schedule)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted fine-tuning run")
    s.add_argument("--no-linear", action="store_true", help="skip the linear probe (with --finetune)")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_probe)


def add_parsers(sub) -> None:
    _add_eval(sub)
    _add_probe(sub)
    s = sub.add_parser("export", help="write the student-only weights of a run (.pt and .safetensors)")
    s.add_argument("run_dir")
    s.add_argument("--which", choices=["best", "last"], default="best")
    s.add_argument("-o", "--output", default=None,
                   help="a file, or a directory to hold student_<which>.pt (default: RUN_DIR)")
    s.set_defaults(func=cmd_export)
    s = sub.add_parser("cost-matrix", help="build the WKD-L category cost from a trained teacher")
    add_config_args(s, "a run config with a teacher section and the training data")
    s.add_argument(
        "--mode",
        choices=["features", "logits"],
        default="features",
        help="class-conditional last-stage features (CIFAR-like) or logits (ImageNet-like)",
    )
    s.add_argument("--kappa", type=float, default=1.0, help="sharpening: c = 1 - exp(-kappa (1 - CKA))")
    s.add_argument("--max-per-class", type=int, default=None, help="cap the images per class")
    s.add_argument("-o", "--output", default=None)
    s.set_defaults(func=cmd_cost_matrix)
