"""`python -m benchtools detection`: FMNIST-Det (docs/benchmarks.md, protocol D). Makes the canvases,
trains the R50-FPN teacher once, then every row x seed as an ordinary run directory (resumable; two shells
running the same command share the queue), measures the distillation overhead per step, and writes
``benchmarks/<det_protocol.REPORT>.md/.csv/.png`` (tables: ``benchtools.det_report``)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from benchtools import det_diagnostics, det_report, report
from benchtools import det_protocol as P
from benchtools.measure import interleaved_medians
from benchtools.runs import load_result, run_or_report
from wdistill.config import load_config
from wdistill.data.det_loader import build_detection_data
from wdistill.engine import make_trainer
from wdistill.engine.build import build_model
from wdistill.engine.det_distiller import evaluate_detection
from wdistill.engine.loop import term_grad_norms
from wdistill.io import atomic_write_text
from wdistill.workflows.reuse import load_finished, run_lock, run_or_load, shared_queue

TEACHER_TEST = "teacher_test.json"  # the teacher's COCOeval on the test canvases, beside the run directories
SPEED = "step_seconds.json"  # the median step time of each row's student


def check_rows(methods: list[str]) -> list[str]:
    bad = [m for m in methods if m not in P.ROWS]
    if bad:
        raise ValueError(f"unknown row(s) {bad}; the protocol's rows are {', '.join(P.ROWS)}")
    return methods


def teacher_test(runs_root, log=print) -> dict:
    """The finished teacher's AP on the test canvases (evaluated once, then read back)."""
    path = Path(runs_root) / P.NAME / TEACHER_TEST
    checkpoint = P.teacher_checkpoint(runs_root)
    stamp = checkpoint.stat().st_mtime
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("checkpoint_mtime") == stamp:
            return saved["stats"]
    data = build_detection_data(load_config(P.student_config("vanilla", 0, runs_root)).data, log=lambda *_: None,
                                progress=False)
    stats = evaluate_detection(_teacher(runs_root, data.num_classes), data.test_loader, data.coco_gt,
                               data.eval_image_ids)
    atomic_write_text(json.dumps({"checkpoint_mtime": stamp, "stats": stats}) + "\n", path)
    log("teacher on the test canvases: " + " ".join(f"{k}={v:.4f}" for k, v in stats.items()))
    return stats


def _teacher(runs_root, num_classes: int):
    section = load_config(P.teacher_config(runs_root)).student
    return build_model(section.model_copy(update={"checkpoint": str(P.teacher_checkpoint(runs_root))}), num_classes,
                       3, "teacher")


def step_overhead(runs_root, methods: list[str], steps: int = 5, warmup: int = 2, log=print) -> dict[str, float]:
    """Median seconds of one training step (forward, backward, update; batch 8) of each row's student,
    the rows interleaved so that all see the same machine load: {method: seconds}. Measured once (under
    a lock, so a second shell waits for it) and kept in the runs directory."""
    path = Path(runs_root) / P.NAME / SPEED
    with run_lock(Path(runs_root) / P.NAME / "speed", log=log):
        saved = json.loads(path.read_text()) if path.is_file() else {}
        if all(m in saved for m in methods):
            return {m: saved[m] for m in methods}
        teacher = _teacher(runs_root, 10)
        trainers, fns = {}, {}
        try:
            for m in methods:
                cfg = load_config(P.student_config(m, 0, runs_root, run_name=f"speed/{m}"))
                t = make_trainer(cfg, overwrite=True, log=lambda *_: None, teachers=[teacher] if cfg.teacher else [])
                trainers[m] = t
                t.setup_terms()
                opt = t.make_optimizer(t.distiller.trainable_parameters(), cfg.optim.lr)
                fns[m] = _stepper(t.distiller, opt, [b for _, b in zip(range(steps + warmup), iter(t.train_loader))])
            log(f"timing one training step of {', '.join(methods)} ({steps} interleaved rounds after {warmup})")
            speed = interleaved_medians(fns, steps, warmup)
        finally:
            for t in trainers.values():
                t.close()
        atomic_write_text(json.dumps(saved | speed, indent=2) + "\n", path)
    return speed


def read_speed(runs_root) -> dict[str, float]:
    """The step times measured so far (empty before the first full run)."""
    path = Path(runs_root) / P.NAME / SPEED
    return json.loads(path.read_text()) if path.is_file() else {}


