"""`wdistill demo`: distilled students on the bundled Fashion-MNIST sample, a leaderboard in minutes.

The quick demo (default) distils resnet8 students from the resnet20 teacher shipped in the package
(``assets/demo_teacher_resnet20.pt``, 0.5 MB, loaded weights-only): vanilla, KD and the headline
Wasserstein rows, 5 epochs each. Training the teacher was most of the old demo's time; the shipped
file is what ``wdistill demo --make-teacher`` writes (the same recipe, run once when releasing).
``--full`` is the long demo: it trains the teacher (10 epochs) and seven students (8 epochs).
"""
from __future__ import annotations

from pathlib import Path

from wdistill.config.presets import recipe_for
from wdistill.data import BatchLoader, bundled_sample
from wdistill.engine import evaluate, rundir
from wdistill.io import atomic_save, atomic_write_text, load_dict
from wdistill.losses import recipes as published
from wdistill.losses.recipes import LABELS, RECIPES
from wdistill.models import create, load_checkpoint
from wdistill.workflows.plots import leaderboard_chart
from wdistill.workflows.reuse import run_or_load

# Each method says whether it is in the demo (``demo=`` / ``quick=`` of ``published.publish``).
# Quick demo: the baseline, KD, and the headline Wasserstein rows (WKD-L, WKD-L+WKD-F, WCoRD+KD).
QUICK_METHODS = published.demo_view(quick=True)
# --full: beside KD, decoupled logits (DKD) and the papers' headline combination CRD+KD too.
DEMO_METHODS = published.demo_view(quick=False)
QUICK_STUDENT_EPOCHS, FULL_TEACHER_EPOCHS, FULL_STUDENT_EPOCHS = 5, 10, 8

TEACHER_ARCH = "resnet20"
SHIPPED_TEACHER = Path(__file__).resolve().parent.parent / "assets" / f"demo_teacher_{TEACHER_ARCH}.pt"
SHIPPED_TEACHER_EPOCHS = 15
# Every demo run uses this data section; written out so a change of a library default (e.g. the
# data set's augmentation recipe) cannot silently change the demo or invalidate the shipped teacher.
DATA = {"name": "fmnist_sample", "crop_padding": 2, "flip": True, "batch_size": 64}


def demo_methods(spec: str | None, full: bool = False) -> list[str]:
    """``None`` -> QUICK_METHODS (DEMO_METHODS with ``full``); ``"all"`` -> every recipe; else a
    comma-separated list, checked."""
    if not spec:
        return list(DEMO_METHODS if full else QUICK_METHODS)
    if spec == "all":
        return list(RECIPES)
    methods = [m.strip() for m in spec.split(",") if m.strip()]
    bad = [m for m in methods if m not in RECIPES]
    if bad:
        raise ValueError(f"unknown demo method(s) {bad}; choose from {', '.join(RECIPES)} (or 'all')")
    return methods


def _base(out_dir: str, seed: int, train_subset: int | None, test_subset: int | None) -> dict:
    data = dict(DATA)
    data.update({k: v for k, v in (("train_subset", train_subset), ("test_subset", test_subset)) if v})
    return {"data": data, "optim": {"lr": 0.05, "schedule": "cosine"}, "run": {"out_dir": out_dir, "seed": seed},
            "train": {"channels_last": True}}


def _teacher_config(base: dict, teacher: str, epochs: int) -> dict:
    return {**base, "run": {**base["run"], "name": "teacher"}, "student": {"model": teacher},
            "optim": {**base["optim"], "epochs": epochs}}


def make_demo_teacher(out_dir: str = "runs/demo-teacher", epochs: int = SHIPPED_TEACHER_EPOCHS, log=print) -> dict:
    """Train the demo teacher and write it, in float16 (half the bytes; top-1 re-measured after the
    cast), to ``out_dir/<name of the shipped file>``: a maintainer copies it over
    ``wdistill/assets/`` in a checkout to ship it (the package never writes into itself).
    Returns its metadata."""
    summary = run_or_load(_teacher_config(_base(out_dir, 0, None, None), TEACHER_ARCH, epochs), log)
    trained = load_dict(Path(out_dir) / "teacher" / rundir.STUDENT, what="demo teacher")
    half = {k: v.half() if v.is_floating_point() else v for k, v in trained["model"].items()}
    model = load_checkpoint(create(TEACHER_ARCH, num_classes=10, in_channels=1), {"model": half})
    top1 = evaluate(model, BatchLoader(bundled_sample("test"), 500, False))["top1"]
    meta = {"arch": TEACHER_ARCH, "num_classes": 10, "in_channels": 1, "epochs": epochs, "data": dict(DATA),
            "top1_float32": summary["final_top1"], "top1": top1, "train_seconds": summary["train_seconds"],
            "made_by": "wdistill demo --make-teacher"}
    path = Path(out_dir) / SHIPPED_TEACHER.name
    atomic_save({"model": half, **meta}, path)
    log(f"[demo] wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {TEACHER_ARCH}, {epochs} epochs, "
        f"top-1 {top1:.2f} (float32 {summary['final_top1']:.2f}); to ship it, copy it to wdistill/assets/ in a "
        "checkout")
    return meta


