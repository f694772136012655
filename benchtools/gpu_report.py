"""Runs the GPU benchmark and writes ``benchmarks/gpu.md`` and ``benchmarks/gpu.json`` (issue 26).

Sections: the stamp; parity of every method (CPU float32 against the device in float32, bfloat16 and float16 +
GradScaler) and of the OT solvers; the training step without host syncs; step times at each batch size against
each method's own bound, with the targets (1.10 for logit methods, 1.25 for feature methods), with
(``--compile``) KD's step with its student compiled as ``train.compile`` does; the WKD-L kernel, eager,
(``--compile``) compiled, as a CUDA graph and the official one (``--official``); optionally the FMNIST-KD v1
teacher and students trained on the device (``--e2e``), a one-process torchrun through NCCL (``--ddp``) and
protocol D's detectors, small (``--detection``).
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch
import yaml

from benchtools import report
from benchtools.gpu import GpuSetup, environment, methods_of, parity, step_time
from benchtools.gpu_e2e import ROWS as E2E_ROWS
from benchtools.gpu_e2e import e2e_lines, e2e_row
from benchtools.gpu_items import ROWS, Item, cell, resume_from, run_items, step_label
from benchtools.gpu_kernel import kernel_lines, wkd_l_kernel
from benchtools.gpu_kernel import variants as kernel_variants
from benchtools.gpu_limits import limit_lines
from benchtools.gpu_solvers import cases as solver_cases
from benchtools.gpu_solvers import solver_lines, solver_parity
from benchtools.gpu_syncs import real_run_syncs
from benchtools.targets import ratio_target
from wdistill.io import atomic_write_text

KERNEL_SHAPES = ((64, 100), (256, 1000))
STEP_KERNELS = ("compiled", "cuda_graph")  # WKD-L's kernel option, timed in its step with --compile


def run_gpu(setup: GpuSetup, out: str | Path = "benchmarks", compiled: bool = False, ddp: bool = False,
            e2e: bool = False, command: list[str] | None = None, official: str | None = None,
            official_workers: int = 8, detection: bool = False, resume: str | Path | None = None,
            budget_s: float | None = None) -> dict:
    """Every section; returns the results, written as gpu.json and gpu.md after each item, so that a device
    session cut short keeps what it measured. A section or a method that raises is recorded with its error
    (``errors`` lists them) and the rest still runs. ``budget_s``: no item starts after that many seconds (the
    rest is ``pending``); ``resume``: a folder holding an earlier run's gpu.json, whose items are kept."""
    device, out = torch.device(setup.device), Path(out)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions
    res = {"environment": environment(device), "setup": setup.__dict__, **{slot: [] for slot in ROWS},
           "errors": [], "command": shlex.join(command or ["python", "-m", "benchtools", "gpu"]),
           "date": report.stamp()["date"]}
    if resume is not None:
        res = resume_from(resume, res)
    run_items(res, _items(setup, device, compiled, ddp, e2e, official, official_workers, detection),
              lambda r: write(r, out), budget_s)
    return res


