"""`python -m benchtools accuracy`: FMNIST-KD v1 (docs/benchmarks.md, protocol A), tuning and runs (their results
files: benchtools.accuracy_report)."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from benchtools import protocol, report
from benchtools.accuracy_report import write_results
from benchtools.protocol import FULL, TUNE, Schedule
from benchtools.runs import diverged, load_result, run_or_report
from benchtools.tuning import CANDIDATES, apply_candidate, check_budget, describe
from wdistill.config.presets import FMNIST_DIR, recipe
from wdistill.io import atomic_write_text
from wdistill.losses.recipes import LABELS, RECIPES, default_recipe
from wdistill.workflows.reuse import diverged_error, load_finished, run_or_load, shared_queue

METHODS = [m for m in RECIPES if m != "vanilla"]


def _log_to(bar):
    return lambda msg: bar.write(str(msg))


def ensure_teacher(runs_root, root=None, log=print, overrides=None) -> dict:
    """Train (or resume, or reuse) the seed-0 resnet32 teacher every student of every schedule uses."""
    return run_or_load(protocol.teacher_config(runs_root, root, 0, overrides), log)


def check_methods(methods: list[str]) -> list[str]:
    bad = [m for m in methods if m not in RECIPES]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; the protocol's rows are {', '.join(RECIPES)}")
    return methods


def run_tuning(methods: list[str], runs_root="runs/bench", out="benchmarks", root=None, preset_dir=FMNIST_DIR,
               log=print, overrides=None, teacher_overrides=None) -> dict[str, dict]:
    """Train every candidate of every method (quick schedule, seed 0, val split), keep the best by
    final-epoch val top-1 (ties: the earlier candidate, i.e. the published recipe first; a candidate that
    diverged is never kept), write
    ``preset_dir/<method>.yaml`` as soon as a method's candidates are done, and
    ``out/fmnist-kd-v1-tuning.md`` over every method tuned so far. Returns {method: choice}."""
    check_budget()
    methods = [m for m in check_methods(methods) if m in CANDIDATES]
    ensure_teacher(runs_root, root, log, teacher_overrides)
    # The vanilla student on the same split and schedule: the reference every candidate is read against.
    reference = run_or_load(protocol.student_config("vanilla", default_recipe("vanilla"), TUNE, 0, runs_root,
                                                    root, overrides=overrides), log)
    jobs = [(m, i, c) for m in methods for i, c in enumerate(CANDIDATES[m])]
    tried: dict[str, list[tuple[dict, dict]]] = {}
    choices = {}
    bar = tqdm(jobs, desc="tuning runs", unit="run")
    for m, i, cand in bar:
        bar.set_postfix_str(f"{m} #{i}")
        terms = apply_candidate(default_recipe(m), cand)
        cfg = protocol.student_config(m, terms, TUNE, 0, runs_root, root, run_name=f"{m}/cand{i}/seed0",
                                      overrides=overrides)
        tried.setdefault(m, []).append((cand, run_or_report(cfg, _log_to(bar))))
        if len(tried[m]) == len(CANDIDATES[m]):
            choices[m] = choose(m, tried[m])
            write_preset(m, choices[m]["terms"], tried[m], choices[m]["candidate"], runs_root, root, preset_dir)
            write_tuning_report(collect_tuning(runs_root), Path(out) / "fmnist-kd-v1-tuning.md",
                               reference)
    return choices


def choose(method: str, tried: list[tuple[dict, dict]]) -> dict:
    """The best candidate by final val top-1 among those that did not diverge (their val top-1 is None)."""
    stable = [i for i, (_, s) in enumerate(tried) if not diverged(s)]
    if not stable:
        raise ValueError(f"every tuning candidate of {method} diverged; lower optim.lr or the candidates' weights")
    best = max(stable, key=lambda i: (tried[i][1]["final_top1"], -i))
    return {"candidate": best, "terms": apply_candidate(default_recipe(method), tried[best][0]), "tried": [
        {"settings": describe(apply_candidate(default_recipe(method), c)), "val_final": s.get("final_top1"),
         "val_best": s.get("best_top1")} for c, s in tried]}


def collect_tuning(runs_root) -> dict[str, dict]:
    """Choices of every method whose candidates have all finished or diverged (from their run directories)."""
    out = {}
    for m, cands in CANDIDATES.items():
        results = [_tuning_result(Path(runs_root) / TUNE.name / m / f"cand{i}" / "seed0") for i in range(len(cands))]
        if all(r is not None for r in results):
            out[m] = choose(m, list(zip(cands, results)))
    return out


def _tuning_result(run_dir: Path) -> dict | None:
    """A tuning candidate's summary, its diverged mark, or None (not done yet)."""
    if (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text())
    error = diverged_error(run_dir)
    return None if error is None else {"diverged": error}


