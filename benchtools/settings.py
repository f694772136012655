"""`python -m benchtools settings --setting ensemble|privileged|crossmodal|selfdistill`
(docs/benchmarks.md, protocol C).

FMNIST-KD v1 data, splits and student schedule (12 epochs, seeds 0-2), each row's loss the
method's FMNIST preset (A-row tuning reused: the settings do not change a method's scale).
Every run is a resumable run directory under ``--runs``/fmnist-settings-v1 (teachers are A's,
under fmnist-kd-v1, shared); finished runs are skipped. Results:
``--out``/fmnist-settings-v1-<setting>.md/.csv/.png (benchtools.settings_report). The rows of each
setting: benchtools.settings_spec; its shipped example configs: benchtools.settings_presets.

- ensemble: 1, 2 and 4 resnet32 teachers (seeds 0-3); rows KD, CRD, WCoRD, WKD-L per count;
  one teacher is A's job of the same method and seed (its run directory under fmnist-kd-v1), so
  A's finished students are reused, not trained twice, and so is the vanilla row (no teacher);
  the findings compare counts on paired seeds (the same seed at 1 and at 4 teachers) and call the
  CRD-vs-KD question by a paired t-test at 95%;
  the chart is the student's test error against the number of teachers (CRD Figure 4).
- privileged: teacher on the full 28x28 image, student on the same crop 2x average-pooled.
- crossmodal: teacher trained on the lowpass view (5x5 box blur), student on the highpass view.
  Both view settings: rows vanilla, KD, CRD, CRD+KD, WCoRD, WCoRD+KD, with the linear probe of
  each student (``wdistill probe``: logistic regression on the frozen embedding of the 10,000
  training images, scored on the test set).
- selfdistill: the resnet8 teacher is A's vanilla student of the same seed (CE, the student
  schedule), then born-again generations 1-3 of resnet8 for KD and WKD-L (as ``wdistill distill
  --generations 3`` does).
"""
from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from benchtools import protocol, report, settings_report
from benchtools import settings_spec as spec
from benchtools.runs import diverged, load_result, run_or_report, teacher_sections
from benchtools.tuning import describe
from wdistill.config.load import apply_overrides, load_config
from wdistill.config.presets import recipe
from wdistill.losses.recipes import scale_epoch_params
from wdistill.workflows import probe  # as a module: its functions are looked up at call time (tests replace them)
from wdistill.workflows.reuse import run_dir_of, run_lock, shared_queue
from wdistill.workflows.selfdistill import generation_config


def _teacher(seed: int, runs_root, root, overrides, view: dict | None = None, name: str = "teacher") -> dict:
    """A's resnet32 teacher of ``seed`` (or one trained on ``view``, in its own run directory)."""
    cfg = protocol.teacher_config(runs_root, root, seed)
    if view is not None:
        cfg["student"]["view"] = view
        cfg["run"]["name"] = f"{name}/seed{seed}"
    return apply_overrides(cfg, overrides or [])


def _student(method: str, seed: int, run_name: str, runs_root, root) -> dict:
    terms = scale_epoch_params(recipe(method), spec.SCHEDULE.epochs)
    cfg = protocol.student_config(method, terms, spec.SCHEDULE, seed, runs_root, root, run_name=run_name)
    cfg.pop("teacher", None)
    return cfg


def _a_student(method: str, seed: int, runs_root, root) -> dict:
    """A's job of ``method`` and ``seed`` (FMNIST-KD v1, its run directory): reused when finished."""
    return protocol.student_config(method, recipe(method), protocol.FULL, seed, runs_root, root)


def _section(teacher_cfg: dict, view: dict | None = None) -> dict:
    section = {"model": teacher_cfg["student"]["model"], "checkpoint": str(run_dir_of(teacher_cfg) / "student.pt")}
    if teacher_cfg["student"].get("view") or view:
        section["view"] = view or teacher_cfg["student"]["view"]
    return section


