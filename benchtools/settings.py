"""`wdistill bench settings --setting ensemble|privileged|crossmodal|selfdistill` (BENCHMARK.md C).

FMNIST-KD v1 data, splits and student schedule (12 epochs, seeds 0-2), each row's loss the
method's FMNIST preset (A-row tuning reused: the settings do not change a method's scale).
Every run is a resumable run directory under ``--runs``/fmnist-settings-v1 (teachers are A's,
under fmnist-kd-v1, shared); finished runs are skipped. Results:
``--out``/fmnist-settings-v1-<setting>.md/.csv/.png.

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

import csv
import io
from pathlib import Path

from tqdm.auto import tqdm

from wdistill.engine.checkpoint import atomic_write_text
from wdistill.config.schema import apply_overrides, load_config
from wdistill.config.presets import LABELS, recipe, scale_epoch_params
from benchtools import protocol
from benchtools import report
from wdistill.workflows.reuse import load_finished, run_dir_of, run_lock, run_or_load, shared_queue
from benchtools.tuning import describe

SETTINGS = ("ensemble", "privileged", "crossmodal", "selfdistill")
SCHEDULE = protocol.Schedule("fmnist-settings-v1", False, protocol.FULL.epochs, "test", (0, 1, 2))
ENSEMBLE_METHODS, ENSEMBLE_SIZES = ("kd", "crd", "wcord", "wkd_l"), (1, 2, 4)
VIEW_METHODS = ("vanilla", "kd", "crd", "crd_kd", "wcord", "wcord_kd")
SELF_METHODS, GENERATIONS = ("kd", "wkd_l"), 3
VIEWS = {"privileged": (None, {"name": "downsample", "factor": 2}),
         "crossmodal": ({"name": "lowpass", "size": 5}, {"name": "highpass", "size": 5})}
PROBE_L2 = 1e-4
COMMON_TEXT = ("FMNIST-KD v1 data and splits (10,000 training images, the 10,000 test images), resnet8 students, "
               "12 epochs, SGD 0.05 cosine; each row's loss is the method's FMNIST preset (tuned in A). Mean ± sample "
               "std over seeds; the teacher row is one run.")
SETTING_TEXT = {
    "ensemble": "Ensembles (CRD Figure 4): 1, 2 and 4 resnet32 teachers (seeds 0..n-1, 30 epochs each). Logit terms "
                "read the teachers' mean distribution; CRD and WCoRD have one memory bank and head per teacher, "
                "weighted 1/n. The one-teacher rows and the vanilla row (no teacher) are A's students of the same "
                "method and seed (the same jobs). Counts are compared on paired seeds.",
    "privileged": "Privileged information (WCoRD): the teacher sees the full 28x28 image, the student the same "
                  "crop 2x average-pooled to 14x14, also at test time. Linear probe: L2 logistic regression "
                  f"(l2={PROBE_L2:g}) on the frozen student embedding of the training images, scored on the test set.",
    "crossmodal": "Cross-modal transfer (CRD Figure 3): the teacher is trained and run on the lowpass view (5x5 box "
                  "blur), the student sees the highpass view (image minus that blur), also at test time. Linear "
                  f"probe: L2 logistic regression (l2={PROBE_L2:g}) on the frozen student embedding of the training "
                  "images, scored on the test set.",
    "selfdistill": "Self-distillation (WKD, born-again): the teacher is A's vanilla resnet8 (CE) of the same seed; "
                   "generation k+1 is distilled from generation k's student with the same method.",
}


def _teacher(seed: int, runs_root, root, overrides, view: dict | None = None, name: str = "teacher") -> dict:
    """A's resnet32 teacher of ``seed`` (or one trained on ``view``, in its own run directory)."""
    cfg = protocol.teacher_config(runs_root, root, seed)
    if view is not None:
        cfg["student"]["view"] = view
        cfg["run"]["name"] = f"{name}/seed{seed}"
    return apply_overrides(cfg, overrides or [])