def _items(setup: GpuSetup, device: torch.device, compiled: bool, ddp: bool, e2e: bool,
           official: str | None, official_workers: int, detection: bool) -> list[Item]:
    """What the run measures, in order: the core (parity, steps, the real run, kernels), then the sections asked
    for."""
    methods = methods_of(setup.quick)
    # vanilla: what bfloat16 does to the student's CE step alone, the reference
    items = [Item(f"parity {m}", "parity", partial(parity, m, setup), {"method": m, "ok": False})
             for m in ["vanilla", *methods]]
    items += [Item(f"solver {label}", "solvers", partial(solver_parity, kind, label, shape, setup),
                   {"solver": label, "ok": False}) for kind, label, shape in solver_cases(setup.quick)]
    for b in setup.batches:
        items += [Item(f"step {m} B={b}", "steps", _with_target(m, partial(step_time, m, b, setup,
                                                                             b == setup.batches[0])),
                       {"method": m, "batch": b, "target": ratio_target(m)}) for m in methods]
    items.append(Item("real run syncs", "real_run", lambda: real_run_syncs(device, Path("runs/gpu-bench-syncs")), {}))
    if compiled:  # train.compile's path: KD's student compiled, at the largest batch
        b = max(setup.batches)
        items.append(Item(f"step kd B={b} compiled", "steps",
                          _with_target("kd", lambda: step_time("kd", b, setup, compiled=True)),
                          {"method": "kd", "batch": b, "compiled": True, "target": ratio_target("kd")}))
        # WKD-L's compiled kernels inside its step, at every batch size: which form its default should be
        items += [Item(f"step wkd_l B={b} kernel={k}", "steps",
                       _with_target("wkd_l", partial(step_time, "wkd_l", b, setup, kernel=k)),
                       {"method": "wkd_l", "batch": b, "kernel": k, "target": ratio_target("wkd_l")})
                  for b in setup.batches for k in STEP_KERNELS]
    for B, C in ((8, 10),) if setup.quick else KERNEL_SHAPES:
        items += [Item(f"WKD-L kernel B={B} C={C} {v}", "kernels", partial(wkd_l_kernel, B, C, setup, v, official),
                       {"B": B, "C": C, "variant": v}) for v in kernel_variants(device, compiled, official)]
    # In the order a short device session needs them: NCCL (quick), the official side by side, end to end, then
    # detection; end to end and detection a row at a time, so that a session cut short keeps the rows it finished.
    if ddp:
        items.append(Item("ddp", "ddp", lambda: torchrun_one_process(device), {}))
    if official:
        items.append(Item("official", "official", lambda: side_by_side(official, setup, official_workers), {}))
    if e2e:
        items += [Item(f"e2e {r}", "e2e", partial(e2e_row, setup, r), {"row": r}) for r in E2E_ROWS]
    if detection:
        det = gpu_detection()
        items += [Item(f"detection {r}", "detection", partial(det.detection_row, setup, r), {"row": r})
                  for r in det.row_names(setup.quick)]
        if ddp:
            items.append(Item("detection_ddp", "detection_ddp", lambda: det.detection_torchrun(setup), {}))
    return items


def _with_target(method: str, fn):
    return lambda: fn() | {"target": ratio_target(method)}


def gpu_detection():
    """The detection sections' module, imported only when they run: it needs torchvision and pycocotools."""
    from benchtools import gpu_detection as module

    return module


def torchrun_one_process(device: torch.device, cfg: dict | None = None) -> dict:
    """`torchrun --nproc_per_node=1` of ``cfg`` through the DDP wrapper (NCCL on a GPU, gloo on the CPU); by
    default a one-epoch classification training. Returns the backend the run used (from its summary), the seconds
    and the summary, or raises with the output's last lines if it fails."""
    cfg = cfg or {"run": {"name": "ddp", "out_dir": "runs/gpu-bench-ddp", "device": device.type},
                  "data": {"name": "fmnist_sample", "train_subset": 512, "test_subset": 128},
                  "student": {"model": "resnet8"}, "optim": {"epochs": 1}, "train": {"progress": False}}
    work = Path(cfg["run"]["out_dir"])
    work.mkdir(parents=True, exist_ok=True)
    config = work / f"{cfg['run']['name']}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    t0 = time.time()
    # --standalone: a rendezvous on a free local port, not the fixed 29500 that another torchrun may hold
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
                          "wdistill.cli", "train", str(config), "--overwrite"], capture_output=True, text=True)
    tail = (run.stdout + run.stderr).strip().splitlines()[-3:]
    if run.returncode:  # an error, counted as one (the report's Errors, the exit status), not a quiet row
        raise RuntimeError(f"torchrun exited {run.returncode}: {' / '.join(tail)}")
    summary = json.loads((work / cfg["run"]["name"] / "summary.json").read_text())
    # The backend the run itself reports: none would mean it trained without the DDP wrapper.
    return {"returncode": run.returncode, "backend": summary["backend"], "seconds": time.time() - t0, "tail": tail,
            "summary": summary}


