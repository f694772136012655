"""The results files of `python -m benchtools detection` (docs/benchmarks.md, protocol D):
``out/<det_protocol.REPORT>.md|csv|png`` from the finished runs' summaries, the teacher's and the step times."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from benchtools import det_protocol as P
from benchtools import report
from wdistill.io import atomic_write_text
from wdistill.losses.recipes import describe, detection_rows
from wdistill.workflows.plots import save_figure

METRICS = ("AP", "AP50", "AP75")
SIZES = ("APs", "APm")  # the size ranges the 96-px canvases hold (no box is large: APl is undefined)
LABELS = {p.method: p.label for p in detection_rows()}


def split_runs(results: dict) -> tuple[dict[str, dict[int, dict]], dict[str, list[int]]]:
    """(finished, diverged) of ``results`` ({(name, seed): a run's summary, a ``{"diverged": message}`` record of
    a run whose loss became non-finite, or None: not run}): {name: {seed: summary}} of the runs with an AP and
    {name: [seeds]} of the diverged runs, seeds in order."""
    finished: dict[str, dict[int, dict]] = {}
    diverged: dict[str, list[int]] = {}
    for (name, seed), summary in sorted(results.items(), key=lambda kv: kv[0][1]):
        if summary is not None and summary.get("final_AP") is not None:
            finished.setdefault(name, {})[seed] = summary
        elif summary is not None and "diverged" in summary:
            diverged.setdefault(name, []).append(seed)
    return finished, diverged


def summarise(results: dict, speed: dict[str, float]) -> list[dict]:
    """One row per method with finished or diverged runs (:func:`split_runs`): mean/std of AP, AP50, AP75 (x100)
    and APs/APm means over the finished runs, the seeds that diverged, the AP gain over vanilla, wall time per
    finished run, the step time and its ratio to vanilla's step. A row whose every run diverged has ``n`` 0 and
    no metrics."""
    finished, diverged = split_runs(results)
    rows = []
    for method in P.ROWS:
        if method not in finished and method not in diverged:
            continue
        runs = finished.get(method, {})
        row = {"method": method, "n": len(runs), "settings": describe(P.row_terms(method)), "seeds": list(runs),
               "diverged": diverged.get(method, [])}
        for k in METRICS + SIZES:  # None where the test canvases hold no box of that size range
            values = [100 * r[f"final_{k}"] for r in runs.values() if r.get(f"final_{k}") is not None]
            row[k], row[f"{k}_std"] = report.mean_std(values) if values else (None, None)
        row["wall_seconds"] = report.mean_std([r["wall_seconds"] for r in runs.values()])[0] if runs else None
        row["per_seed"] = [100 * r["final_AP"] for r in runs.values()]
        row["step_seconds"] = speed.get(method)
        rows.append(row)
    return relative_to_vanilla(rows)


def runs_cell(n: int, diverged: list[int]) -> str:
    """The table's runs column: the finished runs, and which seeds diverged (left out of the means)."""
    if not diverged:
        return str(n)
    return f"{n} (+{len(diverged)} diverged: {', '.join(f's{sd}' for sd in diverged)})"


def relative_to_vanilla(rows: list[dict]) -> list[dict]:
    """Each row's AP gain over vanilla and its step time as a ratio to vanilla's (None without vanilla)."""
    base = next((r for r in rows if r["method"] == "vanilla"), None)
    for r in rows:
        r["gain"] = None if base is None or r is base or None in (r["AP"], base["AP"]) else r["AP"] - base["AP"]
        r["overhead"] = (r["step_seconds"] / base["step_seconds"] if base and base.get("step_seconds")
                         and r.get("step_seconds") else None)
    return rows


def teacher_row(teacher_val: dict, teacher_test: dict) -> dict:
    """The teacher's line of the table in % (its test COCOeval and its validation AP; None for a size range
    without boxes)."""
    test = {k: teacher_test.get(k) for k in METRICS + SIZES}
    row = {k: None if v is None or v != v else 100 * v for k, v in test.items()}
    return row | {"val_AP": 100 * teacher_val["final_AP"]}