def _student(method: str, seed: int, run_name: str, runs_root, root) -> dict:
    cfg = protocol.student_config(method, scale_epoch_params(recipe(method), SCHEDULE.epochs), SCHEDULE, seed,
                                  runs_root, root, run_name=run_name)
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
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {', '.join(SETTINGS)}")
    ov, jobs = overrides or [], []
    if setting == "ensemble":
        teachers = [_teacher(s, runs_root, root, teacher_overrides) for s in range(max(ENSEMBLE_SIZES))]
        jobs += [(f"teacher seed{s}", None, t) for s, t in enumerate(teachers)]
        # seeds outermost: a run stopped early leaves whole seeds (every count and method) to report
        for seed in seeds:
            # no teacher: A's vanilla resnet8 of this seed (reused), the baseline of the gains
            jobs.append(("vanilla", seed, apply_overrides(_a_student("vanilla", seed, runs_root, root), ov)))
            for n in ENSEMBLE_SIZES:
                for m in ENSEMBLE_METHODS:
                    if n == 1:  # one teacher is A's row of this method and seed: the same job, reused
                        cfg = _a_student(m, seed, runs_root, root)
                    else:
                        cfg = _student(m, seed, f"ensemble/{m}/n{n}/seed{seed}", runs_root, root)
                        cfg["teachers"] = [_section(t) for t in teachers[:n]]
                    jobs.append((f"{m} n={n}", seed, apply_overrides(cfg, ov)))
    elif setting in VIEWS:
        t_view, s_view = VIEWS[setting]
        teacher = _teacher(0, runs_root, root, teacher_overrides, t_view, name="teacher-lowpass")
        jobs.append(("teacher", None, teacher))
        for m in VIEW_METHODS:
            for seed in seeds:
                cfg = _student(m, seed, f"{setting}/{m}/seed{seed}", runs_root, root)
                cfg["student"]["view"] = s_view
                if m != "vanilla":
                    cfg["teacher"] = _section(teacher)
                jobs.append((m, seed, apply_overrides(cfg, ov)))
    else:  # selfdistill: generation k of each method from generation k-1's student
        from wdistill.workflows.selfdistill import generation_config
        for seed in seeds:
            # generation 0: A's vanilla resnet8 of this seed (CE, the student schedule), reused if finished
            base = apply_overrides(_a_student("vanilla", seed, runs_root, root), ov)
            jobs.append(("teacher (resnet8, CE)", seed, base))
            for m in SELF_METHODS:
                cfg = _student(m, seed, f"selfdistill/{m}/seed{seed}", runs_root, root)
                cfg["teacher"] = _section(base)
                chain = load_config(apply_overrides(cfg, ov))
                for k in range(1, GENERATIONS + 1):
                    jobs.append((f"{m} gen{k}", seed, generation_config(chain, k).model_dump(mode="json")))
    return jobs


def probe_or_load(run_dir: Path, l2: float = PROBE_L2) -> float:
    """Linear-probe test top-1 of a finished run (computed once, kept in its probe.json)."""
    import json

    from wdistill.workflows.probe import linear_probe, record

    f = run_dir / "probe.json"
    if f.is_file():
        lin = json.loads(f.read_text()).get("linear")
        if lin and lin.get("l2") == l2 and lin.get("checkpoint") == str(run_dir / "student.pt"):
            return lin["top1"]
    return record(run_dir, "linear", linear_probe(run_dir, l2))["linear"]["top1"]


def recorded_finetune(run_dir: Path, epochs: int, lr: float = 0.01) -> dict | None:
    """The fine-tune of ``epochs`` at ``lr`` recorded in the run's probe.json, if any."""
    import json

    f = run_dir / "probe.json"
    ft = (json.loads(f.read_text()).get("finetune") or {}) if f.is_file() else {}
    return ft if ft.get("epochs") == epochs and ft.get("lr") == lr else None


def finetune_or_load(run_dir: Path, epochs: int, lr: float = 0.01) -> float:
    """Test top-1 after fine-tuning the whole student by CE (``wdistill probe --finetune``), once."""
    from wdistill.workflows.probe import finetune, record

    ft = recorded_finetune(run_dir, epochs, lr)
    if ft and (run_dir / "finetune" / "summary.json").is_file():
        return ft["top1"]
    return record(run_dir, "finetune", finetune(run_dir, epochs, lr, resume=True, log=lambda m: None))["finetune"]["top1"]