def side_by_side(path: str, setup: GpuSetup, workers: int) -> dict:
    """The official WKD trainer's step and CIFAR-100 epoch against ours (``benchtools.official``)."""
    from benchtools import official  # imports the official checkout: only when asked for

    off = official.load_official(path)
    out = {"path": str(off.root), "steps": official.step_side_by_side(off, setup, setup.batches[0])}
    try:
        out["epoch"] = official.epoch_side_by_side(off, setup, workers)
    except ImportError as e:  # the official data pipeline is torchvision's
        out["epoch_skipped"] = f"{e} (the official data pipeline needs torchvision)"
    return out


def _official_lines(res: dict) -> list[str]:
    o = res["official"]
    lines = ["", "## Side by side with the official WKD trainer", "",
             f"Official code from `{o['path']}`. Step: the same batch, pair (resnet32x4 -> resnet8x4) and precision "
             "(float16 + GradScaler on a GPU, the official forward's own autocast; float32 on the CPU); the official "
             "step includes its per-step readouts (host syncs); the next column is the same step without them, "
             "what they cost it. Target: ours at least 1.5x the official images/s.", "",
             "| method | batch | ours img/s | official img/s | official without readouts img/s | ours / official |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['batch']} | {r['ours_img_s']:.0f} | {r['official_img_s']:.0f} | "
              f"{r.get('official_bare_img_s', float('nan')):.0f} | {r['ratio']:.2f} |" for r in o["steps"]]
    if "epoch" in o:
        e = o["epoch"]
        lines += ["", f"One WKD-L training epoch of {e['images']} generated CIFAR-100 images (genuine pickle files), "
                      f"each side with its own data pipeline (official: torchvision + PIL, {e['workers']} workers, "
                      f"cudnn.deterministic as its tools/train.py sets): ours {e['ours_s']:.1f} s, official "
                      f"{e['official_s']:.1f} s, ratio {e['ratio']:.2f} (target at least 3). Of the official "
                      f"epoch, {e.get('official_data_wait_s', float('nan')):.1f} s were its host waiting for the "
                      "next batch from the loader's workers, the rest its steps."]
    else:
        lines += ["", f"Epoch not measured: {o['epoch_skipped']}."]
    return lines


def _parity_lines(res: dict) -> list[str]:
    lines = ["## Parity (relative difference of the loss / of the student's gradient)", "",
             "CPU float32 is the reference. float32 on the device with TF32 off must agree to 1e-4, bfloat16 "
             "autocast to 3e-2; float16 with a GradScaler must take three finite steps. The first row, vanilla (the "
             "student's CE step alone), is what bfloat16 does to any step on this batch; the column after the "
             "bfloat16 gradient is each method's excess over it.", "",
             "| method | float32 loss | float32 grad | bfloat16 loss | bfloat16 grad | bf16 grad - vanilla's | "
             "float16 + scaler | ok |", "|---|---:|---:|---:|---:|---:|:-:|:-:|"]
    ref = next((r for r in res["parity"] if r["method"] == "vanilla" and "bfloat16_grad" in r), None)
    for r in res["parity"]:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {cell(r['error'])} | | | | | | NO |")
            continue
        f16 = {True: "finite", False: "NOT finite", None: "n/a (CPU)"}[r["float16_scaler"]]
        excess = f"{r['bfloat16_grad'] - ref['bfloat16_grad']:+.1e}" if ref and "bfloat16_grad" in r else ""
        lines.append(f"| {r['method']} | {r['float32_loss']:.1e} | {r['float32_grad']:.1e} | "
                     f"{r.get('bfloat16_loss', float('nan')):.1e} | {r.get('bfloat16_grad', float('nan')):.1e} | "
                     f"{excess} | {f16} | {'yes' if r['ok'] else 'NO'} |")
    return lines