def per_seed_text(r: dict) -> str:
    """A row's AP per seed, then its seeds that diverged: ``36.00 (s0), diverged (s1)``."""
    return ", ".join([*(f"{x:.2f} (s{sd})" for sd, x in zip(r["seeds"], r["per_seed"])),
                      *(f"diverged (s{sd})" for sd in r["diverged"])])


def console_line(name: str, r: dict) -> str:
    """A row for the terminal: AP, AP50, AP75 (n/a when every seed diverged) and the AP per seed."""
    return f"{name:>14s} " + " ".join(f"{m} {pm(r[m], None):>6s}" for m in METRICS) + f" per seed {per_seed_text(r)}"


def pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def results_markdown(rows: list[dict], t: dict) -> str:
    lines = ["| row | AP | AP50 | AP75 | APs | APm | AP vs vanilla | s / step | step vs vanilla | runs | settings |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines.append(f"| teacher R50-FPN (2,000 steps; 1 run) | {pm(t['AP'], None)} | {pm(t['AP50'], None)} | "
                 f"{pm(t['AP75'], None)} | {pm(t['APs'], None)} | {pm(t['APm'], None)} | | | | 1 | "
                 f"val AP {t['val_AP']:.2f} |")
    for r in rows:
        gain = "" if r["gain"] is None else f"{r['gain']:+.2f}"
        step = "" if r["step_seconds"] is None else f"{r['step_seconds']:.2f}"
        ratio = "" if r["overhead"] is None else f"x{r['overhead']:.2f}"
        metrics = (f"{pm(r['AP'], r['AP_std'])} | {pm(r['AP50'], r['AP50_std'])} | {pm(r['AP75'], r['AP75_std'])} | "
                   f"{pm(r['APs'], None)} | {pm(r['APm'], None)}" if r["n"] else "diverged on every seed | | | |")
        lines.append(f"| {LABELS.get(r['method'], r['method'])} | {metrics} | {gain} | {step} | {ratio} | "
                     f"{runs_cell(r['n'], r['diverged'])} | {r['settings']} |")
    return "\n".join(lines) + "\n"


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float | None, float | None, int]:
    """(mean, standard error, n) of the differences a[seed] - b[seed] over the seeds both have: runs of one seed
    share their initialisation and batch order, so their difference leaves that out of the spread. (None, None, 0)
    without a common seed; the standard error is None for one."""
    diffs = [a[s] - b[s] for s in sorted(a) if s in b]
    if not diffs:
        return None, None, 0
    mean, std = report.mean_std(diffs)
    return mean, None if std is None else std / math.sqrt(len(diffs)), len(diffs)


def comparisons(rows: list[dict]) -> list[str]:
    """The WKD rows against KD and DKD (and vanilla), as differences of the AP means with the
    standard error of the difference (sample stds over seeds), and paired by seed (:func:`paired`) where the
    two rows share at least two seeds."""
    by = {r["method"]: r for r in rows if r["n"]}
    out = []
    for w in ("wkd_l", "wkd_f", "wkd_lf"):
        if w not in by:
            continue
        parts = []
        for other in ("vanilla", "kd", "dkd"):
            if other in by:
                a, b = by[w], by[other]
                if a["AP_std"] is None or b["AP_std"] is None:  # a single run has no spread to give an s.e.
                    parts.append(f"{a['AP'] - b['AP']:+.2f} AP vs {LABELS[other]} (no s.e.: a single run)")
                    continue
                se = math.sqrt(a["AP_std"] ** 2 / a["n"] + b["AP_std"] ** 2 / b["n"])
                d, pse, n = paired(dict(zip(a["seeds"], a["per_seed"])), dict(zip(b["seeds"], b["per_seed"])))
                by_seed = "" if pse is None else f"; paired by seed {d:+.2f} ± {pse:.2f} over {n}"
                parts.append(f"{a['AP'] - b['AP']:+.2f} AP vs {LABELS[other]} (± {se:.2f} s.e.{by_seed})")
        out.append(f"- {LABELS[w]}: " + "; ".join(parts))
    return out