def finished_finetune(run_dir: Path, epochs: int) -> dict:
    """``{"finetune_top1": ...}`` if the run was fine-tuned for ``epochs`` earlier, else ``{}``."""
    ft = recorded_finetune(run_dir, epochs) if epochs else None
    return {"finetune_top1": ft["top1"]} if ft else {}


def run_settings(setting: str, seeds: list[int] | None = None, runs_root="runs/bench", out="benchmarks",
                 root=None, command: list[str] | None = None, log=print, overrides=None, teacher_overrides=None,
                 train: bool = True, finetune_epochs: int = 0) -> list[dict]:
    """Train (or reuse) every job of ``setting``, probe the view settings' students (and fine-tune
    them for ``finetune_epochs`` if > 0), write results."""
    seeds = list(seeds if seeds is not None else SCHEDULE.seeds)
    jobs = plan(setting, seeds, runs_root, root, overrides, teacher_overrides)
    students = {run_dir_of(cfg) for row, _, cfg in jobs if setting in VIEWS and not row.startswith("teacher")}

    def get(cfg, log=print, wait=True):
        """The job's summary, with its probe (and fine-tune) for a view setting's student. These run
        under the job's bench lock, so a second shell defers or waits for them as for training."""
        summary = run_or_load(cfg, log=log, wait=wait) if train else load_finished(cfg)
        run_dir = run_dir_of(cfg)
        if not summary or run_dir not in students:
            return summary
        if not train:  # report-only: the probe (quick, deterministic) and the fine-tune finished earlier
            return {**summary, "probe_top1": probe_or_load(run_dir), **finished_finetune(run_dir, finetune_epochs)}
        with run_lock(run_dir, log=log, wait=wait):
            summary = {**summary, "probe_top1": probe_or_load(run_dir)}
            if finetune_epochs:
                summary["finetune_top1"] = finetune_or_load(run_dir, finetune_epochs)
        return summary

    rows: dict[str, list[dict]] = {}
    settings: dict[str, str] = {}
    missing = []
    made_by = {str(run_dir_of(cfg) / "student.pt"): cfg for _, _, cfg in jobs}  # checkpoint -> its job

    def needs(cfg: dict) -> list[dict]:
        teachers = cfg.get("teachers") or ([cfg["teacher"]] if cfg.get("teacher") else [])
        return [made_by[t["checkpoint"]] for t in teachers if t["checkpoint"] in made_by]

    bar = tqdm(total=len(jobs), desc=f"settings: {setting}", unit="run", disable=not train)
    queue = [((row, seed, i), (lambda cfg=cfg: cfg), needs(cfg) if train else [])
             for i, (row, seed, cfg) in enumerate(jobs)]
    for (row, seed, i), summary in shared_queue(queue, get, bar):
        cfg = jobs[i][2]
        if not summary:
            missing.append(f"{row} seed {seed}")
            continue
        rows.setdefault(row, []).append({**summary, "seed": cfg["run"]["seed"]})
        settings.setdefault(row, describe(cfg["loss"]) or "CE only")
    bar.close()
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
    write_results(setting, table, Path(out), settings, seeds, command, missing)
    return table


def _label(row: str) -> str:
    head, _, tail = row.partition(" ")
    return f"{LABELS.get(head, head)} {tail}".strip()