def _stepper(distiller, opt, batches):
    distiller.train()
    state = {"i": 0}

    def step():
        b = batches[state["i"] % len(batches)]
        torch.manual_seed(state["i"])
        state["i"] += 1
        total, _, _ = distiller(dict(b, epoch=0, num_epochs=P.STUDENT_EPOCHS, step=state["i"]))
        total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def run_detection(runs_root="runs/bench", out="benchmarks", fmnist_root=None, seeds=P.SEEDS,
                  methods: list[str] | None = None, command: list[str] | None = None, train: bool = True,
                  log=print) -> list[dict]:
    """Protocol D end to end (``train=False``: only the results files, from the runs finished so far)."""
    methods = check_rows(methods or list(P.ROWS))
    if train:
        P.make_data(runs_root, fmnist_root, log)
        jobs = [((m, s), lambda m=m, s=s: P.student_config(m, s, runs_root), [P.teacher_config(runs_root)])
                for m in methods for s in seeds]
        bar = tqdm(total=len(jobs), desc=f"{P.REPORT} runs", unit="run")
        run_or_load(P.teacher_config(runs_root), log=bar.write)
        results = dict(shared_queue(jobs, run_or_report, bar))
        bar.close()
    else:
        results = {(m, s): load_result(P.student_config(m, s, runs_root)) for m in methods for s in seeds}
    teacher = load_finished(P.teacher_config(runs_root))
    if teacher is None:
        raise FileNotFoundError(f"the teacher run {Path(runs_root) / P.NAME / 'teacher'} has not finished")
    speed = step_overhead(runs_root, methods, log=log) if train else read_speed(runs_root)
    table = det_report.write_results(det_report.summarise(results, speed),
                                     det_report.teacher_row(teacher, teacher_test(runs_root, log)), out,
                                     report.stamp(command=command), seeds)
    return table


def run_detection_diagnostics(runs_root="runs/bench", out="benchmarks", fmnist_root=None, seeds=P.SEEDS,
                              command: list[str] | None = None, train: bool = True,
                              only: list[str] | None = None) -> list[dict]:
    """The diagnostic runs (:data:`det_protocol.DIAGNOSTICS`; ``only``: those) reported beside the vanilla row and
    the rows they change at the same seeds, as the protocol's own command left them (a row that diverged is not
    tried again here); writes ``out/<REPORT>-diagnostics.md`` (``train=False``: from the runs finished so far)."""
    diags = only or list(P.DIAGNOSTICS)
    bad = [n for n in diags if n not in P.DIAGNOSTICS]
    if bad:
        raise ValueError(f"unknown diagnostic run(s) {bad}; the protocol's are {', '.join(P.DIAGNOSTICS)}")
    names = list(dict.fromkeys(["vanilla", *(P.DIAGNOSTICS[n][0] for n in diags), *diags]))

    def config(name: str, seed: int) -> dict:
        return P.student_config(name, seed, runs_root) if name in P.ROWS else P.diagnostic_config(name, seed, runs_root)

    if train:
        P.make_data(runs_root, fmnist_root)
        jobs = [((n, s), lambda n=n, s=s: config(n, s), [P.teacher_config(runs_root)]) for n in diags for s in seeds]
        bar = tqdm(total=len(jobs), desc=f"{P.REPORT} diagnostics", unit="run")
        run_or_load(P.teacher_config(runs_root), log=bar.write)
        trained = dict(shared_queue(jobs, run_or_report, bar))
        bar.close()
    results = {(n, s): load_result(config(n, s)) for n in names for s in seeds}
    if train:
        results |= trained
    return det_diagnostics.write_diagnostics(results, out, report.stamp(command=command))


def calibrate(runs_root="runs/bench", out="benchmarks", fmnist_root=None, methods: list[str] | None = None,
              batches: int = 8, log=print) -> dict[str, dict[str, float]]:
    """The rule that sets the benchmark's distillation weights, measured: for each row's terms at their
    recipe weights, the gradient norm on the student relative to the detector's own losses' (``det``),
    averaged over the same first ``batches`` training batches, the student at its seed-0 initialisation
    and the trained teacher (no accuracy of any split is read). Writes ``out/fmnist-det-v1-calibration.md``;
    returns {row: {term: ratio}}."""
    methods = [m for m in check_rows(methods or list(P.ROWS)) if m != "vanilla"]
    P.make_data(runs_root, fmnist_root, log)
    run_or_load(P.teacher_config(runs_root), log=log)
    teacher = _teacher(runs_root, 10)
    ratios = {}
    for m in methods:
        cfg = load_config(P.student_config(m, 0, runs_root, run_name=f"calibration/{m}",
                                           terms=P.recipe_terms(m)))
        t = make_trainer(cfg, overwrite=True, log=lambda *_: None, teachers=[teacher])
        try:
            t.setup_terms()
            t.distiller.train()
            params = [p for p in t.student.parameters() if p.requires_grad]
            sums: dict[str, float] = {}
            for i, b in zip(range(batches), iter(t.train_loader)):
                torch.manual_seed(i)
                _, parts, _ = t.distiller(dict(b, epoch=0, num_epochs=P.STUDENT_EPOCHS, step=i))
                norms = {k: float(v) for k, v in term_grad_norms(parts, params).items()}
                for k, v in norms.items():
                    if k != "det":
                        sums[k] = sums.get(k, 0.0) + v / norms["det"] / batches
            ratios[m] = sums
            log(f"{m}: gradient norm / det's: " + ", ".join(f"{k} {v:.4g}" for k, v in sums.items()))
        finally:
            t.close()
    det_report.write_calibration(ratios, out, report.stamp(command=["python", "-m", "benchtools", "detection",
                                                                    "--calibrate"]))
    return ratios
