"""`wdistill bench accuracy`: FMNIST-KD v1 (BENCHMARK.md, section A), tuning and results files."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from wdistill.engine.checkpoint import atomic_write_text
from wdistill.config.presets import LABELS, PRESET_DIR, RECIPES, default_recipe, recipe
from benchtools import tooling
from benchtools import protocol
from benchtools import report
from benchtools.protocol import FULL, TUNE, Schedule
from wdistill.workflows.reuse import load_finished, run_or_load, shared_queue
from benchtools.tuning import CANDIDATES, apply_candidate, check_budget, describe

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


def run_tuning(methods: list[str], runs_root="runs/bench", out="benchmarks", root=None, preset_dir=PRESET_DIR,
               log=print, overrides=None, teacher_overrides=None) -> dict[str, dict]:
    """Train every candidate of every method (quick schedule, seed 0, val split), keep the best by
    final-epoch val top-1 (ties: the earlier candidate, i.e. the published recipe first), write
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
        tried.setdefault(m, []).append((cand, run_or_load(cfg, _log_to(bar))))
        if len(tried[m]) == len(CANDIDATES[m]):
            choices[m] = choose(m, tried[m])
            write_preset(m, choices[m]["terms"], tried[m], choices[m]["candidate"], runs_root, root, preset_dir)
            write_tuning_report(collect_tuning(runs_root), Path(out) / "fmnist-kd-v1-tuning.md",
                               reference)
    return choices


def choose(method: str, tried: list[tuple[dict, dict]]) -> dict:
    best = max(range(len(tried)), key=lambda i: (tried[i][1]["final_top1"], -i))
    return {"candidate": best, "terms": apply_candidate(default_recipe(method), tried[best][0]), "tried": [
        {"settings": describe(apply_candidate(default_recipe(method), c)), "val_final": s["final_top1"],
         "val_best": s["best_top1"]} for c, s in tried]}


def collect_tuning(runs_root) -> dict[str, dict]:
    """Choices of every method whose candidates have all finished (from their run directories)."""
    out = {}
    for m, cands in CANDIDATES.items():
        files = [Path(runs_root) / TUNE.name / m / f"cand{i}" / "seed0" / "summary.json" for i in range(len(cands))]
        if all(f.is_file() for f in files):
            out[m] = choose(m, [(c, json.loads(f.read_text())) for c, f in zip(cands, files)])
    return out


def write_preset(method: str, terms: list[dict], tried, best: int, runs_root, root, preset_dir) -> Path:
    """configs/fmnist/<method>.yaml: a runnable full-protocol config (seed 0) with the chosen terms."""
    cfg = protocol.student_config(method, terms, FULL, 0, runs_root, root)
    cfg["loss"] = protocol.scale_epoch_params(terms, FULL.epochs)
    header = [f"# FMNIST-KD v1 preset for {LABELS[method]} (resnet32 -> resnet8), written by `wdistill bench "
              "accuracy --tune`.",
              "# Tuned on the validation split (train images 10,000..14,999), seed 0, quick schedule; val top-1 "
              "(final epoch):"]
    header += [f"#   {'*' if i == best else ' '} {describe(apply_candidate(default_recipe(method), c))}: "
               f"{s['final_top1']:.2f}" for i, (c, s) in enumerate(tried)]
    header.append("# Run: wdistill distill configs/fmnist/" + f"{method}.yaml (needs the cached teacher)")
    path = Path(preset_dir) / f"{method}.yaml"
    atomic_write_text("\n".join(header) + "\n" + yaml.safe_dump(cfg, sort_keys=False), path)
    return path