def findings(setting: str, table: list[dict]) -> list[str]:
    """The papers' orderings, checked against the table (the reasons are the reader's to add)."""
    by = {r["method"]: r for r in table}
    notes = []
    if setting == "ensemble":
        lo, hi = ENSEMBLE_SIZES[0], ENSEMBLE_SIZES[-1]
        tops = {n: next((r["teacher_top1"] for r in table if r["method"].endswith(f" n={n}")
                         and r.get("teacher_top1") is not None), None) for n in ENSEMBLE_SIZES}
        if all(v is not None for v in tops.values()):  # what the students can gain: the teachers' own top-1
            notes.append("The teachers' test top-1 (mean logits of the ensemble): "
                         + ", ".join(f"{v:.2f} with {n}" for n, v in tops.items()) + ".")
        gains = {}  # method -> {seed: top-1 with hi teachers - top-1 with lo teachers}
        for m in ENSEMBLE_METHODS:
            a, b = by.get(f"{m} n={lo}"), by.get(f"{m} n={hi}")
            if a and b and (common := sorted(set(a["by_seed"]) & set(b["by_seed"]))):
                gains[m] = {s: b["by_seed"][s] - a["by_seed"][s] for s in common}
                mean, std = report.mean_std(list(gains[m].values()))
                spread = f" ± {std:.2f}" if len(common) > 1 else ""
                notes.append(f"{LABELS[m]}: {hi} teachers against {lo}, paired by seed: {mean:+.2f}{spread} "
                             f"(seed{'s' * (len(common) > 1)} {_seeds(common)}).")
        if "crd" in gains and "kd" in gains:
            common = sorted(set(gains["crd"]) & set(gains["kd"]))
            notes.append("More teachers help CRD more than KD (CRD Figure 4): "
                         + _verdict([gains["crd"][s] - gains["kd"][s] for s in common], common))
    elif setting in VIEWS:
        for key, what in (("final_mean", "student top-1"), ("probe_mean", "linear probe"),
                          ("finetune_mean", "fine-tuned top-1")):
            vals = {m: by[m][key] for m in ("kd", "crd", "wcord") if m in by and by[m].get(key) is not None}
            if len(vals) == 3:
                ok = vals["wcord"] >= vals["crd"] > vals["kd"]
                notes.append(f"WCoRD >= CRD > KD on {what}: {'yes' if ok else 'NO'} ("
                             + ", ".join(f"{LABELS[m]} {v:.2f}" for m, v in vals.items()) + ").")
    else:
        for m in SELF_METHODS:
            gens = [by.get(f"{m} gen{k}") for k in range(1, GENERATIONS + 1)]
            if all(gens):
                notes.append(f"{LABELS[m]} by generation: " + ", ".join(f"{g['final_mean']:.2f}" for g in gens) + ".")
    return notes


def _seeds(seeds: list[int]) -> str:
    return ", ".join(map(str, seeds))


# Student's t, two-sided 95%: the 0.975 quantile for 1..10 degrees of freedom (beyond 10 the
# value for 10 is used, which is conservative: the quantile falls towards 1.96)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def _verdict(diffs: list[float], seeds: list[int]) -> str:
    """Is the mean of the paired differences ``diffs`` other than zero? A paired t-test at 95%
    (two-sided): yes or no only when |mean| / standard error passes Student's t quantile, which
    with 2 or 3 seeds asks for much more than two standard errors; otherwise not resolved."""
    if len(diffs) < 2:
        return f"not resolved: one paired seed ({_seeds(seeds)}), the difference is {diffs[0]:+.2f}." if diffs else \
            "not resolved: no seed has all four rows."
    mean, std = report.mean_std(diffs)
    se, t = std / len(diffs) ** 0.5, T975[min(len(diffs) - 1, len(T975)) - 1]
    say = "yes" if mean > t * se else "NO, the opposite" if mean < -t * se else "not resolved, within noise"
    return (f"{say} (CRD's gain minus KD's, paired over seeds {_seeds(seeds)}: {mean:+.2f}, standard error "
            f"{se:.2f}; a paired t-test at 95% needs |mean| > {t:.2f} standard errors).")