COLUMNS = ["method", "runs", "seeds", "AP_mean", "AP_std", "AP50_mean", "AP50_std", "AP75_mean", "AP75_std",
           "APs_mean", "APm_mean", "gain_AP_vs_vanilla", "step_seconds", "step_vs_vanilla", "wall_seconds_per_run",
           "per_seed_AP", "settings", "diverged_seeds"]  # the last since 2026-12-06: older files lack it


def results_csv(rows: list[dict], teacher: dict, stamp: dict) -> str:
    """The table as CSV, the teacher first (its settings column holds its validation AP); with the seeds of
    each row, so that a later session can pool it with other seeds' results
    (:func:`benchtools.det_merge.merge_results`)."""
    buf = io.StringIO()
    for k, v in stamp.items():
        buf.write(f"# {k}: {v}\n")
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    f = lambda v, spec=".4f": "" if v is None else format(v, spec)  # noqa: E731
    w.writerow(["teacher", 1, "", f(teacher["AP"]), "", f(teacher["AP50"]), "", f(teacher["AP75"]), "",
                f(teacher["APs"]), f(teacher["APm"]), "", "", "", "", "", f"val AP {teacher['val_AP']:.4f}", ""])
    for r in rows:
        w.writerow([r["method"], r["n"], " ".join(map(str, r["seeds"])), f(r["AP"]), f(r["AP_std"]), f(r["AP50"]),
                    f(r["AP50_std"]), f(r["AP75"]), f(r["AP75_std"]), f(r["APs"]), f(r["APm"]), f(r["gain"]),
                    f(r["step_seconds"]), f(r["overhead"]), f(r["wall_seconds"], ".1f"),
                    " ".join(f"{x:.2f}" for x in r["per_seed"]), r["settings"], " ".join(map(str, r["diverged"]))])
    return buf.getvalue()


def chart(rows: list[dict], teacher: dict, path: Path, seeds) -> None:
    """AP, AP50, AP75 per row with a finished run (mean, error bar = sample std over seeds; the seeds that
    diverged under the row's name), the teacher's as dashed lines; beside it each row's step time as a ratio to
    the vanilla student's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12.5, 4.8), gridspec_kw={"width_ratios": [3, 1.25]})
    timed = [r for r in rows if r["overhead"] is not None]
    rows = [r for r in rows if r["n"]]
    names = [LABELS.get(r["method"], r["method"]) + (f"\n({len(r['diverged'])} diverged)" if r["diverged"] else "")
             for r in rows]
    width, colours = 0.27, ("#4C72B0", "#DD8452", "#55A868")
    for i, (k, c) in enumerate(zip(METRICS, colours)):
        xs = [j + (i - 1) * width for j in range(len(rows))]
        bars = ax.bar(xs, [r[k] for r in rows], width, yerr=[r[f"{k}_std"] or 0 for r in rows], capsize=2, color=c,
                      label=f"{k} (student)")
        ax.bar_label(bars, fmt="%.1f", fontsize=6.5, padding=3)
        ax.axhline(teacher[k], color=c, ls="--", lw=1, label=f"{k} of the R50-FPN teacher (1 run)")
    ax.set_xticks(range(len(rows)), names)
    top = max([teacher[k] for k in METRICS] + [r[k] + (r[f"{k}_std"] or 0) for r in rows for k in METRICS])
    ax.set_ylim(0, max(top, 1.0) * 1.18)
    ax.set_ylabel("COCO box AP on the 1,000 test canvases (%)")
    counts = sorted({r["n"] for r in rows})
    runs = f"{counts[0]} seed{'s' * (counts[0] != 1)}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} seeds"
    spread = f"mean ± std over {runs}" if counts[-1] > 1 else "one seed"
    ax.set_title(f"R18-FPN students, {P.STUDENT_EPOCHS * P.STUDENT_STEPS} steps each: {spread} "
                 f"(of {len(tuple(seeds))} planned; runs per row in the table)")
    ax.legend(ncol=2, fontsize=8, loc="upper left")
    bx.bar(range(len(timed)), [r["overhead"] for r in timed], color="#8172B2")
    bx.axhline(1.0, color="black", lw=0.8)
    bx.set_xticks(range(len(timed)), [LABELS.get(r["method"], r["method"]) for r in timed], rotation=45, ha="right")
    bx.set_ylabel("training step time / vanilla student's")
    bx.set_ylim(0, max([r["overhead"] for r in timed] + [1.0]) * 1.2)
    bx.set_title("distillation overhead per step")
    fig.suptitle(f"{P.REPORT} (Fashion-MNIST items on 96 px canvases): Faster R-CNN distillation, "
                 f"R50-FPN teacher -> R18-FPN students at lr {P.STUDENT_LR:g}")
    fig.tight_layout()
    save_figure(fig, Path(path), dpi=110)
    plt.close(fig)


def write_results(rows: list[dict], teacher: dict, out, stamp: dict, seeds) -> list[dict]:
    """``out/<P.REPORT>.md``, ``.csv`` and ``.png`` from the table's rows (:func:`summarise` or
    :func:`benchtools.det_merge.merge_results`) and the teacher's line (:func:`teacher_row`); returns the rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# {P.REPORT}: detection distillation on real-image canvases (protocol D)", "",
          report.stamp_markdown(stamp), *([f"Pooled from: {stamp['pooled from']}", ""] if "pooled from" in stamp
                                          else []),
          "Protocol: docs/benchmarks.md, section D. Sizing: the section below.", "",
          results_markdown(rows, teacher), "", "AP in %, COCOeval (pycocotools) on the 1,000 test "
          "canvases; mean ± sample std over seeds; APl is undefined (no box above 96 x 96 px). The step times are "
          "medians of interleaved training steps of every row, measured in one process (batch 8, one thread; "
          "what else held the machine then is in the notes).",
          "", "## The WKD rows against KD and DKD, as they came out", "", *comparisons(rows), "",
          "## Per-seed AP", "", *[f"- {LABELS[r['method']]}: {per_seed_text(r)}" for r in rows], "",
          *cost_lines([r for r in rows if r["n"]]), "", sizing_text()]
    notes = out / f"{P.REPORT}.notes.md"
    if notes.is_file():
        md += ["", notes.read_text().strip()]
    atomic_write_text("\n".join(md) + "\n", out / f"{P.REPORT}.md")
    atomic_write_text(results_csv(rows, teacher, stamp), out / f"{P.REPORT}.csv")
    if any(r["n"] for r in rows):
        chart(rows, teacher, out / f"{P.REPORT}.png", seeds)
    return rows


