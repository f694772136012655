"""The results files of `python -m benchtools accuracy` (docs/benchmarks.md, protocol A):
``out/<schedule>.md|csv|png``, written from a run or pooled from results CSVs of disjoint seeds
(``--merge``, ``--replace``)."""
from __future__ import annotations

from pathlib import Path

from benchtools import report
from benchtools import targets as targets_module
from benchtools.protocol import FULL, Schedule
from wdistill.io import atomic_write_text
from wdistill.losses.recipes import LABELS, RECIPES


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


def _set_gains(rows: list[dict]) -> None:
    """Each student row's gain of the final mean over vanilla's (None without a vanilla row)."""
    base = next((r for r in rows if r["method"] == "vanilla"), None)
    for r in rows:
        r["gain"] = (
            None if base is None or r["method"] in ("vanilla", "teacher") else r["final_mean"] - base["final_mean"]
        )


def merge_results(
    paths: list,
    schedule: Schedule = FULL,
    out="benchmarks",
    command: list[str] | None = None,
    replace: list | None = None,
) -> list[dict]:
    """One results table from results CSVs of disjoint seeds (e.g. seed 0 run by one session, seeds 1-2
    by another, their run directories gone): each row's mean and sample std are pooled exactly from
    the parts' (runs, mean, std); best-epoch mean and wall time are run-weighted means. A method must
    have the same settings in every part; the single-seed teacher must be the same run in every part.

    ``replace``: results CSVs of a re-run (pooled the same way among themselves) whose methods
    replace those methods' rows, whatever their seeds or settings (e.g. rows re-run after a fix).
    Their teacher must be the same run as the parts' one (same top-1), or the table would mix
    students of two teachers."""
    merged, settings, all_seeds, missing, sources, diverged = _pool(paths, schedule)
    if replace:
        new, new_settings, _, new_missing, new_sources, new_diverged = _pool(replace, schedule)
        old_teacher = next((r for r in merged if r["method"] == "teacher"), None)
        new_teacher = next((r for r in new if r["method"] == "teacher"), None)
        if old_teacher and new_teacher and old_teacher["final_mean"] != new_teacher["final_mean"]:
            raise ValueError(
                f"the re-run's teacher ({new_teacher['final_mean']}) is not the parts' teacher "
                f"({old_teacher['final_mean']}): its students had another teacher"
            )
        by_method = {r["method"]: r for r in new if r["method"] != "teacher"}
        merged = [by_method.pop(r["method"], r) for r in merged] + list(by_method.values())
        settings = settings | {m: new_settings[m] for m in new_settings if m != "teacher"}
        missing = [x for x in missing if x.split(":")[0].split(" ")[0] not in new_settings] + new_missing
        diverged = [x for x in diverged if x.split(" ")[0] not in new_settings] + new_diverged
        sources = sources + [f"{x} — replaces its methods' rows" for x in new_sources]
        _set_gains(merged)
    write_results(merged, schedule, all_seeds, Path(out), settings, command, missing, sources, diverged)
    return merged


def _pool(paths: list, schedule: Schedule):
    """(rows, settings, seeds, missing, sources, diverged) pooled from results CSVs of disjoint seeds."""
    parts = []
    for path in paths:
        st, table, settings = report.read_results_csv(path)
        parts.append((path, st, _part_seeds(st, path, schedule), table, settings))
    all_seeds = _disjoint_seeds(parts)
    order, groups, settings, row_seeds, threads, partial = _group_rows(parts)
    rank = {m: i for i, m in enumerate(["teacher", "vanilla", *RECIPES])}
    order.sort(key=lambda m: rank.get(m, len(rank)))  # the protocol's row order, whatever the parts' order
    merged = [_pooled_row(m, groups[m], row_seeds[m], threads[m]) for m in order]
    _set_gains(merged)
    diverged = [f"{m} seed {sd}" for _, st, _, _, _ in parts for m, sds in _diverged_of(st).items() for sd in sds]
    missing = partial + [
        f"{m} seed {sd}"
        for m in order
        if m != "teacher"
        for sd in all_seeds
        if sd not in row_seeds[m] and not any(x.startswith(f"{m}: ") for x in partial)
        and f"{m} seed {sd}" not in diverged
    ]
    sources = [
        f"`{Path(p).name}` ({len(sd)} seed(s): {', '.join(map(str, sd))}; {st.get('date', '?')}, commit "
        f"`{st.get('commit', '?')}`, `{st.get('command', '?')}`)"
        for p, st, sd, _, _ in parts
    ]
    return merged, settings, all_seeds, missing, sources, diverged


def _diverged_of(stamp: dict) -> dict[str, list[int]]:
    """{method: seeds} of a results file's ``diverged`` stamp line ("kd seed 1; crd seed 0"; none before
    2026-12-06)."""
    out: dict[str, list[int]] = {}
    for entry in filter(None, stamp.get("diverged", "").split("; ")):
        method, _, seed = entry.rpartition(" seed ")
        out.setdefault(method, []).append(int(seed))
    return out


def _disjoint_seeds(parts: list[tuple]) -> list[int]:
    """Every seed of the parts, sorted; a seed in two parts is refused (its runs would count twice)."""
    seen: dict[int, str] = {}
    for path, _, seeds, _, _ in parts:
        for sd in seeds:
            if sd in seen:
                raise ValueError(f"seed {sd} is in both {seen[sd]} and {path}: merge only files of disjoint seeds")
            seen[sd] = str(path)
    return sorted(seen)


