"""The results files of `python -m benchtools settings` (docs/benchmarks.md, protocol C):
``--out``/fmnist-settings-v1-<setting>.md/.csv/.png, with the findings that check the papers'
orderings against the table (the ensemble's CRD-vs-KD question by a paired t-test at 95%)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no global backend, works on a headless machine

from benchtools import report
from benchtools import settings_spec as spec
from wdistill.io import atomic_write_text
from wdistill.losses.recipes import LABELS
from wdistill.workflows.plots import save_figure

COMMON_TEXT = ("FMNIST-KD v1 data and splits (10,000 training images, the 10,000 test images), resnet8 students, "
               "12 epochs, SGD 0.05 cosine; each row's loss is the method's FMNIST preset (tuned in A). Mean ± sample "
               "std over seeds; the teacher row is one run.")
SETTING_TEXT = {
    "ensemble": "Ensembles (CRD Figure 4): 1, 2 and 4 resnet32 teachers (seeds 0..n-1, 30 epochs each). Logit terms "
                "read the teachers' mean distribution; CRD and WCoRD have one memory bank and head per teacher, "
                "weighted 1/n. The one-teacher rows and the vanilla row (no teacher) are A's students of the same "
                "method and seed (the same jobs). Counts are compared on paired seeds.",
    "privileged": "Privileged information (WCoRD): the teacher sees the full 28x28 image, the student the same "
                  "crop 2x average-pooled to 14x14, also at test time. Linear probe: L2 logistic regression "
                  f"(l2={spec.PROBE_L2:g}) on the frozen student embedding of the training images, scored on the "
                  "test set.",
    "crossmodal": "Cross-modal transfer (CRD Figure 3): the teacher is trained and run on the lowpass view (5x5 box "
                  "blur), the student sees the highpass view (image minus that blur), also at test time. Linear "
                  f"probe: L2 logistic regression (l2={spec.PROBE_L2:g}) on the frozen student embedding of the "
                  "training images, scored on the test set.",
    "selfdistill": "Self-distillation (WKD, born-again): the teacher is A's vanilla resnet8 (CE) of the same seed; "
                   "generation k+1 is distilled from generation k's student with the same method.",
}
CSV_COLUMNS = ["row", "runs", "final_top1_mean", "final_top1_std", "probe_top1_mean", "probe_top1_std",
               "finetune_top1_mean", "finetune_top1_std", "settings"]


def _label(row: str) -> str:
    head, _, tail = row.partition(" ")
    return f"{LABELS.get(head, head)} {tail}".strip()


def findings(setting: str, table: list[dict]) -> list[str]:
    """The papers' orderings, checked against the table (the reasons are the reader's to add)."""
    by = {r["method"]: r for r in table}
    if setting == "ensemble":
        return _ensemble_findings(table, by)
    if setting in spec.VIEWS:
        return _view_findings(by)
    return _selfdistill_findings(by)


def _ensemble_findings(table: list[dict], by: dict[str, dict]) -> list[str]:
    """The teachers' own top-1 per count, each method's gain from the fewest to the most teachers
    on paired seeds, and whether more teachers help CRD more than KD."""
    notes = []
    lo, hi = spec.ENSEMBLE_SIZES[0], spec.ENSEMBLE_SIZES[-1]
    tops = {
        n: next(
            (
                r["teacher_top1"]
                for r in table
                if r["method"].endswith(f" n={n}") and r.get("teacher_top1") is not None
            ),
            None,
        )
        for n in spec.ENSEMBLE_SIZES
    }
    if all(v is not None for v in tops.values()):  # what the students can gain: the teachers' own top-1
        notes.append(
            "The teachers' test top-1 (mean logits of the ensemble): "
            + ", ".join(f"{v:.2f} with {n}" for n, v in tops.items())
            + "."
        )
    gains = {}  # method -> {seed: top-1 with hi teachers - top-1 with lo teachers}
    for m in spec.ENSEMBLE_METHODS:
        a, b = by.get(f"{m} n={lo}"), by.get(f"{m} n={hi}")
        if a and b and (common := sorted(set(a["by_seed"]) & set(b["by_seed"]))):
            gains[m] = {s: b["by_seed"][s] - a["by_seed"][s] for s in common}
            mean, std = report.mean_std(list(gains[m].values()))
            spread = f" ± {std:.2f}" if len(common) > 1 else ""
            notes.append(
                f"{LABELS[m]}: {hi} teachers against {lo}, paired by seed: {mean:+.2f}{spread} "
                f"(seed{'s' * (len(common) > 1)} {_seeds(common)})."
            )
    if "crd" in gains and "kd" in gains:
        common = sorted(set(gains["crd"]) & set(gains["kd"]))
        notes.append(
            "More teachers help CRD more than KD (CRD Figure 4): "
            + _verdict([gains["crd"][s] - gains["kd"][s] for s in common], common)
        )
    return notes


def _view_findings(by: dict[str, dict]) -> list[str]:
    """WCoRD >= CRD > KD on the student's top-1, its linear probe and its fine-tune, where measured."""
    notes = []
    for key, what in (
        ("final_mean", "student top-1"),
        ("probe_mean", "linear probe"),
        ("finetune_mean", "fine-tuned top-1"),
    ):
        vals = {m: by[m][key] for m in ("kd", "crd", "wcord") if m in by and by[m].get(key) is not None}
        if len(vals) == 3:
            ok = vals["wcord"] >= vals["crd"] > vals["kd"]
            notes.append(
                f"WCoRD >= CRD > KD on {what}: {'yes' if ok else 'NO'} ("
                + ", ".join(f"{LABELS[m]} {v:.2f}" for m, v in vals.items())
                + ")."
            )
    return notes


