"""Charts: ``wdistill plot RUN_DIR`` (training curves from a run's metrics) and the leaderboard bar
chart of the demo and the benchmarks."""
from __future__ import annotations

import io
import json
import math
import textwrap
from pathlib import Path

import yaml
from matplotlib.figure import Figure  # no pyplot: no global backend, works on a headless machine
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from wdistill.engine import rundir
from wdistill.io import atomic_write_bytes
from wdistill.losses.wkd.decay import decay_start_epoch


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / rundir.METRICS_JSONL
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: RUN_DIR must be a run directory written by "
                                "`wdistill train/distill` (it holds metrics.jsonl after the first epoch)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} holds no epochs yet: plot again after the first epoch ends")
    return rows


def _run_config(run_dir: Path) -> dict:
    f = run_dir / rundir.CONFIG
    try:
        return yaml.safe_load(f.read_text()) or {} if f.is_file() else {}
    except yaml.YAMLError:
        return {}


def curves_title(run_dir: Path, cfg: dict) -> str:
    """What was trained, from the run's config.yaml: student, teacher, weighted loss terms."""
    student = (cfg.get("student") or {}).get("model", "?")
    teacher = (cfg.get("teacher") or {}).get("model")
    terms = " + ".join(f"{t.get('weight', 1):g}*{t.get('id') or t['name']}"
                       for t in cfg.get("loss") or [] if "name" in t)
    who = f"{student} student" + (f" distilled from {teacher}" if teacher else "")
    return f"{run_dir.name}: {who}" + (f", loss = {terms}" if terms else "")


def decay_spans(cfg: dict) -> list[tuple[str, float, int]]:
    """(term, first plotted epoch of decayed weight, last epoch) for WKD terms with cosine decay.
    Epochs are plotted 1-based, as the official trainer counts them; the weight decays once the
    epoch e exceeds s (losses/wkd_decay.py, cosine_decayed), so the first decayed epoch is floor(s) + 1."""
    epochs = (cfg.get("optim") or {}).get("epochs")
    out = []
    for t in cfg.get("loss") or []:
        if t.get("name") not in ("wkd_l", "wkd_f") or not epochs:
            continue
        start = decay_start_epoch(t.get("decay_start"), t.get("decay_start_frac", 150 / 240), epochs)
        if start is not None and math.floor(start) + 1 <= epochs:  # some epoch e > start exists
            out.append((t.get("id") or t["name"], float(math.floor(start) + 1), epochs))
    return out


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Two panels: every weighted loss term (``train_<term>``) and the total per epoch (log scale),
    and train/test top-1 per epoch; titled from the run's config, with WKD's weight decay marked.
    Written to ``output`` (a file, or a directory to hold ``curves.png``; default ``RUN_DIR/curves.png``)."""
    out = Path(output or run_dir)
    return save_figure(curves_figure(run_dir), out / "curves.png" if out.is_dir() else out, dpi=110)


def save_figure(fig: Figure, path: Path, dpi: int) -> Path:
    """``fig`` written atomically to ``path`` in the format its suffix names (PNG without one, as ``.png``)."""
    path = path if path.suffix else path.with_name(path.name + ".png")
    data = io.BytesIO()
    fig.savefig(data, format=path.suffix[1:].lower(), dpi=dpi)
    atomic_write_bytes(data.getvalue(), path)
    return path


def curves_figure(run_dir: str | Path):
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    cfg = _run_config(run_dir)
    epochs = [r["epoch"] for r in rows]
    loss_keys = [k for k in rows[0] if k.startswith("train_") and k != "train_top1"]
    share_keys = [k for k in rows[0] if k.startswith("grad_share_")]
    fig = Figure(figsize=(15 if share_keys else 10, 4.3))
    ax_l, ax_a, *ax_g = fig.subplots(1, 3 if share_keys else 2)
    if share_keys:
        _share_panel(ax_g[0], rows, share_keys)
    for k in loss_keys:
        vals = [r.get(k) for r in rows]
        style = {"lw": 2.0, "color": "black"} if k == "train_loss" else {"lw": 1.2}
        label = "total" if k == "train_loss" else k[len("train_"):]
        # weighted terms can be exactly 0 (AB/FSP main stage): a log axis cannot show them
        ax_l.plot(epochs, [v if v and v > 0 else float("nan") for v in vals], label=label, marker=".", **style)
    ax_l.set_yscale("log")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("weighted loss, mean over the epoch (log)")
    ax_l.set_title("training loss per term", fontsize=9)
    spans = decay_spans(cfg)
    if spans:
        first = min(s for _, s, _ in spans)
        names = " and ".join(sorted({n.upper().replace('_', '-') for n, _, _ in spans}))
        plural = " and " in names
        for ax in (ax_l, ax_a):
            ax.axvspan(first, max(e for _, _, e in spans) + 0.3, color="#f3e3c3", zorder=0,
                       label=f"{names} weight{'s' if plural else ''} decaying")
        # a caption under the panels: inside them it would cover the curves
        fig.text(0.5, 0.01, textwrap.fill(f"Shaded: after epoch {first:g} the {names} weight{'s' if plural else ''} "
                 f"decay{'' if plural else 's'} to 0 on a cosine schedule (as in WKD), so "
                 f"{'their' if plural else 'its'} weighted loss falls by design there, not because the student "
                 "matches the teacher better.", 120), ha="center", va="bottom", fontsize=7.5, color="#7a5a1a")
    ax_l.legend(fontsize=7, loc="upper right")
    for key, label in (("train_top1", "train (augmented, running)"), ("test_top1", "test")):
        pts = [(r["epoch"], r[key]) for r in rows if key in r]
        if pts:
            ax_a.plot(*zip(*pts), marker="o", ms=3, label=label)
    ax_a.set_xlabel("epoch")
    ax_a.set_ylabel("top-1 (%)")
    ax_a.set_title("accuracy", fontsize=9)
    ax_a.legend(fontsize=7)
    fig.suptitle(curves_title(run_dir, cfg), fontsize=9)
    fig.tight_layout(rect=(0, 0.08 if spans else 0, 1, 1))
    return fig


def _share_panel(ax, rows: list[dict], keys: list[str]) -> None:
    """Each term's share of the student's gradient norm per epoch ("is it helping?")."""
    for k in keys:
        pts = [(r["epoch"], 100 * r[k]) for r in rows if k in r]
        ax.plot(*zip(*pts), marker=".", lw=1.2, label=k[len("grad_share_"):])
    ax.axhline(1.0, color="#999999", lw=0.8, ls=":", label="1% (negligible below)")
    ax.set_ylim(0, 100)
    ax.set_xlabel("epoch")
    ax.set_ylabel("share of the student's gradient norm (%)")
    ax.set_title("is it helping? gradient share per term (first step of each epoch)", fontsize=9)
    ax.legend(fontsize=7)


# ---- leaderboard bar chart (demo and `python -m benchtools accuracy`) -------------------------------------
KIND_COLORS = {"teacher": "#555555", "vanilla": "#b0b0b0", "baseline": "#4c72b0", "wasserstein": "#c44e52"}
KIND_LABELS = {"teacher": "teacher", "vanilla": "vanilla student (no teacher)",
               "baseline": "other distillation methods", "wasserstein": "Wasserstein methods (WKD, WCoRD)"}


def row_kind(name: str) -> str:
    """teacher | vanilla | wasserstein | baseline, from a row's method key or label."""
    key = name.lower()
    if key.startswith("teacher"):
        return "teacher"
    if key == "vanilla":
        return "vanilla"
    return "wasserstein" if key.startswith(("wkd", "wcord")) else "baseline"


