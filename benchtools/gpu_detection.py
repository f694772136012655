"""The GPU benchmark's detection sections (``python -m benchtools gpu --detection``; with ``--ddp``, also under
torchrun): protocol D's detectors, small, on the device. Needs torchvision and pycocotools."""
from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path

import torch

from benchtools import det_protocol as P
from benchtools.gpu import GpuSetup
from benchtools.gpu_items import cell, guarded
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


def detection_on_device(setup: GpuSetup, res: dict | None = None) -> list[dict]:
    """Protocol D's detectors (benchtools.det_protocol) on the device in the engine's automatic precision
    (bfloat16 autocast on a recent GPU): small FMNIST-Det canvases, the R50-FPN teacher for a few steps, then each
    row's R18-FPN student, and WKD-L+WKD-F's again with ``train.channels_last``, every one an ordinary run
    directory. Per row (the teacher's too): its seconds per training step (its second epoch's time over its
    steps: warm, with no evaluation and no gradient-share pass in it; data loading included) against vanilla's,
    and its AP. A check that the detection path runs and stays finite on the device, not an accuracy: the teacher
    is barely trained. A student row that fails (a non-finite loss, say) is a finding: it goes into
    ``res["errors"]`` and the other rows still run."""
    res = {"errors": []} if res is None else res
    size = DET_QUICK if setup.quick else DET_SIZE
    runs_root = _det_root(setup)
    P.make_data(runs_root, os.environ.get("WDISTILL_FMNIST"), log=lambda *_: None, counts=size["counts"])
    over = partial(_det_overrides, setup)

    def run(cfg: dict, name: str) -> dict:
        t0 = time.time()
        summary = run_or_load(cfg, log=lambda m: None)
        run_dir = Path(cfg["run"]["out_dir"]) / cfg["run"]["name"]
        history = read_history(run_dir)
        per_step = history[TIMED if len(history) > TIMED else 0]["seconds"] / cfg["train"]["max_steps"]
        return {"row": name, "AP": 100 * summary["final_AP"], "step_s": per_step, "seconds": time.time() - t0}

    rows = [run(P.teacher_config(runs_root, over(size["teacher_steps"] // TIMED_EPOCHS, timed=True)), "teacher")]
    timed = over(size["student_steps"], timed=True)
    for m in size["rows"] or P.ROWS:
        cfg = P.student_config(m, 0, runs_root, overrides=timed)
        rows.append(guarded(res, f"detection {m}", lambda cfg=cfg, m=m: run(cfg, m), {"row": m}))
    for name, setting in variants(setup.quick).items():  # WKD-L+WKD-F's row again, one GPU setting on
        cfg = P.student_config("wkd_lf", 0, runs_root, overrides=timed + [f"{setting}=true"])
        cfg["run"]["name"] += "-" + setting.split(".")[-1]
        rows.append(guarded(res, f"detection {name}", lambda cfg=cfg, name=name: run(cfg, name), {"row": name}))
    base = next((r for r in rows if r["row"] == "vanilla" and "step_s" in r), None)
    for r in rows[1:]:
        r["vs_vanilla"] = r["step_s"] / base["step_s"] if base and "step_s" in r else None
    return rows


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
    """WKD-L+WKD-F's detector (after ``detection_on_device``, which made the canvases and the teacher) under
    `torchrun --nproc_per_node=1`: the detection trainer's DDP wrap, and on a GPU its NCCL process group."""
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
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | failed: {cell(r['error'])} | | | |")
            continue
        ratio = "" if r.get("vs_vanilla") is None else f"x{r['vs_vanilla']:.2f}"
        lines.append(f"| {r['row']} | {r['step_s']:.4f} | {ratio} | {r['AP']:.2f} | {r['seconds']:.0f} |")
    return lines


def torchrun_lines(d: dict) -> list[str]:
    return ["", f"WKD-L+WKD-F's detector under torchrun --nproc_per_node=1 through DDP ({d['backend']}): "
                f"{d['steps']} steps, exit {d['returncode']} in {d['seconds']:.0f} s, AP {d['AP']:.2f}."]