def _selfdistill_findings(by: dict[str, dict]) -> list[str]:
    """Each method's top-1 by born-again generation."""
    notes = []
    for m in spec.SELF_METHODS:
        gens = [by.get(f"{m} gen{k}") for k in range(1, spec.GENERATIONS + 1)]
        if all(gens):
            notes.append(f"{LABELS[m]} by generation: " + ", ".join(f"{g['final_mean']:.2f}" for g in gens) + ".")
    return notes


def _seeds(seeds: list[int]) -> str:
    return ", ".join(map(str, seeds))


# Student's t, two-sided 95%: the 0.975 quantile for 1..10 degrees of freedom (beyond 10 the
# value for 10 is used, which is conservative: the quantile falls towards 1.96)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def _verdict(diffs: list[float], seeds: list[int]) -> str:
    """Is the mean of the paired differences ``diffs`` other than zero? A paired t-test at 95%
    (two-sided): yes or no only when |mean| / standard error passes Student's t quantile, which
    with 2 or 3 seeds asks for much more than two standard errors; otherwise not resolved."""
    if len(diffs) < 2:
        return (
            f"not resolved: one paired seed ({_seeds(seeds)}), the difference is {diffs[0]:+.2f}."
            if diffs
            else "not resolved: no seed has all four rows."
        )
    mean, std = report.mean_std(diffs)
    se, t = std / len(diffs) ** 0.5, T975[min(len(diffs) - 1, len(T975)) - 1]
    say = "yes" if mean > t * se else "NO, the opposite" if mean < -t * se else "not resolved, within noise"
    return (
        f"{say} (CRD's gain minus KD's, paired over seeds {_seeds(seeds)}: {mean:+.2f}, standard error "
        f"{se:.2f}; a paired t-test at 95% needs |mean| > {t:.2f} standard errors)."
    )


def write_results(
    setting: str,
    table: list[dict],
    out: Path,
    settings: dict,
    seeds: list[int],
    command: list[str] | None,
    missing: list[str],
    diverged: list[str] = (),
) -> None:
    stem = out / f"{spec.SCHEDULE.name}-{setting}"
    stamp = report.stamp(command=command)
    if diverged:  # named in the CSV too, as protocol A's results files name theirs
        stamp["diverged"] = "; ".join(diverged)
    lines = [
        f"# FMNIST settings v1: {setting}\n",
        report.stamp_markdown(stamp),
        SETTING_TEXT[setting] + " " + COMMON_TEXT + "\n",
        *_table_markdown(table, settings),
    ]
    lines += ["", "## Findings", ""] + [f"- {n}" for n in findings(setting, table)]
    notes = stem.parent / f"{stem.name}.notes.md"  # the reader's reasons, written by hand, kept on regeneration
    if notes.is_file():
        lines += ["", notes.read_text().rstrip()]
    if missing:
        lines += ["", "Not finished yet (not in the table): " + ", ".join(missing) + "."]
    if diverged:
        lines += ["", "Diverged (the loss became non-finite; not in the table, and not tried again by the same "
                  "command: each run directory holds diverged.json, delete it to retry): " + ", ".join(diverged) + "."]
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text("\n".join(lines) + "\n", stem.with_suffix(".md"))
    atomic_write_text(_results_csv(table, settings, stamp, seeds), stem.with_suffix(".csv"))
    if setting == "ensemble":
        ensemble_chart(table, stem.with_suffix(".png"))
    else:
        labels = {r["method"]: _label(r["method"]) for r in table}
        report.bar_chart(table, labels, stem.with_suffix(".png"), f"FMNIST settings v1: {setting} (test top-1)")


