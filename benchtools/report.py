"""Results tables: per-row statistics over seeds, the stamp, markdown, CSV and the bar chart."""
from __future__ import annotations

import csv
import io
import math
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchtools import stamp as stamp_module


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1 in the denominator; None for a single value)."""
    if not values:
        raise ValueError("mean_std of no values")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def summarise(rows: dict[str, list[dict]], baseline: str = "vanilla") -> list[dict]:
    """One table row per method from its runs' summaries (``final_top1``, ``best_top1``,
    ``wall_seconds``): final mean/std, best-epoch mean, gain of the final mean over ``baseline``'s."""
    out = []
    for method, runs in rows.items():
        final_mean, final_std = mean_std([r["final_top1"] for r in runs])
        best_mean, _ = mean_std([r["best_top1"] for r in runs])
        wall, _ = mean_std([r["wall_seconds"] for r in runs])
        out.append({"method": method, "n": len(runs), "final_mean": final_mean, "final_std": final_std,
                    "best_mean": best_mean, "wall_seconds": wall, "seeds": [r.get("seed") for r in runs],
                    "threads": [r.get("threads") for r in runs]})
    base = next((r for r in out if r["method"] == baseline), None)
    for r in out:
        r["gain"] = (
            None if base is None or r["method"] in (baseline, "teacher") else r["final_mean"] - base["final_mean"]
        )
    return out


def stamp(device: str = "cpu", command: list[str] | None = None) -> dict:
    """Where and how a result was produced (docs/benchmarks.md: date, commit, torch, device, threads)."""
    git = stamp_module  # the commit, when run from a checkout (benchtools/)
    commit = git.git_commit() if git else "unknown (not run from a wdistill checkout)"
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "torch": torch.__version__,
        "device": device,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "command": shlex.join(command if command is not None else ["wdistill"] + sys.argv[1:]),
    }


def stamp_markdown(s: dict) -> str:
    return (
        f"Date {s['date']} · commit `{s['commit']}` · torch {s['torch']} · device {s['device']} "
        f"({s['cpus']} CPUs, {s['threads']} torch threads)\n\nCommand: `{s['command']}`\n"
    )


def _pm(mean: float, std: float | None, n: int) -> str:
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f} (n={n})"


def results_markdown(table: list[dict], labels: dict[str, str], settings: dict[str, str]) -> str:
    lines = [
        "| row | top-1 final (mean ± std) | top-1 best epoch (mean) | gain vs vanilla | wall s / run | runs "
        "| settings |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in table:
        gain = "" if r["gain"] is None else f"{r['gain']:+.2f}"
        lines.append(
            f"| {labels.get(r['method'], r['method'])} | {_pm(r['final_mean'], r['final_std'], r['n'])} | "
            f"{r['best_mean']:.2f} | {gain} | {r['wall_seconds']:.0f} | {r['n']} | "
            f"{settings.get(r['method'], '')} |"
        )
    return "\n".join(lines) + "\n"


def results_csv(table: list[dict], settings: dict[str, str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "method",
            "runs",
            "final_top1_mean",
            "final_top1_std",
            "best_top1_mean",
            "gain_vs_vanilla",
            "wall_seconds_per_run",
            "settings",
        ]
    )
    for r in table:
        w.writerow(
            [
                r["method"],
                r["n"],
                f"{r['final_mean']:.4f}",
                "" if r["final_std"] is None else f"{r['final_std']:.4f}",
                f"{r['best_mean']:.4f}",
                "" if r["gain"] is None else f"{r['gain']:.4f}",
                f"{r['wall_seconds']:.1f}",
                settings.get(r["method"], ""),
            ]
        )
    return buf.getvalue()


def bar_chart(table: list[dict], labels: dict[str, str], path: str | Path, title: str) -> None:
    """Final-epoch top-1 per row, error bars = sample std over seeds (none for single runs)."""
    from wdistill.workflows.plots import leaderboard_chart

    runs = sorted({r["n"] for r in table if r["method"] != "teacher"})
    seeds = "/".join(map(str, runs)) if runs else "?"
    teacher = next((r["n"] for r in table if r["method"] == "teacher"), None)
    note = f"Students: mean of {seeds} seeds, error bar = sample std over seeds" + (
        f"; teacher: {teacher} run{'s' if teacher != 1 else ''}, no error bar." if teacher else "."
    )
    rows = [
        {"name": labels.get(r["method"], r["method"]), "top1": r["final_mean"], "std": r["final_std"]} for r in table
    ]
    leaderboard_chart(rows, path, title, note)


def pool(groups: list[tuple[int, float, float | None]]) -> tuple[int, float, float | None]:
    """Count, mean and sample std of the union of groups given only as (n, mean, sample std):
    the within-group sums of squares plus the between-group term, as if from the raw values."""
    n = sum(g[0] for g in groups)
    if n == 0:
        raise ValueError("pool of no values")
    mean = sum(k * m for k, m, _ in groups) / n
    if n == 1:
        return n, mean, None
    ss = sum((k - 1) * (s or 0.0) ** 2 + k * (m - mean) ** 2 for k, m, s in groups)
    return n, mean, math.sqrt(ss / (n - 1))


def read_stamped_csv(path: str | Path) -> tuple[dict, csv.DictReader]:
    """A CSV with its ``# key: value`` stamp above the header: (stamp, a DictReader over the rows)."""
    lines = Path(path).read_text().splitlines()
    stamp_ = dict(line[2:].split(": ", 1) for line in lines if line.startswith("# ") and ": " in line)
    return stamp_, csv.DictReader([line for line in lines if not line.startswith("#")])


def read_results_csv(path: str | Path) -> tuple[dict, list[dict], dict[str, str]]:
    """A results CSV written by :func:`results_csv` with its ``# key: value`` stamp: (stamp, table, settings)."""
    stamp_, reader = read_stamped_csv(path)
    need = {"method", "runs", "final_top1_mean", "final_top1_std", "best_top1_mean", "wall_seconds_per_run"}
    if not need <= set(reader.fieldnames or []):
        raise ValueError(f"{path}: not a results CSV of `python -m benchtools accuracy` (columns {sorted(need)} "
                         "expected)")
    table, settings = [], {}
    for r in reader:
        table.append(
            {
                "method": r["method"],
                "n": int(r["runs"]),
                "final_mean": float(r["final_top1_mean"]),
                "final_std": float(r["final_top1_std"]) if r["final_top1_std"] else None,
                "best_mean": float(r["best_top1_mean"]),
                "wall_seconds": float(r["wall_seconds_per_run"]),
            }
        )
        settings[r["method"]] = r.get("settings", "")
    return stamp_, table, settings