def write_tuning_report(choices: dict, path: Path, reference: dict | None = None) -> None:
    lines = ["# FMNIST-KD v1 tuning (validation split, seed 0, quick schedule)\n", report.stamp_markdown(report.stamp()),
             "Validation = official training images 10,000..14,999; training = the first 5,000; 6 epochs. "
             "The test set is not used. The chosen settings go to configs/fmnist/<method>.yaml.\n",
             "| method | candidate settings | val top-1 final | val top-1 best | chosen |", "|---|---|---:|---:|:-:|"]
    if reference:
        lines.append(f"| vanilla (reference) | CE only | {reference['final_top1']:.2f} | {reference['best_top1']:.2f} | |")
    for m, c in choices.items():
        for i, t in enumerate(c["tried"]):
            lines.append(f"| {LABELS[m]} | {t['settings']} | {t['val_final']:.2f} | {t['val_best']:.2f} | "
                         f"{'yes' if i == c['candidate'] else ''} |")
    atomic_write_text("\n".join(lines) + "\n", path)


def _tuned(method: str, preset_dir) -> bool:
    return (Path(preset_dir) / f"{method}.yaml").is_file()


def run_accuracy(schedule: Schedule, methods: list[str], seeds: list[int] | None = None, runs_root="runs/bench",
                 out="benchmarks", root=None, preset_dir=PRESET_DIR, command: list[str] | None = None,
                 log=print, overrides=None, teacher_overrides=None, train: bool = True) -> list[dict]:
    """Teacher, vanilla and every method under ``schedule``; writes ``out/<schedule>.md|csv|png``.

    ``train=False`` trains nothing: the files report the runs finished so far and list the rest.
    """
    methods = ["vanilla"] + [m for m in check_methods(methods) if m != "vanilla"]
    seeds = list(seeds if seeds is not None else schedule.seeds)
    get = run_or_load if train else (lambda cfg, log=None, wait=True: load_finished(cfg))
    teacher = get(protocol.teacher_config(runs_root, root, 0, teacher_overrides), log=log)
    rows: dict[str, list[dict]] = {"teacher": [{**teacher, "seed": 0}]} if teacher else {}
    settings = {"teacher": f"{protocol.TEACHER}, {protocol.TEACHER_EPOCHS} epochs, seed 0",
                "vanilla": "CE only"}
    missing = [] if teacher else ["teacher"]

    def job(m: str, seed: int):
        def make() -> dict:  # at its turn: a preset re-tuned meanwhile (another shell) is used
            terms = recipe(m) if _tuned(m, preset_dir) else default_recipe(m)
            if m != "vanilla":
                settings[m] = describe(terms) + ("" if _tuned(m, preset_dir) else " (untuned: CIFAR-100 default)")
            return protocol.student_config(m, terms, schedule, seed, runs_root, root, overrides=overrides)
        return (m, seed), make, []

    bar = tqdm(total=len(methods) * len(seeds), desc=schedule.name, unit="run", disable=not train)
    for (m, seed), summary in shared_queue([job(m, s) for m in methods for s in seeds], get, bar):
        if summary:
            rows.setdefault(m, []).append({**summary, "seed": seed})
        else:
            missing.append(f"{m} seed {seed}")
    bar.close()
    order = ["teacher"] + methods
    rows = {m: sorted(rows[m], key=lambda r: r["seed"]) for m in order if m in rows}
    table = report.summarise(rows)
    write_results(table, schedule, seeds, Path(out), settings, command, missing)
    return table


def _part_seeds(stamp: dict, path, schedule: Schedule) -> list[int]:
    """The seeds a results file covers: its ``seeds`` stamp line, else its command's ``--seeds``."""
    if "seeds" in stamp:
        return [int(x) for x in stamp["seeds"].split(",")]
    words = stamp.get("command", "").split()
    if "--seeds" in words and words.index("--seeds") + 1 < len(words):
        return [int(x) for x in words[words.index("--seeds") + 1].split(",")]
    if "command" in stamp:
        return list(schedule.seeds)
    raise ValueError(f"{path}: its stamp names neither its seeds nor its command; cannot tell which seeds it holds")


