"""Step traces side by side: a watched module's parameter norm and largest output, step by step, one line per trace.

    python benchtools/trace_plot.py --module roi_heads.box_predictor.cls_score --out fig.png \\
        vanilla=traces/vanilla.jsonl "whole term=traces/wkd_l.jsonl" ...

Each trace is a file written by ``benchtools/step_trace.py --watch MODULE``, given as LABEL=PATH. A run that
diverged ends its line at its last finite step; values beyond ``--cap`` are left out so that a runaway does not
flatten the other lines (the chart says so). ``--at 0,30,70,99`` also prints a markdown table: per trace the
parameter norm at those steps and, over each span between two of them, the median gradient norm, the median
cosine of gradient and parameters, and the largest output entry.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from wdistill.workflows.plots import save_figure


def _rows(path: Path, module: str) -> dict[int, dict]:
    """The watched ``module``'s figures by step; an error naming the fix if a step did not watch it."""
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if "step" not in row:
            continue
        if module not in row.get("watch", {}):
            raise ValueError(f"{path}: step {row['step']} has no watched module {module!r}; trace it with "
                             f"benchtools/step_trace.py --watch {module}")
        out[row["step"]] = row["watch"][module]
    return out


def _sane(x: float | None, cap: float) -> bool:
    """A figure to show: present, finite and not beyond ``cap`` (past it, a runaway)."""
    return x is not None and math.isfinite(x) and abs(x) <= cap


def series(path: Path, module: str, key: str, cap: float) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` of ``module`` in a trace, finite values up to ``cap`` only."""
    kept = [(step, w.get(key)) for step, w in _rows(path, module).items() if _sane(w.get(key), cap)]
    return [step for step, _ in kept], [x for _, x in kept]


def table(traces: dict[str, Path], module: str, at: list[int], cap: float) -> str:
    """Markdown: per trace, the parameter norm at the steps ``at``, and over each span between two of them the
    median gradient norm, the median cosine of gradient and parameters, the largest output entry ("diverged"
    where a value is not finite or above ``cap``, "-" where the trace has no such figure)."""
    spans = list(zip(at, at[1:]))
    head = ["trace", "param norm at steps " + " / ".join(map(str, at))]
    head += [f"steps {a}-{b - 1}: grad, cos grad~param, max out" for a, b in spans]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]

    for label, path in traces.items():
        by = _rows(path, module)
        norms = []
        for s in at:
            x = by.get(s, {}).get("param_norm")
            norms.append("-" if s not in by else f"{x:.2f}" if _sane(x, cap) else "diverged")
        cells = [label, " / ".join(norms)]
        for a, b in spans:
            got = [by[s] for s in range(a, b) if s in by]
            if not got:
                cells.append("-")
                continue
            if not all(_sane(w["param_norm"], cap) and _sane(w["out_absmax"], cap) for w in got):
                cells.append("diverged")
                continue
            grads = [w["grad_norm"] for w in got if w.get("grad_norm") is not None]
            coss = [w["grad_cos_param"] for w in got if w.get("grad_cos_param") is not None]
            cells.append(", ".join([f"{statistics.median(grads):.2f}" if grads else "-",
                                    f"{statistics.median(coss):+.3f}" if coss else "-",
                                    f"{max(w['out_absmax'] for w in got):.0f}"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(traces: dict[str, Path], module: str, out: Path, title: str, cap: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (("param_norm", "its parameters' L2 norm", "weights"),
              ("out_absmax", "largest |entry| of its output", "outputs"))
    for ax, (key, ylabel, what) in zip(axes, panels):
        for label, path in traces.items():
            ax.plot(*series(path, module, key, cap), label=label, linewidth=1.4)
        ax.set_title(f"{module}: {what}", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title} (values above {cap:g} left out)" if title else f"values above {cap:g} left out")
    fig.tight_layout()
    save_figure(fig, Path(out), dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces", nargs="+", metavar="LABEL=PATH")
    ap.add_argument("--module", required=True, help="a module path the traces watched")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="")
    ap.add_argument("--cap", type=float, default=1000.0, help="leave out values above this (a runaway)")
    ap.add_argument("--at", default="", help="comma-separated steps: also print the table (see above)")
    args = ap.parse_args(argv)
    traces = {}
    for item in args.traces:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"{item!r}: give each trace as LABEL=PATH to a file written by step_trace.py")
        traces[label] = Path(path)
    try:
        plot(traces, args.module, Path(args.out), args.title, args.cap)
        if args.at:
            print(table(traces, args.module, [int(x) for x in args.at.split(",")], args.cap))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