def cost_lines(rows: list[dict]) -> list[str]:
    """The measured wall time of the runs (one thread each; the machine's load is in the notes)."""
    if not rows:
        return []
    per = ", ".join(f"{LABELS.get(r['method'], r['method'])} {r['wall_seconds']:.0f} s" for r in rows)
    total = sum(r["wall_seconds"] * r["n"] for r in rows)
    return ["## Measured cost", "", f"Wall time per student run (training, its test evaluation and, for WKD-L, its "
            f"share of the cost pass; one thread): {per}. All student runs together: {total / 3600:.2f} hours of "
            "single-thread wall time (the teacher's is in its run directory)."]


def sizing_text() -> str:
    return P.SIZING


def write_calibration(ratios: dict[str, dict[str, float]], out, stamp: dict) -> None:
    """``out/fmnist-det-v1-calibration.md``: each term's gradient norm relative to det's, at the recipe weights."""
    lines = [f"# {P.NAME}: the distillation terms' strength at the start of training", "",
             report.stamp_markdown(stamp),
             "Gradient norm of each weighted term on the student, divided by that of the detector's own losses "
             "(`det`), averaged over the first 8 training batches; student at its seed-0 initialisation, the "
             "trained R50-FPN teacher, each row at its published detection recipe (wdistill.losses.recipes). "
             "No evaluation split is read. The benchmark's rule (docs/benchmarks.md, section D): every "
             "distillation term without a published detection setting gets the weight that gives it DKD's "
             "published ratio.", "", "| row | term | gradient norm / det's | recipe |", "|---|---|---:|---|"]
    for m, terms in ratios.items():
        for k, v in terms.items():
            lines.append(f"| {LABELS.get(m, m)} | {k} | {v:.4g} | {describe(P.recipe_terms(m))} |")
    atomic_write_text("\n".join(lines) + "\n", Path(out) / f"{P.NAME}-calibration.md")