def _group_rows(parts: list[tuple]):
    """(order, groups, settings, row_seeds, threads, partial): each method's rows over the parts in
    first-seen order, its settings (the same in every part), seeds and runs' thread counts, and the
    parts where it is incomplete. The single-seed teacher is one run: kept once, checked the same."""
    order, groups, settings, row_seeds, threads, partial = [], {}, {}, {}, {}, []
    for path, st, seeds, table, sets in parts:
        for r in table:
            m = r["method"]
            if m not in groups:
                order.append(m)
                groups[m], settings[m], row_seeds[m], threads[m] = [], sets[m], [], []
            elif sets[m] != settings[m]:
                raise ValueError(
                    f"{m} has different settings in the parts ({settings[m]!r} vs {sets[m]!r} in "
                    f"{path}): these are different experiments and cannot be pooled"
                )
            if m == "teacher":
                if groups[m] and groups[m][0]["final_mean"] != r["final_mean"]:
                    raise ValueError(
                        f"the teacher differs between the parts ({groups[m][0]['final_mean']} vs "
                        f"{r['final_mean']} in {path}): the students did not share one teacher"
                    )
                if groups[m]:
                    continue
                row_seeds[m] = [0]
            elif r["n"] == len(ran := [sd for sd in seeds if sd not in _diverged_of(st).get(m, [])]):
                row_seeds[m] += ran  # every seed of the part but those its stamp says diverged
            else:  # an incomplete part: its CSV does not say which of its seeds ran
                partial.append(f"{m}: {r['n']} of seeds {','.join(map(str, seeds))} in {path}")
            groups[m].append(r)
            if str(st.get("threads", "")).isdigit():
                threads[m].append(int(st["threads"]))
    return order, groups, settings, row_seeds, threads, partial


def _pooled_row(method: str, group: list[dict], seeds: list[int], threads: list[int]) -> dict:
    """One table row from a method's rows in the parts: mean and sample std pooled exactly,
    best-epoch mean and wall time weighted by runs."""
    n, mean, std = report.pool([(r["n"], r["final_mean"], r["final_std"]) for r in group])
    return {
        "method": method,
        "n": n,
        "final_mean": mean,
        "final_std": std,
        "best_mean": sum(r["n"] * r["best_mean"] for r in group) / n,
        "wall_seconds": sum(r["n"] * r["wall_seconds"] for r in group) / n,
        "seeds": sorted(seeds),
        "threads": threads,
    }


def _description(schedule: Schedule, seeds: list[int]) -> str:
    """What the table measures: models, data, schedule, seeds and the top-1 conventions."""
    n_train = "5,000" if schedule.quick else "10,000"
    return (
        f"resnet32 teacher -> resnet8 student, Fashion-MNIST, first {n_train} training images, "
        f"{schedule.epochs} epochs, seeds {', '.join(map(str, seeds))}; test = all 10,000 test images. "
        "Top-1 of the final epoch (RepDistiller convention) and of the best epoch (mdistiller/WKD "
        "convention); std is the sample std over seeds. Settings chosen on the validation split "
        "(never the test set) where marked tuned; epoch-valued settings scaled by "
        f"{schedule.epochs}/240, WKD decay from 150/240 of training."
    )


def write_results(
    table: list[dict],
    schedule: Schedule,
    seeds: list[int],
    out: Path,
    settings: dict,
    command: list[str] | None = None,
    missing: list[str] | None = None,
    sources: list[str] | None = None,
    diverged: list[str] | None = None,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base = out / schedule.name
    s = report.stamp(command=command)
    s["seeds"] = ",".join(map(str, seeds))
    if diverged:  # read back by a merge (_diverged_of): which seeds of a row are not in it, and why
        s["diverged"] = "; ".join(diverged)
    run_threads = sorted({r for row in table for r in row.get("threads", []) if r})
    if run_threads:  # the runs' own thread counts, not this (possibly report-only) process's
        s["threads"] = "/".join(map(str, run_threads))
    notes_file = out / f"{schedule.name}.notes.md"
    md = [f"# {schedule.name}\n", report.stamp_markdown(s)]
    if sources:
        md += [
            "Pooled from results files of disjoint seeds (their run directories are not kept):\n",
            *[f"- {x}" for x in sources],
            "",
        ]
    md += [
        _description(schedule, seeds) + "\n",
        report.results_markdown(table, LABELS | {"teacher": "teacher"}, settings),
        f"![top-1]({base.name}.png)\n",
    ]
    if missing:
        md += [
            "**Incomplete:** not finished yet (the same command without --report-only trains them, "
            f"skipping finished runs): {', '.join(missing)}.\n"
        ]
    if diverged:
        md += [f"**Diverged:** the loss became non-finite; not in the table's means, and not tried again by the same "
               f"command (each run directory holds diverged.json: delete it to retry): {', '.join(diverged)}.\n"]
    targets = targets_module  # the project's claims, checked when run from a checkout
    if targets:
        md += ["## Targets\n", *[f"- {n}" for n in targets.findings(table)], ""]
    if notes_file.is_file():
        md += ["## Findings\n", notes_file.read_text()]
    atomic_write_text("\n".join(md) + "\n", base.with_suffix(".md"))
    csv_stamp = "".join(f"# {k}: {v}\n" for k, v in s.items())
    atomic_write_text(csv_stamp + report.results_csv(table, settings), base.with_suffix(".csv"))
    if not table:
        return
    report.bar_chart(
        table,
        LABELS | {"teacher": "teacher"},
        base.with_suffix(".png"),
        f"{schedule.name}: final-epoch top-1, mean ± std over {len(seeds)} seed(s)",
    )