def plan(setting: str, seeds: list[int], runs_root="runs/bench", root=None, overrides=None,
         teacher_overrides=None) -> list[tuple[str, int | None, dict]]:
    """Every job of ``setting`` in order: (row, seed, config dict); teachers first (row 'teacher...')."""
    if setting not in spec.SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {', '.join(spec.SETTINGS)}")
    ov, jobs = overrides or [], []
    if setting == "ensemble":
        teachers = [_teacher(s, runs_root, root, teacher_overrides) for s in range(max(spec.ENSEMBLE_SIZES))]
        jobs += [(f"teacher seed{s}", None, t) for s, t in enumerate(teachers)]
        # seeds outermost: a run stopped early leaves whole seeds (every count and method) to report
        for seed in seeds:
            # no teacher: A's vanilla resnet8 of this seed (reused), the baseline of the gains
            jobs.append(("vanilla", seed, apply_overrides(_a_student("vanilla", seed, runs_root, root), ov)))
            for n in spec.ENSEMBLE_SIZES:
                for m in spec.ENSEMBLE_METHODS:
                    if n == 1:  # one teacher is A's row of this method and seed: the same job, reused
                        cfg = _a_student(m, seed, runs_root, root)
                    else:
                        cfg = _student(m, seed, f"ensemble/{m}/n{n}/seed{seed}", runs_root, root)
                        cfg["teachers"] = [_section(t) for t in teachers[:n]]
                    jobs.append((f"{m} n={n}", seed, apply_overrides(cfg, ov)))
    elif setting in spec.VIEWS:
        t_view, s_view = spec.VIEWS[setting]
        teacher = _teacher(0, runs_root, root, teacher_overrides, t_view, name="teacher-lowpass")
        jobs.append(("teacher", None, teacher))
        for m in spec.VIEW_METHODS:
            for seed in seeds:
                cfg = _student(m, seed, f"{setting}/{m}/seed{seed}", runs_root, root)
                cfg["student"]["view"] = s_view
                if m != "vanilla":
                    cfg["teacher"] = _section(teacher)
                jobs.append((m, seed, apply_overrides(cfg, ov)))
    else:  # selfdistill: generation k of each method from generation k-1's student
        for seed in seeds:
            # generation 0: A's vanilla resnet8 of this seed (CE, the student schedule), reused if finished
            base = apply_overrides(_a_student("vanilla", seed, runs_root, root), ov)
            jobs.append(("teacher (resnet8, CE)", seed, base))
            for m in spec.SELF_METHODS:
                cfg = _student(m, seed, f"selfdistill/{m}/seed{seed}", runs_root, root)
                cfg["teacher"] = _section(base)
                chain = load_config(apply_overrides(cfg, ov))
                for k in range(1, spec.GENERATIONS + 1):
                    jobs.append((f"{m} gen{k}", seed, generation_config(chain, k).model_dump(mode="json")))
    return jobs


def probe_or_load(run_dir: Path, l2: float = spec.PROBE_L2) -> float:
    """Linear-probe test top-1 of a finished run (computed once, kept in its probe.json)."""
    f = run_dir / "probe.json"
    if f.is_file():
        lin = json.loads(f.read_text()).get("linear")
        if lin and lin.get("l2") == l2 and lin.get("checkpoint") == str(run_dir / "student.pt"):
            return lin["top1"]
    return probe.record(run_dir, "linear", probe.linear_probe(run_dir, l2))["linear"]["top1"]


def recorded_finetune(run_dir: Path, epochs: int, lr: float = 0.01) -> dict | None:
    """The fine-tune of ``epochs`` at ``lr`` recorded in the run's probe.json, if any."""
    f = run_dir / "probe.json"
    ft = (json.loads(f.read_text()).get("finetune") or {}) if f.is_file() else {}
    return ft if ft.get("epochs") == epochs and ft.get("lr") == lr else None


def finetune_or_load(run_dir: Path, epochs: int, lr: float = 0.01) -> float:
    """Test top-1 after fine-tuning the whole student by CE (``wdistill probe --finetune``), once."""
    ft = recorded_finetune(run_dir, epochs, lr)
    if ft and (run_dir / "finetune" / "summary.json").is_file():
        return ft["top1"]
    result = probe.finetune(run_dir, epochs, lr, resume=True, log=lambda m: None)
    return probe.record(run_dir, "finetune", result)["finetune"]["top1"]


def finished_finetune(run_dir: Path, epochs: int) -> dict:
    """``{"finetune_top1": ...}`` if the run was fine-tuned for ``epochs`` earlier, else ``{}``."""
    ft = recorded_finetune(run_dir, epochs) if epochs else None
    return {"finetune_top1": ft["top1"]} if ft else {}


