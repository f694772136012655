"""Protocol D's results files pooled (`python -m benchtools detection --merge A.csv B.csv`): one table from
results CSVs of disjoint seeds, written by :func:`benchtools.det_report.write_results`, after the run
directories are gone."""
from __future__ import annotations

from pathlib import Path

from benchtools import det_protocol as P
from benchtools import report
from benchtools.det_report import COLUMNS, METRICS, SIZES, relative_to_vanilla, write_results


def read_results_csv(path) -> tuple[dict, dict, list[dict]]:
    """(stamp, teacher, rows) of a results CSV written by :func:`results_csv`."""
    stamp, reader = report.read_stamped_csv(path)
    if reader.fieldnames not in (COLUMNS, COLUMNS[:-1]):  # files written before 2026-12-06 lack diverged_seeds
        raise ValueError(f"{path}: not a results CSV of `python -m benchtools detection` with its seeds (columns "
                         f"{', '.join(COLUMNS)} expected)")
    num = lambda v: float(v) if v else None  # noqa: E731
    teacher, rows = None, []
    for r in reader:
        row = {k: num(r[f"{k}_mean"]) for k in METRICS + SIZES}
        if r["method"] == "teacher":
            teacher = row | {"val_AP": float(r["settings"].removeprefix("val AP "))}
            continue
        rows.append(row | {f"{k}_std": num(r[f"{k}_std"]) for k in METRICS} | {
            "method": r["method"], "n": int(r["runs"]), "seeds": [int(x) for x in r["seeds"].split()],
            "settings": r["settings"], "wall_seconds": num(r["wall_seconds_per_run"]),
            "per_seed": [float(x) for x in r["per_seed_AP"].split()], "step_seconds": num(r["step_seconds"]),
            "diverged": [int(x) for x in (r.get("diverged_seeds") or "").split()]})
    if teacher is None:
        raise ValueError(f"{path}: no teacher row")
    return stamp, teacher, rows


def merge_results(paths: list, out, command: list[str] | None = None) -> list[dict]:
    """One results table from results CSVs of disjoint seeds (their run directories gone): each row's AP,
    AP50 and AP75 mean and sample std pooled exactly from the parts' (runs, mean, std), APs, APm and wall
    time run-weighted means, the per-seed AP in seed order, the step time from the first part that measured
    it. Refused unless every part has the same teacher (its test AP, AP50, AP75, APs, APm and validation AP
    to the table's two decimals: a teacher trained again must match all six), a row's
    settings are the same in every part and no seed of a row is in two parts."""
    parts = [(Path(p), *read_results_csv(p)) for p in paths]
    teacher = parts[0][2]
    shown = lambda t: {k: None if v is None else round(v, 2) for k, v in t.items()}  # noqa: E731
    groups: dict[str, list[tuple[Path, dict]]] = {}
    for path, _, t, rows in parts:
        if shown(t) != shown(teacher):
            raise ValueError(f"{path}: its teacher ({t}) is not {parts[0][0]}'s ({teacher}); its students had "
                             "another teacher, so the two cannot share a table")
        for r in rows:
            groups.setdefault(r["method"], []).append((path, r))
    merged = relative_to_vanilla([_pool_row(m, groups[m]) for m in P.ROWS if m in groups])
    seeds = sorted({sd for r in merged for sd in r["seeds"]})
    sources = [st.get("pooled from") or  # a pooled part names its own sources
               f"`{p.name}` ({st.get('date', '?')}, commit `{st.get('commit', '?')}`, `{st.get('command', '?')}`)"
               for p, st, _, _ in parts]
    stamp = report.stamp(command=command) | {"pooled from": "; ".join(sources)}
    write_results(merged, teacher, out, stamp, seeds)
    return merged


def _pool_row(method: str, group: list[tuple[Path, dict]]) -> dict:
    seen: dict[int, Path] = {}
    for path, r in group:
        if r["settings"] != group[0][1]["settings"]:
            raise ValueError(f"{method}: settings '{r['settings']}' in {path} but '{group[0][1]['settings']}' in "
                             f"{group[0][0]}: only runs of the same settings can be pooled")
        for sd in r["seeds"] + r["diverged"]:
            if sd in seen:
                raise ValueError(f"{method} seed {sd} is in both {seen[sd]} and {path}: merge only disjoint seeds")
            seen[sd] = path
    rows = [r for _, r in group]
    n = sum(r["n"] for r in rows)
    out = {"method": method, "n": n, "settings": rows[0]["settings"],
           "diverged": sorted(sd for r in rows for sd in r["diverged"])}
    for k in METRICS:
        finished = [(r["n"], r[k], r[f"{k}_std"]) for r in rows if r["n"]]
        _, out[k], out[f"{k}_std"] = report.pool(finished) if finished else (0, None, None)
    for k in (*SIZES, "wall_seconds"):
        known = [r for r in rows if r[k] is not None]
        out[k] = sum(r["n"] * r[k] for r in known) / sum(r["n"] for r in known) if known else None
    by_seed = sorted((sd, ap) for r in rows for sd, ap in zip(r["seeds"], r["per_seed"]))
    out["seeds"], out["per_seed"] = [sd for sd, _ in by_seed], [ap for _, ap in by_seed]
    out["step_seconds"] = next((r["step_seconds"] for r in rows if r["step_seconds"] is not None), None)
    return out