def write_results(setting: str, table: list[dict], out: Path, settings: dict, seeds: list[int],
                  command: list[str] | None, missing: list[str]) -> None:
    stem = out / f"{SCHEDULE.name}-{setting}"
    stamp = report.stamp(command=command)
    probe = any(r.get("probe_mean") is not None for r in table)
    ft = any(r.get("finetune_mean") is not None for r in table)
    head = "| row | test top-1 final (mean ± std) | error % |" + (" linear probe top-1 |" if probe else "") + \
        (" fine-tuned top-1 |" if ft else "") + " gain vs vanilla | runs | settings |"
    lines = [f"# FMNIST settings v1: {setting}\n", report.stamp_markdown(stamp), SETTING_TEXT[setting] + " "
             + COMMON_TEXT + "\n", head,
             "|---|---:|---:|" + ("---:|" if probe else "") + ("---:|" if ft else "") + "---:|---:|---|"]
    for r in table:
        pm = "" if r.get("probe_mean") is None else report._pm(r["probe_mean"], r["probe_std"], r["n"])
        fm = "" if r.get("finetune_mean") is None else report._pm(r["finetune_mean"], r["finetune_std"], r["n"])
        gain = "" if r["gain"] is None else f"{r['gain']:+.2f}"
        lines.append(f"| {_label(r['method'])} | {report._pm(r['final_mean'], r['final_std'], r['n'])} | "
                     f"{100 - r['final_mean']:.2f} |" + (f" {pm} |" if probe else "") + (f" {fm} |" if ft else "") +
                     f" {gain} | {r['n']} | {settings.get(r['method'], '')} |")
    lines += ["", "## Findings", ""] + [f"- {n}" for n in findings(setting, table)]
    notes = stem.parent / f"{stem.name}.notes.md"  # the reader's reasons, written by hand, kept on regeneration
    if notes.is_file():
        lines += ["", notes.read_text().rstrip()]
    if missing:
        lines += ["", "Not finished yet (not in the table): " + ", ".join(missing) + "."]
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text("\n".join(lines) + "\n", stem.with_suffix(".md"))
    buf = io.StringIO()
    buf.write("".join(f"# {k}: {v}\n" for k, v in {**stamp, "seeds": ",".join(map(str, seeds))}.items()))
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "runs", "final_top1_mean", "final_top1_std", "probe_top1_mean", "probe_top1_std",
                "finetune_top1_mean", "finetune_top1_std", "settings"])
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    for r in table:
        w.writerow([r["method"], r["n"], fmt(r["final_mean"]), fmt(r["final_std"]), fmt(r.get("probe_mean")),
                    fmt(r.get("probe_std")), fmt(r.get("finetune_mean")), fmt(r.get("finetune_std")),
                    settings.get(r["method"], "")])
    atomic_write_text(buf.getvalue(), stem.with_suffix(".csv"))
    if setting == "ensemble":
        ensemble_chart(table, stem.with_suffix(".png"))
    else:
        labels = {r["method"]: _label(r["method"]) for r in table}
        report.bar_chart(table, labels, stem.with_suffix(".png"), f"FMNIST settings v1: {setting} (test top-1)")


