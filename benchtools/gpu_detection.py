"""The GPU benchmark's detection sections (``python -m benchtools gpu --detection``; with ``--ddp``, also under
torchrun): protocol D's detectors, small, on the device. Needs torchvision and pycocotools."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from benchtools import det_protocol as P
from benchtools.gpu import GpuSetup
from benchtools.gpu_items import cell
from benchtools.gpu_report import torchrun_one_process
from wdistill.engine.rundir import read_history
from wdistill.workflows.reuse import run_or_load

# The detection check's size: canvases per split, the teacher's steps, the steps of each of a student's epochs, the
# rows (None: all).
DET_SIZE = {"counts": {"train": 400, "val": 50, "test": 200}, "teacher_steps": 198, "student_steps": 50, "rows": None}
DET_QUICK = {"counts": {"train": 16, "val": 4, "test": 4}, "teacher_steps": 3, "student_steps": 2,
             "rows": ("vanilla", "wkd_lf")}
# A detector (the teacher too) trains 3 epochs and only the last is evaluated: the second, warm and with no
# evaluation in it, is timed.
TIMED_EPOCHS, TIMED = 3, 1
CL_ROW = "wkd_lf channels_last"


def variants(quick: bool) -> dict[str, str]:
    """WKD-L+WKD-F's row again with one setting on: ``train.channels_last``, and on the device ``train.compile``
    (the backbone compiled: its compilation falls in the first, untimed epoch; left out of the CPU quick mode,
    where inductor's C++ build of a ResNet-18 would take minutes)."""
    rows = {CL_ROW: "train.channels_last"}
    return rows if quick else rows | {"wkd_lf train.compile": "train.compile"}


def row_names(quick: bool) -> list[str]:
    """The detection section's rows, in order: the teacher, each protocol D row, then WKD-L+WKD-F's variants."""
    size = DET_QUICK if quick else DET_SIZE
    return ["teacher", *(size["rows"] or P.ROWS), *variants(quick)]


def detection_row(setup: GpuSetup, name: str) -> dict:
    """One row of protocol D's detectors (benchtools.det_protocol) on the device in the engine's automatic precision
    (bfloat16 autocast on a recent GPU): small FMNIST-Det canvases, the R50-FPN teacher for a few steps, a row's
    R18-FPN student (or WKD-L+WKD-F's again with one GPU setting on, ``variants``), every one an ordinary run
    directory; the canvases and the teacher are made first when this machine lacks them. Its seconds per training
    step (its second epoch's time over its steps: warm, with no evaluation and no gradient-share pass in it; data
    loading included) and its AP: a check that the detection path runs and stays finite on the device, not an
    accuracy (the teacher is barely trained). A student that fails (a non-finite loss, say) raises: a finding, which
    the benchmark records as an error while the other rows still run."""
    size = DET_QUICK if setup.quick else DET_SIZE
    runs_root = _det_root(setup)
    P.make_data(runs_root, os.environ.get("WDISTILL_FMNIST"), log=lambda *_: None, counts=size["counts"])
    teacher = P.teacher_config(runs_root, _det_overrides(setup, size["teacher_steps"] // TIMED_EPOCHS, timed=True))
    if name == "teacher":
        return _timed_run(teacher, name)
    run_or_load(teacher, log=lambda m: None)
    timed = _det_overrides(setup, size["student_steps"], timed=True)
    setting = variants(setup.quick).get(name)
    if setting is None:
        return _timed_run(P.student_config(name, 0, runs_root, overrides=timed), name)
    cfg = P.student_config("wkd_lf", 0, runs_root, overrides=timed + [f"{setting}=true"])  # one GPU setting on
    cfg["run"]["name"] += "-" + setting.split(".")[-1]
    return _timed_run(cfg, name)


def _timed_run(cfg: dict, name: str) -> dict:
    summary = run_or_load(cfg, log=lambda m: None)
    history = read_history(Path(cfg["run"]["out_dir"]) / cfg["run"]["name"])
    per_step = history[TIMED if len(history) > TIMED else 0]["seconds"] / cfg["train"]["max_steps"]
    return {"row": name, "AP": 100 * summary["final_AP"], "step_s": per_step, "seconds": summary["wall_seconds"]}


def _det_root(setup: GpuSetup) -> str:
    return f"runs/gpu-bench-det/{setup.device.replace(':', '')}"


def _det_overrides(setup: GpuSetup, steps: int, timed: bool = False) -> list[str]:
    """One epoch of ``steps``; ``timed``: TIMED_EPOCHS of them, evaluated after the last only, with no gradient-share
    pass (its extra backward per term would fall in the timed epoch)."""
    epochs = TIMED_EPOCHS if timed else 1
    return [f"run.device={setup.device}", "train.precision=auto", f"optim.epochs={epochs}",
            f"optim.milestones=[{epochs}]", f"train.max_steps={steps}", f"train.eval_every={epochs}",
            *(["train.grad_share=false"] if timed else [])]


def detection_torchrun(setup: GpuSetup) -> dict:
    """WKD-L+WKD-F's detector under `torchrun --nproc_per_node=1`: the detection trainer's DDP wrap, and on a GPU its
    NCCL process group (the canvases and the teacher first, as for the rows, where this machine lacks them)."""
    detection_row(setup, "teacher")
    size = DET_QUICK if setup.quick else DET_SIZE
    cfg = P.student_config("wkd_lf", 0, _det_root(setup), overrides=_det_overrides(setup, size["student_steps"]))
    cfg["run"]["name"] += "-torchrun"
    out = torchrun_one_process(torch.device(setup.device), cfg)
    return out | {"AP": 100 * out["summary"]["final_AP"], "steps": size["student_steps"]}


def detection_lines(rows: list[dict]) -> list[str]:
    lines = ["", "## Detection on the device (protocol D's detectors, small)", "",
             f"FMNIST-Det canvases ({DET_SIZE['counts']['train']} train, {DET_SIZE['counts']['test']} test; the quick "
             f"mode fewer), the R50-FPN teacher for {TIMED_EPOCHS} epochs of "
             f"{DET_SIZE['teacher_steps'] // TIMED_EPOCHS} steps, each row's R18-FPN student for {TIMED_EPOCHS} epochs "
             f"of {DET_SIZE['student_steps']} steps, batch 8, `train.precision=auto`. Seconds "
             "per step: the second epoch's time over its steps (warm; no evaluation and no gradient-share pass in it), "
             "data loading included. AP: after the last epoch, a sanity check of the path, not an accuracy. The "
             "last two rows are WKD-L+WKD-F's with `train.channels_last=true` and with `train.compile=true` (the "
             "backbone compiled in the first, untimed epoch).", "",
             "| row | s / step | step vs vanilla | AP | wall s |", "|---|---:|---:|---:|---:|"]
    base = next((r for r in rows if r["row"] == "vanilla" and "step_s" in r), None)
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | failed: {cell(r['error'])} | | | |")
            continue
        ratio = "" if base is None or r["row"] == "teacher" else f"x{r['step_s'] / base['step_s']:.2f}"
        lines.append(f"| {r['row']} | {r['step_s']:.4f} | {ratio} | {r['AP']:.2f} | {r['seconds']:.0f} |")
    return lines


def torchrun_lines(d: dict) -> list[str]:
    return ["", f"WKD-L+WKD-F's detector under torchrun --nproc_per_node=1 through DDP ({d['backend']}): "
                f"{d['steps']} steps, exit {d['returncode']} in {d['seconds']:.0f} s, AP {d['AP']:.2f}."]