def leaderboard_chart(rows: list[dict], path: str | Path, title: str, note: str,
                      ylabel: str = "test top-1 (%)") -> Path:
    """:func:`leaderboard_figure` written to ``path`` (PNG)."""
    return save_figure(leaderboard_figure(rows, title, note, ylabel), Path(path), dpi=120)


def leaderboard_figure(rows: list[dict], title: str, note: str, ylabel: str = "test top-1 (%)"):
    """Bars of top-1 per row: ``rows`` hold ``name``, ``top1`` and ``std`` (None for a single run:
    no error bar). Colours by kind with a legend; a dashed line at the vanilla student's top-1; the
    y-axis starts near the lowest bar, and then says so (text and break marks on the axis);
    ``note`` (seeds, test images) is printed under the chart. Long row names (a recipe with its
    settings) are wrapped onto several lines under an upright label."""
    names = [r["name"] for r in rows]
    vals = [r["top1"] for r in rows]
    errs = [r.get("std") for r in rows]
    kinds = [row_kind(n) for n in names]
    # room for the legend right of the bars and for long row names under them
    fig = Figure(figsize=(max(8.0, 0.5 * len(rows) + 4.0), 4.8))
    ax = fig.subplots()
    x = range(len(rows))
    ax.bar(x, vals, color=[KIND_COLORS[k] for k in kinds], zorder=2)
    with_err = [(i, v, e) for i, (v, e) in enumerate(zip(vals, errs)) if e]
    if with_err:
        i, v, e = zip(*with_err)
        ax.errorbar(i, v, yerr=e, fmt="none", ecolor="black", capsize=3, lw=1, zorder=3)
    for i, (v, e) in enumerate(zip(vals, errs)):
        ax.text(i, v + (e or 0) + 0.15, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    if max(len(n) for n in names) > 24 and len(rows) <= 6:
        ax.set_xticks(list(x), [textwrap.fill(n, 17, break_long_words=False) for n in names], fontsize=7)
    else:
        ax.set_xticks(list(x), names, rotation=40 if len(rows) > 8 else 30, ha="right", fontsize=8)
    lo = min(v - (e or 0) for v, e in zip(vals, errs))
    hi = max(v + (e or 0) for v, e in zip(vals, errs))
    bottom = max(0.0, float(int(lo - 2)))
    ax.set_ylim(bottom, min(100.0, hi + 1.2))
    ax.grid(axis="y", color="#e5e5e5", zorder=0)
    handles = [Patch(color=KIND_COLORS[k], label=KIND_LABELS[k]) for k in KIND_COLORS if k in kinds]
    base = next((v for n, v in zip(names, vals) if row_kind(n) == "vanilla"), None)
    if base is not None:
        ax.axhline(base, color="#333333", lw=0.9, ls="--", zorder=1)
        handles.append(Line2D([], [], color="#333333", lw=0.9, ls="--", label=f"vanilla level ({base:.2f})"))
    if with_err:
        handles.append(Line2D([], [], color="black", lw=1, marker="_", ms=8, label="± std over seeds"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if bottom > 0:  # a truncated axis exaggerates differences: say so on the axis itself
        ylabel += f"\naxis starts at {bottom:.0f}%, not 0"
        kw = dict(transform=ax.transAxes, color="black", clip_on=False, lw=1)
        for dy in (0.0, 0.025):
            ax.plot((-0.012, 0.012), (0.02 + dy, 0.035 + dy), **kw)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(textwrap.fill(title, 90), fontsize=9)
    fig.text(0.01, 0.01, note, fontsize=7, ha="left", va="bottom", color="#333333")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig
