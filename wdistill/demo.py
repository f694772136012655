"""`wdistill demo`: teacher + distilled students on the bundled Fashion-MNIST sample."""
from __future__ import annotations

from pathlib import Path

from .bench.runs import run_or_load
from .recipes import LABELS, RECIPES, recipe_for

# Beside KD: decoupled logits (DKD), the papers' headline combinations CRD+KD and WCoRD+KD, and
# WKD-L alone and with WKD-F. `--methods all` runs every recipe.
DEMO_METHODS = ["vanilla", "kd", "dkd", "crd_kd", "wkd_l", "wkd_lf", "wcord_kd"]


def demo_methods(spec: str | None) -> list[str]:
    """``None`` -> DEMO_METHODS; ``"all"`` -> every recipe; else a comma-separated list, checked."""
    if not spec:
        return list(DEMO_METHODS)
    if spec == "all":
        return list(RECIPES)
    methods = [m.strip() for m in spec.split(",") if m.strip()]
    bad = [m for m in methods if m not in RECIPES]
    if bad:
        raise ValueError(f"unknown demo method(s) {bad}; choose from {', '.join(RECIPES)} (or 'all')")
    return methods


def run_demo(out_dir: str = "runs/demo", methods: list[str] | None = None, teacher: str = "resnet20",
             student: str = "resnet8", teacher_epochs: int = 10, student_epochs: int = 8, seed: int = 0,
             log=print, train_subset: int | None = None, test_subset: int | None = None) -> list[dict]:
    """Train ``teacher`` then one ``student`` per method; returns leaderboard rows (teacher first).

    Method settings are ``recipes.recipe``: the presets tuned on the FMNIST-KD v1 validation split
    (configs/fmnist) where present, else the CIFAR-100 defaults, with epoch-valued settings (init
    stages, warm-up) scaled to ``student_epochs``. Interrupted demos resume: finished runs of the
    same configuration are reused, an unfinished one continues from last.pt. ``train_subset`` /
    ``test_subset`` use only that many images (tests).
    """
    methods = methods or list(DEMO_METHODS)
    data = {"name": "fmnist_sample", "crop_padding": 2, "batch_size": 64}
    data.update({k: v for k, v in (("train_subset", train_subset), ("test_subset", test_subset)) if v})
    base = {"data": data,
            "optim": {"lr": 0.05, "schedule": "cosine"}, "run": {"out_dir": out_dir, "seed": seed},
            "train": {"channels_last": True}}
    log(f"[demo] training teacher {teacher} for {teacher_epochs} epochs on the bundled Fashion-MNIST sample")
    t_cfg = {**base, "run": {**base["run"], "name": "teacher"}, "student": {"model": teacher},
             "optim": {**base["optim"], "epochs": teacher_epochs}}
    t_summary = run_or_load(t_cfg, log)
    teacher_ckpt = str(Path(out_dir) / "teacher" / "student.pt")
    rows = [{"method": f"teacher ({teacher})", "top1": t_summary["final_top1"], "best": t_summary["best_top1"],
             "seconds": t_summary["train_seconds"]}]
    for i, m in enumerate(methods, 1):
        log(f"[demo] student {i}/{len(methods)}: {student}, {LABELS.get(m, m)}, {student_epochs} epochs")
        cfg = {**base, "run": {**base["run"], "name": f"student_{m}"}, "student": {"model": student},
               "optim": {**base["optim"], "epochs": student_epochs}, "loss": recipe_for(m, student_epochs)}
        if m != "vanilla":
            cfg["teacher"] = {"model": teacher, "checkpoint": teacher_ckpt}
        s = run_or_load(cfg, log)
        rows.append({"method": LABELS.get(m, m), "top1": s["final_top1"], "best": s["best_top1"],
                     "seconds": s["train_seconds"]})
    return rows


def leaderboard_table(rows: list[dict], vanilla: str = "vanilla") -> str:
    base = next((r["top1"] for r in rows if r["method"] == vanilla), None)
    lines = ["| method | top-1 (final) | best | gain vs vanilla | train s |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        gain = "" if base is None or r["method"].startswith("teacher") or r["method"] == vanilla else f"{r['top1'] - base:+.2f}"
        lines.append(f"| {r['method']} | {r['top1']:.2f} | {r['best']:.2f} | {gain} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def bar_chart(rows: list[dict], path: str | Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.5, 0.8 * len(rows) + 2), 3.8))
    names = [r["method"] for r in rows]
    vals = [r["top1"] for r in rows]
    ax.bar(range(len(rows)), vals, color=["#888"] + ["#3b75af"] * (len(rows) - 1))
    ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
    lo = min(vals)
    ax.set_ylim(max(0, lo - 5), min(100, max(vals) + 2))
    for i, v in enumerate(vals):
        ax.text(i, v + 0.2, f"{v:.1f}", ha="center", fontsize=8)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