def run_settings(
    setting: str,
    seeds: list[int] | None = None,
    runs_root="runs/bench",
    out="benchmarks",
    root=None,
    command: list[str] | None = None,
    log=print,
    overrides=None,
    teacher_overrides=None,
    train: bool = True,
    finetune_epochs: int = 0,
) -> list[dict]:
    """Train (or reuse) every job of ``setting``, probe the view settings' students (and fine-tune
    them for ``finetune_epochs`` if > 0), write results. A job whose loss becomes non-finite is listed as
    diverged (not in the table) and the queue goes on."""
    seeds = list(seeds if seeds is not None else spec.SCHEDULE.seeds)
    jobs = plan(setting, seeds, runs_root, root, overrides, teacher_overrides)
    students = {run_dir_of(cfg) for row, _, cfg in jobs if setting in spec.VIEWS and not row.startswith("teacher")}
    get = _job_getter(students, train, finetune_epochs)
    rows, settings, missing, diverged_jobs = _run_jobs(setting, jobs, get, train)
    table = _table(jobs, rows)
    settings_report.write_results(setting, table, Path(out), settings, seeds, command, missing, diverged_jobs)
    return table


def _job_getter(students: set[Path], train: bool, finetune_epochs: int):
    """The shared queue's ``get``: a job's summary, trained (or reused) unless ``train`` is False,
    with its probe (and fine-tune) for a view setting's student (a run directory in ``students``)."""

    def get(cfg, log=print, wait=True):
        """The job's summary, with its probe (and fine-tune) for a view setting's student. These run
        under the job's bench lock, so a second shell defers or waits for them as for training."""
        summary = run_or_report(cfg, log=log, wait=wait) if train else load_result(cfg)
        run_dir = run_dir_of(cfg)
        if not summary or diverged(summary) or run_dir not in students:
            return summary
        if not train:  # report-only: the probe (quick, deterministic) and the fine-tune finished earlier
            return {**summary, "probe_top1": probe_or_load(run_dir), **finished_finetune(run_dir, finetune_epochs)}
        with run_lock(run_dir, log=log, wait=wait):
            summary = {**summary, "probe_top1": probe_or_load(run_dir)}
            if finetune_epochs:
                summary["finetune_top1"] = finetune_or_load(run_dir, finetune_epochs)
        return summary

    return get


def _needs(cfg: dict, made_by: dict[str, dict]) -> list[dict]:
    """The jobs of the plan whose checkpoints ``cfg`` distils from (its teachers trained here)."""
    return [made_by[t["checkpoint"]] for t in teacher_sections(cfg) if t["checkpoint"] in made_by]


def _run_jobs(setting: str, jobs: list[tuple[str, int | None, dict]], get, train: bool):
    """Every job through the shared queue (a teacher before its students): (rows, settings,
    missing, diverged) = {row: its runs' summaries}, {row: its loss in words}, the jobs not finished, the jobs
    whose loss became non-finite."""
    rows: dict[str, list[dict]] = {}
    settings: dict[str, str] = {}
    missing, diverged_jobs = [], []
    made_by = {str(run_dir_of(cfg) / "student.pt"): cfg for _, _, cfg in jobs}  # checkpoint -> its job
    bar = tqdm(total=len(jobs), desc=f"settings: {setting}", unit="run", disable=not train)
    queue = [
        ((row, seed, i), (lambda cfg=cfg: cfg), _needs(cfg, made_by) if train else [])
        for i, (row, seed, cfg) in enumerate(jobs)
    ]
    for (row, seed, i), summary in shared_queue(queue, get, bar):
        cfg = jobs[i][2]
        if diverged(summary):
            diverged_jobs.append(f"{row} seed {seed}")
            continue
        if not summary:
            missing.append(f"{row} seed {seed}")
            continue
        rows.setdefault(row, []).append({**summary, "seed": cfg["run"]["seed"]})
        settings.setdefault(row, describe(cfg["loss"]) or "CE only")
    bar.close()
    return rows, settings, missing, diverged_jobs


def _table(jobs: list[tuple[str, int | None, dict]], rows: dict[str, list[dict]]) -> list[dict]:
    """The results table: one row per plan row with runs, its seeds' top-1, the teachers' top-1,
    and the probe and fine-tune statistics where measured."""
    first = {}  # the plan's row order and seed order, whatever order the shared queue finished them in
    for i, (row, _, _) in enumerate(jobs):
        first.setdefault(row, i)
    rows = {r: sorted(rows[r], key=lambda x: x["seed"]) for r in sorted(rows, key=first.get)}
    table = report.summarise(rows, baseline="vanilla")
    for r in table:
        r["by_seed"] = {x["seed"]: x["final_top1"] for x in rows[r["method"]]}
        r["teacher_top1"] = next((x["teacher_top1"] for x in rows[r["method"]] if "teacher_top1" in x), None)
        for key in ("probe", "finetune"):
            vals = [x[f"{key}_top1"] for x in rows[r["method"]] if f"{key}_top1" in x]
            r[f"{key}_mean"], r[f"{key}_std"] = report.mean_std(vals) if vals else (None, None)
    return table