def merge_results(paths: list, schedule: Schedule = FULL, out="benchmarks", command: list[str] | None = None,
                  replace: list | None = None) -> list[dict]:
    """One results table from results CSVs of disjoint seeds (e.g. seed 0 run by one session, seeds 1-2
    by another, their run directories gone): each row's mean and sample std are pooled exactly from
    the parts' (runs, mean, std); best-epoch mean and wall time are run-weighted means. A method must
    have the same settings in every part; the single-seed teacher must be the same run in every part.

    ``replace``: results CSVs of a re-run (pooled the same way among themselves) whose methods
    replace those methods' rows, whatever their seeds or settings (e.g. rows re-run after a fix).
    Their teacher must be the same run as the parts' one (same top-1), or the table would mix
    students of two teachers."""
    merged, settings, all_seeds, missing, sources = _pool(paths, schedule)
    if replace:
        new, new_settings, _, new_missing, new_sources = _pool(replace, schedule)
        old_teacher = next((r for r in merged if r["method"] == "teacher"), None)
        new_teacher = next((r for r in new if r["method"] == "teacher"), None)
        if old_teacher and new_teacher and old_teacher["final_mean"] != new_teacher["final_mean"]:
            raise ValueError(f"the re-run's teacher ({new_teacher['final_mean']}) is not the parts' teacher "
                             f"({old_teacher['final_mean']}): its students had another teacher")
        by_method = {r["method"]: r for r in new if r["method"] != "teacher"}
        merged = [by_method.pop(r["method"], r) for r in merged] + list(by_method.values())
        settings = settings | {m: new_settings[m] for m in new_settings if m != "teacher"}
        missing = [x for x in missing if x.split(":")[0].split(" ")[0] not in new_settings] + new_missing
        sources = sources + [f"{x} — replaces its methods' rows" for x in new_sources]
        base = next((r for r in merged if r["method"] == "vanilla"), None)
        for r in merged:
            r["gain"] = None if base is None or r["method"] in ("vanilla", "teacher") else r["final_mean"] - base["final_mean"]
    write_results(merged, schedule, all_seeds, Path(out), settings, command, missing, sources)
    return merged


def _pool(paths: list, schedule: Schedule):
    """(rows, settings, seeds, missing, sources) pooled from results CSVs of disjoint seeds."""
    parts = []
    for path in paths:
        st, table, settings = report.read_results_csv(path)
        parts.append((path, st, _part_seeds(st, path, schedule), table, settings))
    seen: dict[int, str] = {}
    for path, _, seeds, _, _ in parts:
        for sd in seeds:
            if sd in seen:
                raise ValueError(f"seed {sd} is in both {seen[sd]} and {path}: merge only files of disjoint seeds")
            seen[sd] = str(path)
    order, groups, settings, row_seeds, threads, partial = [], {}, {}, {}, {}, []
    for path, st, seeds, table, sets in parts:
        for r in table:
            m = r["method"]
            if m not in groups:
                order.append(m)
                groups[m], settings[m], row_seeds[m], threads[m] = [], sets[m], [], []
            elif sets[m] != settings[m]:
                raise ValueError(f"{m} has different settings in the parts ({settings[m]!r} vs {sets[m]!r} in "
                                 f"{path}): these are different experiments and cannot be pooled")
            if m == "teacher":
                if groups[m] and groups[m][0]["final_mean"] != r["final_mean"]:
                    raise ValueError(f"the teacher differs between the parts ({groups[m][0]['final_mean']} vs "
                                     f"{r['final_mean']} in {path}): the students did not share one teacher")
                if groups[m]:
                    continue
                row_seeds[m] = [0]
            elif r["n"] == len(seeds):
                row_seeds[m] += seeds
            else:  # an incomplete part: its CSV does not say which of its seeds ran
                partial.append(f"{m}: {r['n']} of seeds {','.join(map(str, seeds))} in {path}")
            groups[m].append(r)
            if str(st.get("threads", "")).isdigit():
                threads[m].append(int(st["threads"]))
    rank = {m: i for i, m in enumerate(["teacher", "vanilla", *RECIPES])}
    order.sort(key=lambda m: rank.get(m, len(rank)))  # the protocol's row order, whatever the parts' order
    merged = []
    for m in order:
        g = groups[m]
        n, mean, std = report.pool([(r["n"], r["final_mean"], r["final_std"]) for r in g])
        merged.append({"method": m, "n": n, "final_mean": mean, "final_std": std,
                       "best_mean": sum(r["n"] * r["best_mean"] for r in g) / n,
                       "wall_seconds": sum(r["n"] * r["wall_seconds"] for r in g) / n,
                       "seeds": sorted(row_seeds[m]), "threads": threads[m]})
    base = next((r for r in merged if r["method"] == "vanilla"), None)
    for r in merged:
        r["gain"] = None if base is None or r["method"] in ("vanilla", "teacher") else r["final_mean"] - base["final_mean"]
    all_seeds = sorted(seen)
    missing = partial + [f"{m} seed {sd}" for m in order if m != "teacher" for sd in all_seeds
                         if sd not in row_seeds[m] and not any(x.startswith(f"{m}: ") for x in partial)]
    sources = [f"`{Path(p).name}` ({len(sd)} seed(s): {', '.join(map(str, sd))}; {st.get('date', '?')}, commit "
               f"`{st.get('commit', '?')}`, `{st.get('command', '?')}`)" for p, st, sd, _, _ in parts]
    return merged, settings, all_seeds, missing, sources


