"""The `wdistill` command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wdistill.config.schema import ConfigError


def _cmd_train(args, require_teacher: bool) -> int:
    from wdistill.engine import Trainer, load_config

    cfg = load_config(args.config, args.overrides)
    if getattr(args, "generations", None):  # born-again chain: wdistill.workflows.selfdistill
        from wdistill.workflows.selfdistill import run_generations
        summaries = run_generations(cfg, args.generations, resume=args.resume, overwrite=args.overwrite)
        print(json.dumps(summaries, indent=2))
        return 0
    if require_teacher and not cfg.teacher_sections():
        raise ConfigError("`wdistill distill` needs a 'teacher:' section (model + checkpoint); "
                          "to train without a teacher use `wdistill train`")
    trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite)
    summary = trainer.fit()
    if trainer.rank == 0:  # under torchrun, one summary, not one per process
        print(json.dumps(summary, indent=2))
    return 0


def _cmd_export(args) -> int:
    from wdistill.engine.checkpoint import atomic_save, load

    run = Path(args.run_dir)
    state = load(run / f"{args.which}.pt", what="run checkpoint")
    if not isinstance(state.get("distiller"), dict) or "arch" not in state:
        raise ConfigError(f"{run / f'{args.which}.pt'} is not a run checkpoint written by wdistill (no distiller "
                          "state): export takes a run directory")
    prefix = "student."
    model = {k[len(prefix):]: v for k, v in state["distiller"].items() if k.startswith(prefix)}
    cfg = state["config"]
    out = Path(args.output or run / f"student_{args.which}.pt")
    atomic_save({"model": model, "arch": state["arch"], "taps": cfg["student"].get("taps"),
                 "kwargs": cfg["student"].get("kwargs") or {}, "data": cfg.get("data"),  # eval's defaults
                 "view": cfg["student"].get("view"),  # eval scores the student on its own view
                 "metrics": state["history"][-1] if state["history"] else {}}, out)
    print(f"wrote {out} ({len(model)} tensors, arch {state['arch']})")
    return 0


def _cmd_cost_matrix(args) -> int:
    import torch

    from wdistill.data.build import build_loaders
    from wdistill.engine.checkpoint import atomic_save
    from wdistill.engine.build import build_model, resolve_device
    from wdistill.losses.wkd.cost import build_cost_matrix, teacher_checksum
    from wdistill.models import FeatureTap
    from wdistill.engine import load_config

    cfg = load_config(args.config, args.overrides)
    sections = cfg.teacher_sections()
    if len(sections) != 1:
        raise ConfigError("cost-matrix needs exactly one 'teacher:' section (model + checkpoint) in the config")
    device = resolve_device(cfg.run.device)
    data = build_loaders(cfg.data, seed=cfg.run.seed, device=device)  # memory or streaming, as training
    teacher = build_model(sections[0], data.num_classes, data.channels, "teacher").to(device).eval()
    tap = FeatureTap(teacher, sections[0].taps)
    cost = build_cost_matrix(tap, data.plain_batches(), data.num_classes, kappa=args.kappa, mode=args.mode,
                             max_per_class=args.max_per_class).cpu()
    out = args.output or f"wkd_cost_{sections[0].model}_{teacher_checksum(teacher)[:12]}_{args.mode}_k{args.kappa:g}.pt"
    atomic_save(cost, out)
    off = cost[~torch.eye(len(cost), dtype=torch.bool)]
    print(f"wrote {out}: ({len(cost)}, {len(cost)}) cost, off-diagonal min {off.min():.4f} "
          f"mean {off.mean():.4f} max {off.max():.4f}; use it with `cost: {out}` in a wkd_l term")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wdistill", description="Knowledge distillation built around optimal transport.")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    for name, helptext in (("train", "train a model with the configured loss (a teacher or a vanilla student)"),
                           ("distill", "distill a student from a teacher (config needs a teacher section)")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("config", help="YAML run config, or a shipped preset name (`wdistill list --presets`)")
        s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.1 loss.1.T=2")
        s.add_argument("--resume", action="store_true", help="continue the run in run.out_dir/run.name")
        s.add_argument("--overwrite", action="store_true", help="start again over an existing run directory")
        if name == "distill":
            s.add_argument("--generations", type=positive_int, default=None, metavar="N",
                           help="self-distillation: N born-again generations in run.out_dir/run.name/gen<k>, "
                                "each distilled from the previous generation's student (gen1 from the config's "
                                "teacher, or a cross-entropy run without one); --resume continues the chain")
        s.set_defaults(func=lambda a, n=name: _cmd_train(a, require_teacher=(n == "distill")))

    from wdistill.cli_front import add_eval_parser  # eval reads every file a run writes
    add_eval_parser(sub)

    from wdistill.workflows.probe import add_probe_parser  # linear probe / fine-tuning of a run's student (CRD Figure 3)
    add_probe_parser(sub)

    s = sub.add_parser("export", help="write the student-only weights of a run")
    s.add_argument("run_dir")
    s.add_argument("--which", choices=["best", "last"], default="best")
    s.add_argument("-o", "--output", default=None)
    s.set_defaults(func=_cmd_export)

    from wdistill.cli_front import add_demo_parser  # quick demo with the shipped teacher; --full
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

    from wdistill.cli_front import add_config_parser, add_list_parser  # config show/check/reference, list
    add_config_parser(sub)
    add_list_parser(sub)

    from wdistill.cli_models import add_parsers as add_model_parsers  # `inspect` and `teachers`
    add_model_parsers(sub)

    from benchtools.__main__ import add_parsers as add_bench_parsers  # `bench` and `plot`
    add_bench_parsers(sub)
    return p


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 internal error, 2 bad input (config, file, argument), 3 the loss
    became non-finite, 130 interrupted. Errors are one paragraph; ``--debug`` (or
    WDISTILL_DEBUG=1) adds the traceback."""
    import os

    from wdistill.io import FileLoadError
    from wdistill.engine.loop import NonFiniteLoss

    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("WDISTILL_DEBUG") == "1"
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted: every finished epoch is saved; continue with the same command and --resume",
              file=sys.stderr)
        return 130
    except NonFiniteLoss as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ConfigError, FileLoadError, FileNotFoundError, ValueError) as e:  # bad input: message, no traceback
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug of ours: still one paragraph, the traceback on request
        if debug:
            raise
        print(f"internal error: {type(e).__name__}: {e}. This is a wdistill bug; run again with --debug for the "
              "traceback and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
