"""Protocol D's diagnostic runs reported (`python -m benchtools detection --diagnostics`): each run name's AP per
seed, its mean ± std and its gain over vanilla paired by seed, in ``out/<det_protocol.REPORT>-diagnostics.md``."""
from __future__ import annotations

from pathlib import Path

from benchtools import det_protocol as P
from benchtools import report
from benchtools.det_report import METRICS, paired, per_seed_text, pm, runs_cell, split_runs
from wdistill.io import atomic_write_text
from wdistill.losses.recipes import describe


def diagnostics_rows(results: dict) -> list[dict]:
    """One row per run name of ``results`` (as :func:`split_runs` reads them; vanilla first): its AP per seed, mean ±
    std of AP, AP50 and AP75, the seeds that diverged, and its gain over vanilla paired by seed (the same seed: the
    same initialisation and batch order), mean ± standard error over the seeds both finished. A run name whose
    every seed diverged has no metrics (None)."""
    ap, diverged = split_runs(results)
    order = [*P.ROWS, *P.DIAGNOSTICS]
    names = sorted(ap.keys() | diverged.keys(), key=lambda n: order.index(n) if n in order else len(order))
    rows = []
    for name in names:
        runs = ap.get(name, {})
        row = {"name": name, "seeds": sorted(runs), "per_seed": [100 * runs[s]["final_AP"] for s in sorted(runs)],
               "diverged": diverged.get(name, [])}
        for k in METRICS:
            values = [100 * r[f"final_{k}"] for _, r in sorted(runs.items())]
            row[k], row[f"{k}_std"] = report.mean_std(values) if values else (None, None)
        base = {} if name == "vanilla" else {s: 100 * r["final_AP"] for s, r in ap.get("vanilla", {}).items()}
        row["paired_gain"], row["paired_se"], row["paired_n"] = paired(dict(zip(row["seeds"], row["per_seed"])), base)
        rows.append(row)
    return rows


def write_diagnostics(results: dict, out, stamp: dict) -> list[dict]:
    """``out/<P.REPORT>-diagnostics.md``: the table of :func:`diagnostics_rows`, each run named by what it changes."""
    rows = diagnostics_rows(results)
    what = {r["name"]: f"the row: {describe(P.row_terms(r['name']))}" for r in rows if r["name"] in P.ROWS}
    what |= {n: d for n, (_, _, d) in P.DIAGNOSTICS.items()}
    lines = [f"# {P.REPORT}: why WKD-L fails a detector (diagnostic runs)", "",
             report.stamp_markdown(stamp),
             "Not rows of the protocol: a row with one change each (benchtools.det_protocol.DIAGNOSTICS), "
             "beside the vanilla and WKD-L rows at the same seeds and teacher. AP in % on the 1,000 test canvases; "
             "mean ± sample std over the seeds that finished (a run whose loss became non-finite is marked "
             "diverged and left out); the gain over vanilla is paired by seed (mean ± standard error of the "
             "per-seed differences).", "",
             "| run | what it is | AP per seed | AP | AP50 | AP75 | AP vs vanilla, paired | runs |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        gain = ("" if r["paired_gain"] is None else f"{r['paired_gain']:+.2f}" +
                ("" if r["paired_se"] is None else f" ± {r['paired_se']:.2f}") + f" ({r['paired_n']} seeds)")
        metrics = " | ".join(pm(r[k], r[f"{k}_std"]) for k in METRICS)
        lines.append(f"| {r['name']} | {what.get(r['name'], '')} | {per_seed_text(r)} | {metrics} | {gain} | "
                     f"{runs_cell(len(r['seeds']), r['diverged'])} |")
    notes = Path(out) / f"{P.REPORT}-diagnostics.notes.md"
    if notes.is_file():
        lines += ["", notes.read_text().strip()]
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text("\n".join(lines) + "\n", Path(out) / f"{P.REPORT}-diagnostics.md")
    return rows