def write_results(table: list[dict], schedule: Schedule, seeds: list[int], out: Path, settings: dict,
                  command: list[str] | None = None, missing: list[str] | None = None,
                  sources: list[str] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base = out / schedule.name
    s = report.stamp(command=command)
    s["seeds"] = ",".join(map(str, seeds))
    run_threads = sorted({r for row in table for r in row.get("threads", []) if r})
    if run_threads:  # the runs' own thread counts, not this (possibly report-only) process's
        s["threads"] = "/".join(map(str, run_threads))
    n_train = "5,000" if schedule.quick else "10,000"
    desc = (f"resnet32 teacher -> resnet8 student, Fashion-MNIST, first {n_train} training images, "
            f"{schedule.epochs} epochs, seeds {', '.join(map(str, seeds))}; test = all 10,000 test images. "
            "Top-1 of the final epoch (RepDistiller convention) and of the best epoch (mdistiller/WKD "
            "convention); std is the sample std over seeds. Settings chosen on the validation split "
            "(never the test set) where marked tuned; epoch-valued settings scaled by "
            f"{schedule.epochs}/240, WKD decay from 150/240 of training.")
    notes_file = out / f"{schedule.name}.notes.md"
    md = [f"# {schedule.name}\n", report.stamp_markdown(s)]
    if sources:
        md += ["Pooled from results files of disjoint seeds (their run directories are not kept):\n",
               *[f"- {x}" for x in sources], ""]
    md += [desc + "\n",
          report.results_markdown(table, LABELS | {"teacher": "teacher"}, settings),
          f"![top-1]({base.name}.png)\n"]
    if missing:
        md += ["**Incomplete:** not finished yet (the same command without --report-only trains them, "
               f"skipping finished runs): {', '.join(missing)}.\n"]
    targets = tooling.load("targets")  # the project's claims, checked when run from a checkout
    if targets:
        md += ["## Targets\n", *[f"- {n}" for n in targets.findings(table)], ""]
    if notes_file.is_file():
        md += ["## Findings\n", notes_file.read_text()]
    atomic_write_text("\n".join(md) + "\n", base.with_suffix(".md"))
    csv_stamp = "".join(f"# {k}: {v}\n" for k, v in s.items())
    atomic_write_text(csv_stamp + report.results_csv(table, settings), base.with_suffix(".csv"))
    if not table:
        return
    report.bar_chart(table, LABELS | {"teacher": "teacher"}, base.with_suffix(".png"),
                     f"{schedule.name}: final-epoch top-1, mean ± std over {len(seeds)} seed(s)")
