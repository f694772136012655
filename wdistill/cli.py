"""The `wdistill` command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .engine.config import ConfigError


def _cmd_train(args, require_teacher: bool) -> int:
    from .engine import Trainer, load_config

    cfg = load_config(args.config, args.overrides)
    if require_teacher and not cfg.teacher_sections():
        raise ConfigError("`wdistill distill` needs a 'teacher:' section (model + checkpoint); "
                          "to train without a teacher use `wdistill train`")
    summary = Trainer(cfg, resume=args.resume, overwrite=args.overwrite).fit()
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_export(args) -> int:
    from .engine.checkpoint import atomic_save, load

    run = Path(args.run_dir)
    state = load(run / f"{args.which}.pt")
    prefix = "student."
    model = {k[len(prefix):]: v for k, v in state["distiller"].items() if k.startswith(prefix)}
    cfg = state["config"]
    out = Path(args.output or run / f"student_{args.which}.pt")
    atomic_save({"model": model, "arch": state["arch"], "taps": cfg["student"].get("taps"),
                 "kwargs": cfg["student"].get("kwargs") or {}, "data": cfg.get("data"),  # eval's defaults
                 "metrics": state["history"][-1] if state["history"] else {}}, out)
    print(f"wrote {out} ({len(model)} tensors, arch {state['arch']})")
    return 0


def _cmd_cost_matrix(args) -> int:
    import torch

    from .data import BatchLoader
    from .engine.checkpoint import atomic_save
    from .engine.trainer import build_model, load_data, resolve_device
    from .losses.wkd_cost import build_cost_matrix, teacher_checksum
    from .models import FeatureTap
    from .engine import load_config

    cfg = load_config(args.config, args.overrides)
    sections = cfg.teacher_sections()
    if len(sections) != 1:
        raise ConfigError("cost-matrix needs exactly one 'teacher:' section (model + checkpoint) in the config")
    train, _ = load_data(cfg)
    device = resolve_device(cfg.run.device)
    teacher = build_model(sections[0], train.num_classes, train.channels, "teacher").to(device).eval()
    tap = FeatureTap(teacher, sections[0].taps)
    batches = BatchLoader(train, cfg.data.eval_batch_size, False, device, **cfg.data.crop_kwargs())
    cost = build_cost_matrix(tap, batches, train.num_classes, kappa=args.kappa, mode=args.mode,
                             max_per_class=args.max_per_class).cpu()
    out = args.output or f"wkd_cost_{sections[0].model}_{teacher_checksum(teacher)[:12]}_{args.mode}_k{args.kappa:g}.pt"
    atomic_save(cost, out)
    off = cost[~torch.eye(len(cost), dtype=torch.bool)]
    print(f"wrote {out}: ({len(cost)}, {len(cost)}) cost, off-diagonal min {off.min():.4f} "
          f"mean {off.mean():.4f} max {off.max():.4f}; use it with `cost: {out}` in a wkd_l term")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wdistill", description="Knowledge distillation built around optimal transport.")
    sub = p.add_subparsers(dest="command", required=True)

    for name, helptext in (("train", "train a model with the configured loss (a teacher or a vanilla student)"),
                           ("distill", "distill a student from a teacher (config needs a teacher section)")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("config", help="YAML run config")
        s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.1 loss.1.T=2")
        s.add_argument("--resume", action="store_true", help="continue the run in run.out_dir/run.name")
        s.add_argument("--overwrite", action="store_true", help="start again over an existing run directory")
        s.set_defaults(func=lambda a, n=name: _cmd_train(a, require_teacher=(n == "distill")))

    from .cli_front import add_eval_parser  # eval reads every file a run writes
    add_eval_parser(sub)

    s = sub.add_parser("export", help="write the student-only weights of a run")
    s.add_argument("run_dir")
    s.add_argument("--which", choices=["best", "last"], default="best")
    s.add_argument("-o", "--output", default=None)
    s.set_defaults(func=_cmd_export)

    from .cli_front import add_demo_parser  # quick demo with the shipped teacher; --full
    add_demo_parser(sub)

    s = sub.add_parser("cost-matrix", help="build the WKD-L category cost from a trained teacher")
    s.add_argument("config", help="a run config with a teacher section and the training data")
    s.add_argument("overrides", nargs="*", help="key=value overrides")
    s.add_argument("--mode", choices=["features", "logits"], default="features",
                   help="class-conditional last-stage features (CIFAR-like) or logits (ImageNet-like)")
    s.add_argument("--kappa", type=float, default=1.0, help="sharpening: c = 1 - exp(-kappa (1 - CKA))")
    s.add_argument("--max-per-class", type=int, default=None, help="cap the images per class")
    s.add_argument("-o", "--output", default=None)
    s.set_defaults(func=_cmd_cost_matrix)

    from .cli_front import add_config_parser, add_list_parser  # config show/check/reference, list
    add_config_parser(sub)
    add_list_parser(sub)

    from .bench.cli import add_parsers as add_bench_parsers  # `bench` and `plot`
    add_bench_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:  # bad input: message, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