def write_preset(method: str, terms: list[dict], tried, best: int, runs_root, root, preset_dir) -> Path:
    """configs/fmnist/<method>.yaml: a runnable full-protocol config (seed 0) with the chosen terms."""
    cfg = protocol.student_config(method, terms, FULL, 0, runs_root, root)
    cfg["loss"] = protocol.scale_epoch_params(terms, FULL.epochs)
    header = [f"# FMNIST-KD v1 preset for {LABELS[method]} (resnet32 -> resnet8), written by `python -m benchtools "
              "accuracy --tune`.",
              "# Tuned on the validation split (train images 10,000..14,999), seed 0, quick schedule; val top-1 "
              "(final epoch):"]
    header += [f"#   {'*' if i == best else ' '} {describe(apply_candidate(default_recipe(method), c))}: "
               + ("diverged" if diverged(s) else f"{s['final_top1']:.2f}") for i, (c, s) in enumerate(tried)]
    header.append("# Run: wdistill distill configs/fmnist/" + f"{method}.yaml (needs the cached teacher)")
    path = Path(preset_dir) / f"{method}.yaml"
    atomic_write_text("\n".join(header) + "\n" + yaml.safe_dump(cfg, sort_keys=False), path)
    return path


def write_tuning_report(choices: dict, path: Path, reference: dict | None = None) -> None:
    lines = [
        "# FMNIST-KD v1 tuning (validation split, seed 0, quick schedule)\n",
        report.stamp_markdown(report.stamp()),
        "Validation = official training images 10,000..14,999; training = the first 5,000; 6 epochs. "
        "The test set is not used. The chosen settings go to configs/fmnist/<method>.yaml.\n",
        "| method | candidate settings | val top-1 final | val top-1 best | chosen |",
        "|---|---|---:|---:|:-:|",
    ]
    if reference:
        lines.append(
            f"| vanilla (reference) | CE only | {reference['final_top1']:.2f} | {reference['best_top1']:.2f} | |"
        )
    for m, c in choices.items():
        for i, t in enumerate(c["tried"]):
            top1 = "diverged | " if t["val_final"] is None else f"{t['val_final']:.2f} | {t['val_best']:.2f}"
            lines.append(f"| {LABELS[m]} | {t['settings']} | {top1} | {'yes' if i == c['candidate'] else ''} |")
    atomic_write_text("\n".join(lines) + "\n", path)


def _tuned(method: str, preset_dir) -> bool:
    return (Path(preset_dir) / f"{method}.yaml").is_file()


def run_accuracy(
    schedule: Schedule,
    methods: list[str],
    seeds: list[int] | None = None,
    runs_root="runs/bench",
    out="benchmarks",
    root=None,
    preset_dir=FMNIST_DIR,
    command: list[str] | None = None,
    log=print,
    overrides=None,
    teacher_overrides=None,
    train: bool = True,
) -> list[dict]:
    """Teacher, vanilla and every method under ``schedule``; writes ``out/<schedule>.md|csv|png``.

    ``train=False`` trains nothing: the files report the runs finished so far and list the rest. A student run
    whose loss becomes non-finite is listed as diverged (not in the means) and the queue goes on.
    """
    methods = ["vanilla"] + [m for m in check_methods(methods) if m != "vanilla"]
    seeds = list(seeds if seeds is not None else schedule.seeds)
    get = run_or_report if train else load_result
    load_teacher = run_or_load if train else (lambda cfg, log=None: load_finished(cfg))
    teacher = load_teacher(protocol.teacher_config(runs_root, root, 0, teacher_overrides), log=log)
    rows: dict[str, list[dict]] = {"teacher": [{**teacher, "seed": 0}]} if teacher else {}
    settings = {"teacher": f"{protocol.TEACHER}, {protocol.TEACHER_EPOCHS} epochs, seed 0", "vanilla": "CE only"}
    missing, diverged_runs = ([] if teacher else ["teacher"]), []

    def job(m: str, seed: int):
        def make() -> dict:  # at its turn: a preset re-tuned meanwhile (another shell) is used
            terms = recipe(m) if _tuned(m, preset_dir) else default_recipe(m)
            if m != "vanilla":
                settings[m] = describe(terms) + ("" if _tuned(m, preset_dir) else " (untuned: CIFAR-100 default)")
            return protocol.student_config(m, terms, schedule, seed, runs_root, root, overrides=overrides)

        return (m, seed), make, []

    bar = tqdm(total=len(methods) * len(seeds), desc=schedule.name, unit="run", disable=not train)
    for (m, seed), summary in shared_queue([job(m, s) for m in methods for s in seeds], get, bar):
        if diverged(summary):
            diverged_runs.append(f"{m} seed {seed}")
        elif summary:
            rows.setdefault(m, []).append({**summary, "seed": seed})
        else:
            missing.append(f"{m} seed {seed}")
    bar.close()
    order = ["teacher"] + methods
    rows = {m: sorted(rows[m], key=lambda r: r["seed"]) for m in order if m in rows}
    table = report.summarise(rows)
    write_results(table, schedule, seeds, Path(out), settings, command, missing, diverged=diverged_runs)
    return table