def ensemble_chart(table: list[dict], path: Path) -> Path:
    """Student test error against the number of teachers, one line per method, error bars = sample
    std over seeds (CRD Figure 4's shape)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {r["method"]: r for r in table}
    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    if "vanilla" in by:  # the student without a teacher, for scale
        v = by["vanilla"]
        ax.axhline(100 - v["final_mean"], color="#888888", linestyle="--", linewidth=1,
                   label=f"vanilla, no teacher ({100 - v['final_mean']:.2f})")
    for i, m in enumerate(ENSEMBLE_METHODS):
        pts = [(n, by[f"{m} n={n}"]) for n in ENSEMBLE_SIZES if f"{m} n={n}" in by]
        if pts:
            dodge = 0.03 * (i - (len(ENSEMBLE_METHODS) - 1) / 2)  # side by side: error bars do not hide each other
            ax.errorbar([n + dodge for n, _ in pts], [100 - r["final_mean"] for _, r in pts],
                        yerr=[r["final_std"] or 0 for _, r in pts], marker="o", capsize=3, label=LABELS[m])
    ax.set_xticks(list(ENSEMBLE_SIZES))
    ax.set_xlabel("number of teachers (resnet32, seeds 0..n-1)")
    ax.set_ylabel("student test error (%)")
    ax.set_title("FMNIST settings v1: ensemble distillation (resnet8 student)\nerror bars: sample std over seeds",
                 fontsize=9)
    ax.grid(color="#e5e5e5")
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: no line hidden
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---- example configs shipped with the package: configs/fmnist/settings/*.yaml ---------------------
PRESETS = {  # file stem: (setting, row of the plan, what it is)
    "ensemble_kd": ("ensemble", "kd n=4", "KD from an ensemble of 4 resnet32 teachers (mean distribution)"),
    "ensemble_crd": ("ensemble", "crd n=4", "CRD from 4 resnet32 teachers (one memory bank and head per teacher, "
                     "weighted 1/4)"),
    "ensemble_wkd_l": ("ensemble", "wkd_l n=4", "WKD-L from 4 resnet32 teachers (mean distributions, mean of the "
                       "teachers' CKA costs)"),
    "privileged_crd": ("privileged", "crd", "privileged information: the teacher sees 28x28, the resnet8 student "
                       "the same crop 2x average-pooled to 14x14; CRD"),
    "privileged_wcord_kd": ("privileged", "wcord_kd", "privileged information (student on 14x14); WCoRD+KD"),
    "crossmodal_teacher": ("crossmodal", "teacher", "cross-modal: the resnet32 teacher trained on the lowpass view "
                           "(5x5 box blur)"),
    "crossmodal_crd": ("crossmodal", "crd", "cross-modal: lowpass teacher, highpass student (image minus the "
                       "blur); CRD"),
    "crossmodal_wcord": ("crossmodal", "wcord", "cross-modal: lowpass teacher, highpass student; WCoRD"),
    "selfdistill_teacher": ("selfdistill", "teacher (resnet8, CE)", "self-distillation: the resnet8 teacher, "
                            "trained by cross-entropy on the student schedule (A's vanilla row)"),
    "selfdistill_kd": ("selfdistill", "kd gen1", "self-distillation: born-again resnet8 generations by KD"),
    "selfdistill_wkd_l": ("selfdistill", "wkd_l gen1", "self-distillation: born-again resnet8 generations by WKD-L"),
}


def _how(row: str) -> str:
    """The command that runs a preset: teachers are trained, students distilled, chains generated."""
    if row.startswith("teacher"):
        return "wdistill train"
    return f"wdistill distill --generations {GENERATIONS}" if row.endswith(" gen1") else "wdistill distill"


def preset_files() -> dict[str, str]:
    """{path under configs/: YAML text} of the shipped example configs, seed 0 of the benchmark's
    runs (same run directories, so `wdistill bench settings` reuses what they train)."""
    import yaml

    files = {}
    jobs = {(s, row): cfg for s in SETTINGS for row, seed, cfg in plan(s, [0]) if seed in (0, None)}
    for stem, (setting, row, what) in PRESETS.items():
        how = _how(row)
        if "--generations" in how:  # the chain's own config: generation 1's teacher, the base name
            m = row.split()[0]
            cfg = _student(m, 0, f"selfdistill/{m}/seed0", "runs/bench", None)
            cfg["teacher"] = _section(jobs[(setting, "teacher (resnet8, CE)")])
        else:
            cfg = jobs[(setting, row)]
        teachers = cfg.get("teachers") or ([cfg["teacher"]] if cfg.get("teacher") else [])
        header = [f"# FMNIST-KD v1, {what}.",
                  "# An example config of BENCHMARK section C (`wdistill bench settings --setting "
                  f"{setting}` runs every row); written by benchtools.settings.preset_files.",
                  f"# Run: {how} configs/fmnist/settings/{stem}.yaml"]
        if teachers:
            header.append("# Needs the teacher checkpoint(s) " + ", ".join(t["checkpoint"] for t in teachers)
                          + ": `wdistill bench settings` (or `wdistill train` of the teacher's config) trains them.")
        files[f"fmnist/settings/{stem}.yaml"] = "\n".join(header) + "\n" + yaml.safe_dump(cfg, sort_keys=False)
    return files


if __name__ == "__main__":  # python -m benchtools.settings: rewrite the shipped example configs
    from wdistill.config.schema import PRESETS_DIR
    for rel, text in preset_files().items():
        atomic_write_text(text, PRESETS_DIR / rel)
        print(f"wrote {PRESETS_DIR / rel}")
