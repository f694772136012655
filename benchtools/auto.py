"""``python -m benchtools auto`` (docs/benchmarks.md, protocol E): ``wdistill auto`` on FMNIST-KD v1.

The FMNIST-KD v1 teacher and student, its 10,000 training images (auto holds out its own 20%,
stratified) and schedule (12 epochs); a budget of one third of protocol A's student compute (21 rows
x 3 seeds x 12 epochs = 756 student epochs, so 252). The recommended recipe is then trained on the
10,000 images for 3 seeds and scored on the 10,000 test images, beside A's best row and A's vanilla
(the re-run of December 2026, whose teacher this one is retrained to match).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from benchtools import protocol, report
from benchtools.accuracy import ensure_teacher
from wdistill.config.schema import AutoSection
from wdistill.io import atomic_write_text
from wdistill.workflows.auto_report import mean_std, run_auto

A_STUDENT_EPOCHS = 21 * 3 * protocol.FULL.epochs  # protocol A: 21 student rows x 3 seeds x 12 epochs
NAME = "fmnist-auto-v1"
A_RESULTS = Path("benchmarks/rerun-2026-12-02/fmnist-kd-v1.csv")  # the rows of the current teacher


def base_config(runs_root: str, root: str | None) -> dict:
    cfg = protocol.student_config("vanilla", [{"name": "ce"}], protocol.FULL, 0, runs_root, root, run_name=NAME)
    cfg["teacher"] = {"model": protocol.TEACHER, "checkpoint": str(protocol.teacher_checkpoint(runs_root))}
    cfg["run"]["out_dir"] = str(Path(runs_root))
    cfg.pop("loss")
    return cfg


def run_auto_bench(runs_root="runs/bench", out="benchmarks", root=None, seeds: int = 3, command=None,
                   log=print) -> dict:
    """Train (or reuse) the teacher, run the search and the final training, write the results file."""
    ensure_teacher(runs_root, root, log)
    auto = AutoSection(budget=A_STUDENT_EPOCHS / 3)
    result = run_auto(base_config(runs_root, root), auto, Path(runs_root) / NAME, train_seeds=seeds,
                      command=" ".join(command or []), log=log)
    write_results(result, Path(out), command or [])
    return result


def _a_rows() -> dict[str, dict]:
    _, table, _ = report.read_results_csv(A_RESULTS)
    return {r["method"]: r for r in table}


def write_results(result: dict, out: Path, command: list[str]) -> Path:
    a = _a_rows()
    best_a = max((r for m, r in a.items() if m not in ("teacher", "vanilla")), key=lambda r: r["final_mean"])
    tops = [t["test_top1"] for t in result["trained"]]
    mean, std = mean_std(tops)
    pruned = sum(c["status"].startswith("pruned") for c in result["candidates"])
    epochs_spent = sum(len(c["values"]) for c in result["candidates"])
    rec = result["recommended"]
    within = abs(mean - best_a["final_mean"]) <= best_a["final_std"] + (std or 0)
    lines = [f"# {NAME}: `wdistill auto` on FMNIST-KD v1 (protocol E)\n",
             report.stamp_markdown(report.stamp(command=command)),
             f"Search: {len(result['candidates']) - 1} candidates (8 recipes x their grids) + vanilla, "
             f"{pruned} pruned by successive halving, {result['auto']['finalists']} finalists x "
             f"{result['auto']['seeds']} seeds; budget {result['auto']['budget']:g} student epochs (one third of "
             f"protocol A's {A_STUDENT_EPOCHS}); {epochs_spent} rung results; wall time "
             f"{result['wall_seconds'] / 60:.0f} min (one thread).\n",
             f"**Chosen:** {rec['label']} — held-out top-1 {rec['mean']:.2f} ± {rec['std'] or 0:.2f} "
             f"({rec['verdict']}).\n",
             "| row | test top-1 (3 seeds) |", "|---|---:|",
             f"| auto's choice, trained on the 10,000 images | **{mean:.2f} ± {std or 0:.2f}** |",
             f"| A's best row ({best_a['method']}) | {best_a['final_mean']:.2f} ± {best_a['final_std']:.2f} |",
             f"| A's vanilla | {a['vanilla']['final_mean']:.2f} ± {a['vanilla']['final_std']:.2f} |", "",
             f"Within the seed spread of A's best row (|difference| <= the two stds): {'yes' if within else 'no'} "
             f"(difference {mean - best_a['final_mean']:+.2f}).\n",
             f"The search's own report (every candidate, every rung): [{NAME}-report.md]({NAME}-report.md); "
             f"chart: [{NAME}.png]({NAME}.png).\n"]
    out.mkdir(parents=True, exist_ok=True)
    root = Path(result["root"])
    shutil.copyfile(root / "report.md", out / f"{NAME}-report.md")
    shutil.copyfile(root / "report.png", out / f"{NAME}.png")
    atomic_write_text("\n".join(lines) + "\n", out / f"{NAME}.md")
    return out / f"{NAME}.md"