def _step_lines(res: dict) -> list[str]:
    lines = ["", "## Training step against its bound", "",
             "Median of the timed steps after warm-up; the bound is the student's CE step plus the teacher's "
             "forward under the same settings (bfloat16 autocast and channels_last on a GPU). Host syncs: three "
             "steps of the Trainer's own Stepper (autocast, meter, non-finite guard, gradient clipping) at the first "
             "batch size, after two, under `torch.cuda.set_sync_debug_mode(\"warn\")` (each sync recorded) on a "
             "GPU, under `benchtools/host_sync.py`'s record of syncing operations on the CPU. A row marked "
             "`train.compile` has the student compiled as that setting does, one marked `kernel` WKD-L's loss in "
             "that form of its `kernel` option (each against the same eager bound).",
             "",
             "| method | batch | step ms | bound ms | ratio | target | host-sync free |",
             "|---|---:|---:|---:|---:|---:|:-:|"]
    for r in res["steps"]:
        if "error" in r:
            lines.append(f"| {step_label(r)} | {r['batch']} | failed: {cell(r['error'])} | | | | |")
            continue
        sync = {True: "yes", False: f"NO ({r.get('sync_error')})", None: "n/a"}[r["sync_free"]]
        verdict = "met" if r["target"] is not None and r["ratio"] <= r["target"] else "missed"
        met = "" if r["target"] is None else f"<= {r['target']:.2f} ({verdict})"
        lines.append(f"| {step_label(r)} | {r['batch']} | {1e3 * r['step_s']:.2f} | {1e3 * r['bound_s']:.2f} | "
                     f"{r['ratio']:.2f} | {met} | {sync} |")
    run = res.get("real_run")
    if run and "error" not in run:
        found = "no host sync" if not run["syncs"] else "host syncs: " + "; ".join(cell(x) for x in run["syncs"])
        lines += ["", f"A real run (the Trainer on the bundled sample through the in-memory loader, CE + WKD-L + DKD + "
                      f"RKD + CRD), {run['steps']} steps after two, each with the fetch of its batch: {found}."]
    return lines


def write(res: dict, out: Path) -> None:
    env = res["environment"]
    head = ", ".join(f"{k} {v}" for k, v in env.items())
    lines = ["# The CUDA path: parity, host syncs, step times", "", f"{res['date']}; {head}.", "",
             f"Command: `{res['command']}`", ""]
    lines += [f"Resumed ({r['date']}) by `{r['command']}`, which kept what the run before had measured." for r in
              res.get("resumed", [])]
    if res.get("pending"):
        lines += ["", f"**Stopped at its time budget; not measured yet:** {', '.join(res['pending'])}. The same "
                      "command with `--resume` on this folder goes on from here."]
    lines += [""] + _parity_lines(res) + solver_lines(res.get("solvers", [])) + _step_lines(res)
    lines += limit_lines(res["steps"]) + kernel_lines(res["kernels"])
    failed = [k for k in ("real_run", "ddp", "official", "detection_ddp")
              if isinstance(res.get(k), dict) and "error" in res[k]]
    lines += [line for k in failed for line in ("", f"Section `{k}` failed: {cell(res[k]['error'])}.")]
    if "ddp" in res and "ddp" not in failed:
        d = res["ddp"]
        lines += ["", f"torchrun --nproc_per_node=1 through DDP ({d['backend']}): exit {d['returncode']} in "
                      f"{d['seconds']:.0f} s."]
    lines += e2e_lines(res["e2e"])
    if "official" in res and "official" not in failed:
        lines += _official_lines(res)
    if res["detection"]:
        lines += gpu_detection().detection_lines(res["detection"])
    if "detection_ddp" in res and "detection_ddp" not in failed:
        lines += gpu_detection().torchrun_lines(res["detection_ddp"])
    if res.get("errors"):
        lines += ["", "## Errors", "", *[f"- {cell(e['error'])}" for e in res["errors"]],
                  "", "Tracebacks: `errors` in gpu.json."]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text("\n".join(lines) + "\n", out / "gpu.md")
    atomic_write_text(json.dumps(res, indent=2, default=str) + "\n", out / "gpu.json")