def shipped_teacher_row() -> dict:
    """Leaderboard row of the shipped teacher, from the metadata it was written with."""
    if not SHIPPED_TEACHER.is_file():
        raise FileNotFoundError(f"the demo teacher {SHIPPED_TEACHER} is missing from this install: run "
                                "`wdistill demo --full` (trains one) or `wdistill demo --make-teacher`")
    meta = load_dict(SHIPPED_TEACHER, what="demo teacher")
    # not trained by this demo: no training seconds in its row
    return {"method": f"teacher ({meta['arch']}, shipped)", "top1": meta["top1"], "best": meta["top1"],
            "seconds": None}


def run_demo(out_dir: str = "runs/demo", methods: list[str] | None = None, teacher: str = TEACHER_ARCH,
             student: str = "resnet8", teacher_epochs: int | None = FULL_TEACHER_EPOCHS,
             student_epochs: int = FULL_STUDENT_EPOCHS, seed: int = 0, log=print,
             train_subset: int | None = None, test_subset: int | None = None) -> list[dict]:
    """Train (or take) the teacher, then one ``student`` per method; returns leaderboard rows,
    teacher first.

    ``teacher_epochs=None`` takes the shipped teacher instead of training one. Method settings are
    ``recipes.recipe``: the presets tuned on the FMNIST-KD v1 validation split (configs/fmnist)
    where present, else the CIFAR-100 defaults, with epoch-valued settings (init stages, warm-up)
    scaled to ``student_epochs``. Interrupted demos resume: finished runs of the same configuration
    are reused, an unfinished one continues from last.pt. ``train_subset`` / ``test_subset`` use
    only that many images (tests).
    """
    methods = methods or list(QUICK_METHODS)
    base = _base(out_dir, seed, train_subset, test_subset)
    if teacher_epochs is None:
        if teacher != TEACHER_ARCH:
            raise ValueError(f"the shipped demo teacher is a {TEACHER_ARCH}; pass teacher_epochs to train a {teacher}")
        teacher_ckpt = str(SHIPPED_TEACHER)
        rows = [shipped_teacher_row()]
        log(f"[demo] teacher: the shipped {teacher} ({SHIPPED_TEACHER.name}, top-1 {rows[0]['top1']:.2f}); "
            "`--full` trains one instead")
    else:
        log(f"[demo] training teacher {teacher} for {teacher_epochs} epochs on the bundled Fashion-MNIST sample")
        t_summary = run_or_load(_teacher_config(base, teacher, teacher_epochs), log)
        teacher_ckpt = str(Path(out_dir) / "teacher" / rundir.STUDENT)
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
        plain = base is None or r["method"].startswith("teacher") or r["method"] == vanilla
        gain = "" if plain else f"{r['top1'] - base:+.2f}"
        secs = "" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(f"| {r['method']} | {r['top1']:.2f} | {r['best']:.2f} | {gain} | {secs} |")
    return "\n".join(lines)


def write_leaderboard(rows: list[dict], out_dir: str | Path, student_epochs: int) -> tuple[Path, Path]:
    """``leaderboard.md`` (the table) and ``leaderboard.png`` (the chart) in ``out_dir``."""
    out = Path(out_dir)
    atomic_write_text(leaderboard_table(rows) + "\n", out / "leaderboard.md")
    leaderboard_chart(
        [{"name": r["method"], "top1": r["top1"], "std": None} for r in rows],
        out / "leaderboard.png",
        f"wdistill demo: resnet20 teacher -> resnet8 students ({student_epochs} epochs), bundled Fashion-MNIST sample",
        "One run each (seed 0), final epoch, on the sample's 1,000 test "
        "images: differences under about 1 point are noise.",
    )
    return out / "leaderboard.md", out / "leaderboard.png"
