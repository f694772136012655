"""``wdistill auto``'s results: which recipes beat the vanilla student beyond the seed noise, the
report (markdown, JSON, chart), the recommended config, and with ``train`` that config trained on
the whole training split and scored on the test split.

"Beyond noise" is a paired t-test at 95% (two-sided) over the seeds both runs share: a finalist's
held-out top-1 minus vanilla's, seed by seed. With 2 or 3 seeds Student's quantile asks for far
more than two standard errors (12.7 and 4.3), so "within noise" is a common, honest answer.
"""
from __future__ import annotations

import copy
import json
import math
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from wdistill.config.schema import AutoSection, RunConfig
from wdistill.engine.build import check_models
from wdistill.errors import ConfigError, NonFiniteLoss
from wdistill.io import atomic_write_text
from wdistill.workflows.auto import Search, fresh_student
from wdistill.workflows.plots import leaderboard_chart
from wdistill.workflows.reuse import run_or_load

# Student's t quantile at 0.975 for 1..10 degrees of freedom; 1.96 beyond 30.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t975(df: int) -> float:
    if df <= len(T975):
        return T975[df - 1]
    return 2.042 if df <= 30 else 1.96  # t(0.975, 30) = 2.042; the normal quantile beyond


def mean_std(values: list[float]) -> tuple[float, float | None]:
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def verdict(diffs: list[float]) -> tuple[str, float | None]:
    """("beats vanilla" | "below vanilla" | "within noise" | "one seed", standard error)."""
    if len(diffs) < 2:
        return "one seed: not resolved", None
    mean, std = mean_std(diffs)
    se = std / math.sqrt(len(diffs))
    t = t975(len(diffs) - 1)
    return ("beats vanilla" if mean > t * se else "below vanilla" if mean < -t * se else "within noise"), se


def summarise(record: dict) -> list[dict]:
    """One row per finalist and vanilla, best mean first: held-out top-1 mean/std, the paired gain
    over vanilla with its verdict, seconds per epoch relative to vanilla."""
    final, secs = record["final"], record["epoch_seconds"]
    base = final["vanilla"]
    labels = {c["key"]: c for c in record["candidates"]}
    rows = []
    for key, per_seed in final.items():
        done = {s: v for s, v in per_seed.items() if v is not None}  # None: that seed diverged
        mean, std = mean_std(list(done.values())) if done else (None, None)
        diffs = [done[s] - base[s] for s in done if base.get(s) is not None]
        say, se = verdict(diffs) if key != "vanilla" else ("reference", None)
        diverged = len(per_seed) - len(done)
        if diverged:  # unstable at this setting: reported, never recommended
            say = f"diverged on {diverged} of {len(per_seed)} seed(s)"
        cost = secs[key] / secs["vanilla"] if secs.get(key) and secs.get("vanilla") else None
        rows.append({"key": key, "label": labels[key]["label"], "method": labels[key]["method"],
                     "terms": labels[key]["terms"], "seeds": len(done), "diverged": diverged, "mean": mean,
                     "std": std, "gain": sum(diffs) / len(diffs) if diffs and key != "vanilla" else None,
                     "gain_se": se, "verdict": say, "cost": cost})
    return sorted(rows, key=lambda r: (r["mean"] is None, -(r["mean"] or 0.0)))


def recommend(rows: list[dict]) -> dict:
    """The best mean among the finalists that beat vanilla beyond noise; else the best mean of the
    rows that never diverged (the report then says that nothing beat vanilla beyond noise)."""
    beating = [r for r in rows if r["verdict"] == "beats vanilla"]
    stable = [r for r in rows if not r["diverged"]]
    if not (beating or stable):
        raise NonFiniteLoss("wdistill auto: every finalist and the vanilla student diverged on at least one seed, "
                            "so there is nothing to recommend; lower optim.lr (each run's diverged.json says where "
                            "its loss became non-finite)")
    return (beating or stable)[0]


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "diverged"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def markdown(record: dict, rows: list[dict], best: dict, files: dict, command: str) -> str:
    a = record["auto"]
    spent = sum(len(c["values"]) for c in record["candidates"])
    lines = [f"# wdistill auto: {len(record['candidates']) - 1} candidate recipes against the vanilla student\n",
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; torch {torch.__version__}; {platform.machine()}, "
             f"{torch.get_num_threads()} threads; command: `{command}`. Wall time {record['wall_seconds'] / 60:.1f} min"
             f"{' (cut short by auto.minutes)' if record['out_of_time'] else ''}.\n",
             f"Held-out top-1: {100 * a['holdout']:.0f}% of the training split (stratified), never the test split. "
             f"Schedule {record['epochs']} epochs; successive halving keeps 1/{a['eta']} per rung (first rung "
             f"{a['min_epochs']} epoch(s)) down to {a['finalists']} finalists, each repeated over {a['seeds']} seeds "
             f"with the vanilla student. {spent} rung results recorded.\n"]
    lines += [f"- {n}" for n in record["notes"]]
    lines += ["", "| recipe | held-out top-1 | gain vs vanilla (paired) | verdict (t-test, 95%) | time / epoch vs "
              "vanilla |", "|---|---:|---:|---|---:|"]
    for r in rows:
        gain = "" if r["gain"] is None else f"{r['gain']:+.2f}" + (f" ± {r['gain_se']:.2f}" if r["gain_se"] else "")
        cost = "" if r["cost"] is None else f"{r['cost']:.2f}x"
        lines.append(f"| {r['label']} | {_pm(r['mean'], r['std'])} (n={r['seeds']}) | {gain} | {r['verdict']} "
                     f"| {cost} |")
    caveat = " — but no recipe beat vanilla beyond noise" if best["verdict"] != "beats vanilla" else ""
    lines += ["", f"**Recommended:** {best['label']}{caveat} (`{files['recommended']}`).", "",
              "## Every candidate (seed 0)", "", "| candidate | held-out top-1 at epoch ... | status |",
              "|---|---|---|"]
    for c in record["candidates"]:
        vals = ", ".join(f"{e}: {v:.2f}" for e, v in sorted(c["values"].items(), key=lambda kv: int(kv[0])))
        seeds = ", ".join(sorted(c.get("diverged", {})))
        status = c["status"] + (f" (diverged: seed {seeds})" if seeds and "diverged" not in c["status"] else "")
        lines.append(f"| {c['label']} | {vals} | {status} |")
    if files.get("trained"):
        lines += ["", "## The recommended config on the test split", "", files["trained"]]
    return "\n".join(lines) + "\n"


