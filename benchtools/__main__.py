"""``python -m benchtools accuracy|settings|speed|diagnostics|auto|detection``: the project's benchmarks (protocols:
docs/benchmarks.md), run from a wdistill checkout; they write their results into ``benchmarks/``."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from benchtools.gpu_args import add_gpu_parser
from wdistill.errors import ConfigError, FileLoadError

# Each command imports its benchmark (and torch) when it runs, not here: `--help` and argument
# errors answer at once instead of after loading torch and the library.


def _command() -> list[str]:
    """This command line, as the results files record it."""
    return ["python", "-m", "benchtools"] + sys.argv[1:]


def _threads(n: int | None) -> None:
    if n:
        import torch
        torch.set_num_threads(n)


def _cmd_accuracy(args) -> int:
    from benchtools.accuracy import run_accuracy, run_tuning
    from benchtools.protocol import FULL, QUICK
    from benchtools.tuning import PRIORITY
    from wdistill.losses.recipes import RECIPES

    _threads(args.threads)
    command = _command()
    if args.tune:
        methods = args.methods.split(",") if args.methods else PRIORITY
        choices = run_tuning(methods, args.runs, args.out, args.root)
        for m, c in choices.items():
            print(f"{m}: chose candidate {c['candidate']} ({c['tried'][c['candidate']]['settings']})")
        return 0
    schedule = QUICK if args.quick else FULL
    if args.merge:
        from benchtools.accuracy_report import merge_results

        missing = [p for p in args.merge + (args.replace or []) if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"--merge: no such results file(s): {', '.join(missing)}")
        table = merge_results(args.merge, schedule, args.out, command, replace=args.replace)
        for r in table:
            print(f"{r['method']:>10s} {r['final_mean']:6.2f} (n={r['n']})")
        print(f"wrote {Path(args.out) / schedule.name}.md/.csv/.png")
        return 0
    methods = args.methods.split(",") if args.methods else [m for m in RECIPES if m != "vanilla"]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    table = run_accuracy(schedule, methods, seeds, args.runs, args.out, args.root, command=command,
                         train=not args.report_only)
    for r in table:
        print(f"{r['method']:>10s} {r['final_mean']:6.2f} best {r['best_mean']:6.2f}")
    print(f"wrote {Path(args.out) / schedule.name}.md/.csv/.png")
    return 0


def _cmd_settings(args) -> int:
    from benchtools.settings import run_settings

    _threads(args.threads)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    table = run_settings(args.setting, seeds, args.runs, args.out, args.root, command=_command(),
                         train=not args.report_only, finetune_epochs=args.finetune)
    for r in table:
        probe = "" if r.get("probe_mean") is None else f" probe {r['probe_mean']:6.2f}"
        print(f"{r['method']:>22s} {r['final_mean']:6.2f} (n={r['n']}){probe}")
    print(f"wrote {Path(args.out) / 'fmnist-settings-v1'}-{args.setting}.md/.csv/.png")
    return 0


def _cmd_speed(args) -> int:
    from benchtools.speed import SpeedSetup
    from benchtools.speed_report import misses, run_speed

    _threads(args.threads)
    methods = args.methods.split(",") if args.methods else None
    setup = replace(SpeedSetup(), steps=args.steps, warmup=args.warmup)
    res = run_speed(args.out, methods, setup, command=_command())
    for r in res["rows"]:
        print(f"{r['method']:>10s} {1e3 * r['step_s']:8.0f} ms  ratio {r['ratio']:.2f}")
    for m in misses(res):
        print("missed: " + m)
    print(f"wrote {Path(args.out) / 'speed.md'} and speed.csv")
    return 0


def _cmd_diagnostics(args) -> int:
    from benchtools.diagnostics import run_diagnostics

    _threads(args.threads)
    for p in run_diagnostics(args.teacher, args.student, args.out, args.data, args.root, args.subset):
        print(f"wrote {p}")
    return 0


def _cmd_auto(args) -> int:
    from benchtools.auto import run_auto_bench  # per-command import: keeps `--help` fast

    _threads(args.threads)
    result = run_auto_bench(args.runs, args.out, args.root, args.seeds, _command())
    print(f"chose {result['recommended']['label']}; test top-1 per seed: "
          + ", ".join(f"{t['test_top1']:.2f}" for t in result["trained"]))
    return 0


def _cmd_detection(args) -> int:
    from benchtools.det_protocol import REPORT, SEEDS
    from benchtools.det_report import console_line
    from benchtools.detection import calibrate, run_detection

    _threads(args.threads)
    methods = args.methods.split(",") if args.methods else None
    if args.calibrate:
        for m, w in calibrate(args.runs, args.out, args.root, methods=methods).items():
            print(f"{m:>8s} {w}")
        return 0
    if args.merge:
        from benchtools.det_merge import merge_results

        merge_results(args.merge, args.out, command=_command())
        print(f"pooled {len(args.merge)} results files into {Path(args.out) / REPORT}.md/.csv/.png")
        return 0
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(SEEDS)
    if args.diagnostics:
        from benchtools.detection import run_detection_diagnostics

        for r in run_detection_diagnostics(args.runs, args.out, args.root, seeds, _command(), not args.report_only,
                                           methods):
            print(console_line(r["name"], r))
        print(f"wrote {Path(args.out) / REPORT}-diagnostics.md")
        return 0
    table = run_detection(args.runs, args.out, args.root, seeds, methods, _command(), train=not args.report_only)
    for r in table:
        print(console_line(r["method"], r))
    print(f"wrote {Path(args.out) / REPORT}.md/.csv/.png")
    return 0


def _cmd_gpu(args) -> int:
    from benchtools.gpu import GpuSetup  # per-command imports: keeps `--help` fast
    from benchtools.gpu_report import run_gpu

    _threads(args.threads)
    if args.official:  # a wrong path or a missing yacs is said now, not after minutes of measuring
        from benchtools.official import check_official
        check_official(args.official)
    setup = GpuSetup(args.device, args.quick, tuple(args.batches), args.steps, args.warmup)
    if args.quick:
        setup = GpuSetup(args.device, True, (8,), min(args.steps, 3), min(args.warmup, 1))
    res = run_gpu(setup, args.out, args.compile, args.ddp, args.e2e, _command(),
                  official=args.official, official_workers=args.official_workers, detection=args.detection,
                  resume=args.resume, budget_s=args.budget_s)
    bad = [r["method"] for r in res["parity"] if not r["ok"]] + [r["solver"] for r in res["solvers"] if not r["ok"]]
    print(f"wrote {args.out}/gpu.md; parity misses: {', '.join(bad) or 'none'}")
    for e in res["errors"]:
        print(f"error: {e['error']}", file=sys.stderr)
    if res.get("pending"):
        print(f"stopped at the time budget with {len(res['pending'])} items left: the same command with "
              f"--resume {args.out} goes on", file=sys.stderr)
        return 3
    return 1 if res["errors"] else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchtools", description=__doc__)
    bs = p.add_subparsers(dest="bench_command", required=True)
    _add_accuracy(bs)
    _add_settings(bs)
    _add_speed(bs)
    _add_diagnostics(bs)
    _add_auto(bs)
    _add_detection(bs)
    add_gpu_parser(bs, _cmd_gpu)
    return p


def _add_run_dirs(p: argparse.ArgumentParser) -> None:
    """Where results and run directories go, the data, and the threads: shared by accuracy and settings."""
    p.add_argument("--out", default="benchmarks", help="where the results files go")
    p.add_argument("--runs", default="runs/bench", help="where the run directories go (resumable)")
    p.add_argument("--root", default=None, help="Fashion-MNIST directory (default: Debian's, or download)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")


def _add_accuracy(bs) -> None:
    a = bs.add_parser("accuracy", help="FMNIST-KD v1: teacher, vanilla and every method; results in --out")
    a.add_argument("--quick", action="store_true", help="first 5,000 images, 6 epochs, seed 0")
    a.add_argument("--seeds", default=None, help="comma-separated, default 0,1,2 (quick: 0)")
    a.add_argument("--methods", default=None, help="comma-separated subset, e.g. kd,wkd_l")
    a.add_argument("--tune", action="store_true",
                   help="tune each method on the validation split (quick schedule, seed 0); writes configs/fmnist")
    a.add_argument("--report-only", action="store_true",
                   help="train nothing: write the results files from the runs finished so far")
    a.add_argument("--merge", nargs="+", default=None, metavar="CSV",
                   help="train nothing: pool results CSVs of disjoint seeds into one results file")
    a.add_argument("--replace", nargs="+", default=None, metavar="CSV",
                   help="with --merge: results CSVs of a re-run whose methods replace those rows")
    _add_run_dirs(a)
    a.set_defaults(func=_cmd_accuracy)


def _add_settings(bs) -> None:
    st = bs.add_parser("settings", help="protocol C (docs/benchmarks.md): ensembles, privileged information, "
                                        "cross-modal, self-distillation on FMNIST-KD v1; results in --out")
    st.add_argument("--setting", required=True, choices=["ensemble", "privileged", "crossmodal", "selfdistill"])
    st.add_argument("--seeds", default=None, help="comma-separated, default 0,1,2")
    st.add_argument("--report-only", action="store_true", help="train nothing: report the runs finished so far")
    st.add_argument("--finetune", type=int, default=0, metavar="N",
                    help="view settings: also fine-tune each student by CE for N epochs (CRD Figure 3); default 0, off")
    _add_run_dirs(st)
    st.set_defaults(func=_cmd_settings)


def _add_speed(bs) -> None:
    s = bs.add_parser("speed", help="step time per method, OT kernels, CRD scoring, augmentation")
    s.add_argument("--out", default="benchmarks")
    s.add_argument("--methods", default=None, help="comma-separated subset")
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--warmup", type=int, default=3)
    s.add_argument("--threads", type=int, default=None)
    s.set_defaults(func=_cmd_speed)


def _add_diagnostics(bs) -> None:
    d = bs.add_parser("diagnostics", help="class-correlation difference (CRD fig. 2) and WKD-L cost heatmaps")
    d.add_argument("teacher", help="teacher checkpoint (a run's student.pt)")
    d.add_argument("student", help="student checkpoint")
    d.add_argument("--data", default="fashion_mnist")
    d.add_argument("--root", default=None)
    d.add_argument("--subset", type=int, default=2000, help="test images used (first N)")
    d.add_argument("--out", default="benchmarks/diagnostics")
    d.add_argument("--threads", type=int, default=None)
    d.set_defaults(func=_cmd_diagnostics)


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark command; errors of the library print like the wdistill CLI's."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileLoadError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _add_auto(bs) -> None:
    s = bs.add_parser("auto", help="protocol E: `wdistill auto` on FMNIST-KD v1 within a third of protocol A's "
                                   "compute, then the choice trained for 3 seeds and tested")
    s.add_argument("--seeds", type=int, default=3, help="seeds of the final training of the recommended recipe")
    _add_run_dirs(s)
    s.set_defaults(func=_cmd_auto)


def _add_detection(bs) -> None:
    s = bs.add_parser("detection", help="protocol D: FMNIST-Det v1, Faster R-CNN distillation (R50-FPN -> R18-FPN), "
                                        "7 rows x 3 seeds, AP/AP50/AP75 and the overhead per step; needs torchvision "
                                        "and pycocotools")
    s.add_argument("--seeds", default=None, help="comma-separated, default 0,1,2")
    s.add_argument("--methods", default=None, help="comma-separated subset of the rows, e.g. vanilla,kd,wkd_l (with "
                                                  "--diagnostics: of the diagnostic runs, e.g. wkd_l-lambda0)")
    s.add_argument("--report-only", action="store_true", help="train nothing: report the runs finished so far")
    s.add_argument("--merge", nargs="+", default=None, metavar="CSV",
                   help="train nothing: pool results CSVs of disjoint seeds (same teacher) into one results file")
    s.add_argument("--calibrate", action="store_true", help="measure the terms' gradient norms at the start of "
                                                            "training (the rule that sets the benchmark's weights)")
    s.add_argument("--diagnostics", action="store_true", help="WKD-L's diagnostic runs (each of its parts alone, the "
                                                              "whole at half weight) beside the vanilla and WKD-L rows")
    _add_run_dirs(s)
    s.set_defaults(func=_cmd_detection)


if __name__ == "__main__":
    sys.exit(main())
