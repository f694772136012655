"""The GPU benchmark's end-to-end rows (``python -m benchtools gpu --e2e``): the FMNIST-KD v1 teacher and the vanilla,
KD, WKD-L and WKD-L+WKD-F students trained on the device, each an item of its own (a session cut short keeps the rows
it finished), each student's top-1 held to the CPU table's seed spread."""
from __future__ import annotations

from pathlib import Path

from benchtools import protocol, report
from benchtools.gpu import GpuSetup
from benchtools.gpu_items import cell
from wdistill.config.presets import recipe
from wdistill.workflows.reuse import run_or_load

ROWS = ("teacher", "vanilla", "kd", "wkd_l", "wkd_lf")
CPU_TABLE = Path(__file__).resolve().parent.parent / "benchmarks" / f"{protocol.FULL.name}.csv"  # the reference


def e2e_row(setup: GpuSetup, row: str) -> dict:
    """One row trained on the device (seed 0; protocol A's configs in ``train.precision=auto``, bfloat16 on a recent
    GPU), or in quick mode one epoch on the bundled sample. A student's teacher is the one trained here: its run is
    loaded when finished, trained first when not (a fresh machine). ``seconds``: the row's own run, all its sessions
    (``wall_seconds``), not the teacher's training that a student's item may also have waited for."""
    tiny = ["data.name=fmnist_sample", "data.options={}", "data.train_subset=512", "data.test_subset=256",
            "optim.epochs=1"] if setup.quick else []
    over = [f"run.device={setup.device}"] + tiny
    runs_root = f"runs/gpu-bench/{setup.device.replace(':', '')}"
    summary = run_or_load(protocol.teacher_config(runs_root, overrides=over), log=lambda m: None)
    if row != "teacher":
        cfg = protocol.student_config(row, recipe(row), protocol.FULL, 0, runs_root, overrides=over)
        summary = run_or_load(cfg, log=lambda m: None)
    out = {"row": row, "top1": summary["final_top1"], "seconds": summary["wall_seconds"]}
    return out if setup.quick else out | cpu_reference(row, out["top1"])


def cpu_reference(row: str, top1: float, table: Path = CPU_TABLE) -> dict:
    """The CPU table's figure for ``row`` (benchmarks/fmnist-kd-v1.csv: 3 seeds' mean and sample std; the teacher
    one run) and whether ``top1`` lies within its seed spread, mean +- 2 std (None for a single run)."""
    _, rows = report.read_stamped_csv(table)
    r = next(r for r in rows if r["method"] == row)
    mean, std = float(r["final_top1_mean"]), float(r["final_top1_std"]) if r["final_top1_std"] else None
    return {"cpu_mean": mean, "cpu_std": std, "cpu_runs": int(r["runs"]),
            "within": None if std is None else abs(top1 - mean) <= 2 * std}


def e2e_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["", "## FMNIST-KD v1 on the device (seed 0)", "", "Protocol A's configs in `train.precision=auto`, the "
             "students distilled from the teacher trained here. Against the CPU table (benchmarks/fmnist-kd-v1.md, "
             "float32, 3 seeds): within its seed spread means within 2 sample std of its mean. Wall seconds: the "
             "row's own run.", "",
             "| row | test top-1 | CPU table | within the seed spread | wall s |", "|---|---:|---:|:-:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | failed: {cell(r['error'])} | | | |")
            continue
        cpu = "" if "cpu_mean" not in r else (f"{r['cpu_mean']:.2f} (1 run)" if r["cpu_std"] is None else
                                              f"{r['cpu_mean']:.2f} ± {r['cpu_std']:.2f}")
        within = {True: "yes", False: "NO", None: ""}[r.get("within")]
        lines.append(f"| {r['row']} | {r['top1']:.2f} | {cpu} | {within} | {r['seconds']:.0f} |")
    return lines