def _table_markdown(table: list[dict], settings: dict) -> list[str]:
    """The results table's lines; the probe and fine-tune columns only where some row has them."""
    probe = any(r.get("probe_mean") is not None for r in table)
    ft = any(r.get("finetune_mean") is not None for r in table)
    head = (
        "| row | test top-1 final (mean ± std) | error % |"
        + (" linear probe top-1 |" if probe else "")
        + (" fine-tuned top-1 |" if ft else "")
        + " gain vs vanilla | runs | settings |"
    )
    lines = [head, "|---|---:|---:|" + ("---:|" if probe else "") + ("---:|" if ft else "") + "---:|---:|---|"]
    for r in table:
        pm = "" if r.get("probe_mean") is None else report._pm(r["probe_mean"], r["probe_std"], r["n"])
        fm = "" if r.get("finetune_mean") is None else report._pm(r["finetune_mean"], r["finetune_std"], r["n"])
        gain = "" if r["gain"] is None else f"{r['gain']:+.2f}"
        lines.append(
            f"| {_label(r['method'])} | {report._pm(r['final_mean'], r['final_std'], r['n'])} | "
            f"{100 - r['final_mean']:.2f} |"
            + (f" {pm} |" if probe else "")
            + (f" {fm} |" if ft else "")
            + f" {gain} | {r['n']} | {settings.get(r['method'], '')} |"
        )
    return lines


def _results_csv(table: list[dict], settings: dict, stamp: dict, seeds: list[int]) -> str:
    """The results CSV: the stamp (and the seeds) as ``#`` lines, then one row per table row."""
    buf = io.StringIO()
    buf.write("".join(f"# {k}: {v}\n" for k, v in {**stamp, "seeds": ",".join(map(str, seeds))}.items()))
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    for r in table:
        w.writerow(
            [
                r["method"],
                r["n"],
                fmt(r["final_mean"]),
                fmt(r["final_std"]),
                fmt(r.get("probe_mean")),
                fmt(r.get("probe_std")),
                fmt(r.get("finetune_mean")),
                fmt(r.get("finetune_std")),
                settings.get(r["method"], ""),
            ]
        )
    return buf.getvalue()


def ensemble_chart(table: list[dict], path: Path) -> Path:
    """Student test error against the number of teachers, one line per method, error bars = sample
    std over seeds (CRD Figure 4's shape)."""
    by = {r["method"]: r for r in table}
    fig = Figure(figsize=(7.6, 4.2))
    ax = fig.subplots()
    if "vanilla" in by:  # the student without a teacher, for scale
        v = by["vanilla"]
        ax.axhline(
            100 - v["final_mean"],
            color="#888888",
            linestyle="--",
            linewidth=1,
            label=f"vanilla, no teacher ({100 - v['final_mean']:.2f})",
        )
    methods, sizes = spec.ENSEMBLE_METHODS, spec.ENSEMBLE_SIZES
    for i, m in enumerate(methods):
        pts = [(n, by[f"{m} n={n}"]) for n in sizes if f"{m} n={n}" in by]
        if pts:
            dodge = 0.03 * (i - (len(methods) - 1) / 2)  # side by side: error bars do not hide each other
            ax.errorbar(
                [n + dodge for n, _ in pts],
                [100 - r["final_mean"] for _, r in pts],
                yerr=[r["final_std"] or 0 for _, r in pts],
                marker="o",
                capsize=3,
                label=LABELS[m],
            )
    ax.set_xticks(list(sizes))
    ax.set_xlabel("number of teachers (resnet32, seeds 0..n-1)")
    ax.set_ylabel("student test error (%)")
    ax.set_title(
        "FMNIST settings v1: ensemble distillation (resnet8 student)\nerror bars: sample std over seeds", fontsize=9
    )
    ax.grid(color="#e5e5e5")
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: no line hidden
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi=120)