def recommended_config(base: dict, best: dict, name: str) -> dict:
    """The base config with the recommended loss, trained on the whole training split."""
    cfg = copy.deepcopy(base)
    cfg["loss"] = [dict(t) for t in best["terms"]]
    cfg["run"] = {**cfg.get("run", {}), "name": f"{name}/recommended"}
    cfg.pop("auto", None)
    if best["method"] == "vanilla":
        cfg.pop("teacher", None)
        cfg.pop("teachers", None)
    return cfg


def train_recommended(cfg: dict, seeds: int, models, data, log) -> list[dict]:
    """``cfg`` trained for each seed on the whole training split, scored on the test split."""
    out = []
    for s in range(seeds):
        run = {**cfg, "run": {**cfg["run"], "name": f"{cfg['run']['name']}/seed{s}", "seed": s}}
        student_teachers = None if models is None else (fresh_student(models[0], s), models[1])
        summary = run_or_load(run, log=log, data=data, models=student_teachers)
        out.append({"seed": s, "test_top1": summary["final_top1"], "run": run["run"]["name"]})
    return out


def run_auto(base: dict, auto: AutoSection, root: Path, models=None, data=None, train_seeds: int = 0,
             command: str | None = None, log=print) -> dict:
    """Search, then write ``root/report.{md,json,png}`` and ``root/recommended.yaml`` (and train it
    on the whole training split for ``train_seeds`` seeds); returns the report as a dict."""
    root = Path(root)
    record = Search(base, auto, root, models, data, log).run()
    rows = summarise(record)
    best = recommend(rows)
    rec_cfg = recommended_config(base, best, root.name)
    files = {"recommended": str(root / "recommended.yaml")}
    trained = train_recommended(rec_cfg, train_seeds, models, data, log) if train_seeds else []
    if trained:
        tops = [t["test_top1"] for t in trained]
        files["trained"] = (f"{best['label']}: test top-1 {_pm(*mean_std(tops))} over {len(tops)} seed(s), trained "
                            f"on the whole training split ({', '.join(t['run'] for t in trained)}).")
    header = f"# Recommended by `wdistill auto`: {best['label']}, held-out top-1 {_pm(best['mean'], best['std'])}\n"
    atomic_write_text(header + yaml.safe_dump(rec_cfg, sort_keys=False), root / "recommended.yaml")
    command = command or " ".join(["wdistill", *sys.argv[1:]])
    atomic_write_text(markdown(record, rows, best, files, command), root / "report.md")
    report = {**record, "root": str(root), "rows": rows, "recommended": best, "recommended_config": rec_cfg,
              "trained": trained}
    atomic_write_text(json.dumps(report, indent=2) + "\n", root / "report.json")
    auto_chart(rows, root / "report.png", record["epochs"], auto.holdout)
    return report


def auto_chart(rows: list[dict], path: Path, epochs: int, holdout: float) -> Path:
    """The finalists' held-out top-1 beside the vanilla student's (``report.png``)."""
    return leaderboard_chart([{"name": r["key"] if r["key"] == "vanilla" else r["label"], "top1": r["mean"],
                               "std": r["std"]} for r in rows if r["mean"] is not None], path,
                             f"wdistill auto: held-out top-1 of the finalists ({epochs} epochs)",
                             f"Mean ± std over seeds on {100 * holdout:.0f}% of the training split held out; the "
                             "test split is not used.", ylabel="held-out top-1 (%)")


def auto_from_config(cfg: RunConfig, train_seeds: int = 0, command: str | None = None, log=print) -> dict:
    """``wdistill auto CONFIG``: the search of the config's student, teacher(s), data and schedule
    (its ``loss`` is ignored), in ``run.out_dir/run.name``."""
    if not cfg.teacher_sections():
        raise ConfigError("`wdistill auto` compares distillers: the config needs a 'teacher:' section (model + "
                          "checkpoint)")
    check_models(cfg)  # before the search starts
    base = cfg.model_dump(mode="json")
    base.pop("loss")
    return run_auto(base, cfg.auto, Path(cfg.run.out_dir) / cfg.run.name, train_seeds=train_seeds,
                    command=command, log=log)
