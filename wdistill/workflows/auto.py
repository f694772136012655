"""``wdistill auto``: which distiller works best for *this* teacher, student and data set.

The candidates are the vanilla student and each chosen recipe (KD, DKD, WKD-L, WKD-F, WKD-L+WKD-F,
CRD+KD, WCoRD+KD, FitNet by default) with its small grid of weights and temperatures around the
published setting (``wdistill.losses.recipes.GRIDS``). They are compared on a stratified part of the
user's training data held out from training (``data.holdout``), never on the test split.

The budget is spent by synchronous successive halving (Jamieson & Talwalkar 2016; one Hyperband
bracket, Li et al. 2018): every candidate trains ``min_epochs`` epochs of its full schedule (seed 0),
the best 1/eta go on to ``min_epochs * eta`` epochs, and so on until ``finalists`` are left; those
finish the schedule and are repeated over ``seeds``, beside the vanilla student, so the report can
say which beat vanilla beyond the seed noise. A candidate is paused at a rung and continued later
from its checkpoint (``train.stop_after``), so a promotion costs only the extra epochs.

Why not Optuna's pruners: they decide each trial as it reports, against the trials that reported
before it (asynchronous successive halving). On one machine, trials run one after another; the first
trials then meet no competitor at a rung and are never pruned, so they spend their whole schedule,
and each decision depends on the order the candidates happen to run in. Our trials are resumable run
directories, so the synchronous form, rung by rung over all candidates, is possible: it is the
budget-efficient one, its decision is a sort (a dozen lines), and it needs no new dependency.

Every trial is an ordinary run directory (``out_dir/name/<method>/<candidate>/seed<k>``), locked,
resumable and reused when finished: the same command continues an interrupted search, and a rung
already reached is read from the run's metrics without training.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from wdistill.config.schema import AutoSection
from wdistill.engine import rundir
from wdistill.errors import ConfigError, NonFiniteLoss
from wdistill.losses.recipes import (
    GRIDS,
    LABELS,
    RECIPES,
    apply_candidate,
    default_recipe,
    describe,
    scale_epoch_params,
)
from wdistill.workflows.reuse import run_or_load


@dataclass(frozen=True)
class Candidate:
    """One recipe at one grid point: ``key`` is ``<method>/<index>`` (``vanilla`` for CE alone)."""

    key: str
    method: str
    terms: tuple

    @property
    def label(self) -> str:
        base = LABELS.get(self.method, self.method)
        return base if self.method == "vanilla" else f"{base} ({describe(list(self.terms))})"


def candidates(methods: list[str], grid: bool, epochs: int) -> list[Candidate]:
    """Vanilla first, then every grid point of every method (its first point: the published setting)."""
    unknown = [m for m in methods if m not in RECIPES or m == "vanilla"]
    if unknown:
        raise ConfigError(f"auto.methods: unknown recipe(s) {unknown}; choose from "
                          f"{', '.join(m for m in RECIPES if m != 'vanilla')}")
    out = [Candidate("vanilla", "vanilla", tuple(default_recipe("vanilla")))]
    for m in methods:
        points = GRIDS.get(m, [{}]) if grid else [{}]
        for i, point in enumerate(points):
            terms = scale_epoch_params(apply_candidate(default_recipe(m), point), epochs)
            out.append(Candidate(f"{m}/{i}", m, tuple(terms)))
    return out


def rungs(epochs: int, min_epochs: int, eta: int) -> list[int]:
    """The epochs at which candidates are compared: min_epochs * eta^k below ``epochs``."""
    out, r = [], min_epochs
    while r < epochs:
        out.append(r)
        r *= eta
    return out


def survivors(alive: int, auto: AutoSection, last: bool) -> int:
    """How many candidates a rung keeps: the best 1/eta (at least ``finalists``); the last rung
    before the full schedule keeps exactly ``finalists``."""
    return min(alive, auto.finalists) if last else max(auto.finalists, math.ceil(alive / auto.eta))


def plan_cost(n: int, epochs: int, auto: AutoSection) -> float:
    """Student epochs the search spends on ``n`` non-vanilla candidates (vanilla: all seeds, full)."""
    alive, done, cost = n, 0, 0.0
    steps = rungs(epochs, auto.min_epochs, auto.eta)
    for i, r in enumerate(steps):
        if alive <= auto.finalists:
            break
        cost += alive * (r - done)
        alive, done = survivors(alive, auto, last=i == len(steps) - 1), r
    cost += alive * (epochs - done)  # the finalists finish seed 0
    return cost + (alive * (auto.seeds - 1) + auto.seeds) * epochs


def fit_budget(auto: AutoSection, methods: list[str], epochs: int) -> tuple[AutoSection, list[Candidate], list[str]]:
    """The search that fits ``auto.budget``: the grid, then the seeds, then the finalists shrink.
    Returns (settings in force, candidates, notes on what was shrunk)."""
    notes = []
    cands = candidates(methods, auto.grid, epochs)
    if auto.budget is None:
        return auto, cands, notes
    steps = [("grid", lambda a: a.model_copy(update={"grid": False}), "each recipe at its published setting only"),
             ("seeds", lambda a: a.model_copy(update={"seeds": 2}), "2 seeds per finalist"),
             ("finalists", lambda a: a.model_copy(update={"finalists": 1}), "1 finalist")]
    for key, shrink, what in steps:
        if plan_cost(len(cands) - 1, epochs, auto) <= auto.budget:
            break
        auto = shrink(auto)
        cands = candidates(methods, auto.grid, epochs)
        notes.append(f"to fit auto.budget={auto.budget:g} epochs: {what}")
    need = plan_cost(len(cands) - 1, epochs, auto)
    if need > auto.budget:
        raise ConfigError(f"auto.budget={auto.budget:g} student epochs is too small: the smallest search of "
                          f"{len(methods)} recipes x {epochs} epochs needs {need:g}; raise auto.budget, drop recipes "
                          "(auto.methods) or shorten optim.epochs")
    return auto, cands, notes


class Search:
    """The successive-halving search of one configuration (see the module docstring).

    ``base``: a run config dict (its ``loss`` is replaced per candidate); ``root``: the search's
    directory; ``models``: ``(student, teachers)`` modules for the Python API (each trial trains a
    copy of the student), or None to build them from the config; ``data``: ``(train, test)``
    datasets for the Python API, or None."""

    def __init__(self, base: dict, auto: AutoSection, root: Path, models=None, data=None, log=print):
        self.base, self.root, self.models, self.data, self.log = base, Path(root), models, data, log
        self.epochs = int(base.get("optim", {}).get("epochs", 240))
        self.auto, self.cands, self.notes = fit_budget(auto, list(auto.methods), self.epochs)
        self.results: dict[str, dict] = {c.key: {"values": {}, "status": "running"} for c in self.cands}
        self.bar = tqdm(total=round(plan_cost(len(self.cands) - 1, self.epochs, self.auto)),
                        desc="auto: student epochs", unit="epoch")
        self.start = time.time()

    # ---- trials ------------------------------------------------------------------------------
    def config(self, cand: Candidate, seed: int, stop: int | None) -> dict:
        cfg = copy.deepcopy(self.base)
        cfg["run"] = {**cfg.get("run", {}), "out_dir": str(self.root), "name": f"{cand.key}/seed{seed}", "seed": seed}
        cfg["data"] = {**cfg.get("data", {}), "holdout": self.auto.holdout, "holdout_seed": 0}
        cfg["train"] = {**cfg.get("train", {}), "stop_after": stop, "progress": False, "eval_every": 1}
        cfg["loss"] = [dict(t) for t in cand.terms]
        if cand.method == "vanilla":
            cfg.pop("teacher", None)
            cfg.pop("teachers", None)
        return cfg

    def value(self, cand: Candidate, seed: int, epoch: int) -> float | None:
        """Held-out top-1 of ``cand`` after ``epoch`` epochs of seed ``seed`` (trained if not yet); None if
        its loss became non-finite (recorded in its ``diverged``: a finding of the search, not its end)."""
        cfg = self.config(cand, seed, epoch if epoch < self.epochs else None)
        path = Path(cfg["run"]["out_dir"]) / cfg["run"]["name"]
        seen = {r["epoch"]: r for r in rundir.read_history(path)} if path.is_dir() else {}
        if epoch not in seen or "test_top1" not in seen[epoch]:
            done = max((e for e in seen if e <= epoch), default=0)
            try:
                run_or_load(cfg, log=self._trial_log, data=self.data, models=self._models(cand, seed))
            except NonFiniteLoss as e:
                self.results[cand.key].setdefault("diverged", {})[str(seed)] = str(e)
                self.bar.write(f"auto: {cand.label}, seed {seed}: diverged; it is out of the search")
                return None
            finally:
                self.bar.update(epoch - done)
            seen = {r["epoch"]: r for r in rundir.read_history(path)}
        return float(seen[epoch]["test_top1"])

    def _trial_log(self, line: str) -> None:
        if line.startswith("warning"):  # a run's epoch lines would drown the search's one progress bar
            self.bar.write(line)

    def _models(self, cand: Candidate, seed: int):
        if self.models is None:
            return None
        student, teachers = self.models
        return fresh_student(student, seed), (None if cand.method == "vanilla" else teachers)

    def out_of_time(self) -> bool:
        return self.auto.minutes is not None and time.time() - self.start > 60 * self.auto.minutes

    # ---- the search --------------------------------------------------------------------------
    def halve(self) -> list[Candidate]:
        """Successive halving on seed 0; returns the finalists (vanilla excluded)."""
        alive = [c for c in self.cands if c.method != "vanilla"]
        steps = rungs(self.epochs, self.auto.min_epochs, self.auto.eta)
        for i, r in enumerate(steps):
            if len(alive) <= self.auto.finalists or self.out_of_time():
                break
            scores = {c.key: self.value(c, 0, r) for c in alive}
            for c in alive:
                if scores[c.key] is None:
                    self.results[c.key]["status"] = f"diverged before epoch {r}"
                else:
                    self.results[c.key]["values"][r] = scores[c.key]
            alive = [c for c in alive if scores[c.key] is not None]  # a diverged candidate is never promoted
            keep = survivors(len(alive), self.auto, last=i == len(steps) - 1)
            ranked = sorted(alive, key=lambda c: -scores[c.key])
            for c in ranked[keep:]:
                self.results[c.key]["status"] = f"pruned after epoch {r}"
            kept = ", ".join(c.key for c in ranked[:keep])
            self.log(f"auto: rung at epoch {r}: kept {keep} of {len(alive)} ({kept})")
            alive = ranked[:keep]
        return alive

    def run(self) -> dict:
        """The whole search; returns its record (every candidate's values and status, the finalists'
        and vanilla's held-out top-1 per seed, the seconds per epoch)."""
        finalists = self.halve()
        vanilla = self.cands[0]
        final = {}
        for cand in [vanilla, *finalists]:
            seeds = range(self.auto.seeds) if not self.out_of_time() else range(1)
            final[cand.key] = {s: self.value(cand, s, self.epochs) for s in seeds}
            self.results[cand.key]["status"] = "finalist" if cand is not vanilla else "reference"
            if final[cand.key][0] is not None:
                self.results[cand.key]["values"][self.epochs] = final[cand.key][0]
        self.bar.close()
        return {"epochs": self.epochs, "auto": self.auto.model_dump(), "notes": self.notes,
                "out_of_time": self.out_of_time(), "wall_seconds": time.time() - self.start,
                "candidates": [{"key": c.key, "method": c.method, "label": c.label, "terms": list(c.terms),
                                **self.results[c.key]} for c in self.cands],
                "final": {k: {str(s): v for s, v in d.items()} for k, d in final.items()},
                "epoch_seconds": {k: self.epoch_seconds(k) for k in final}}

    def epoch_seconds(self, key: str) -> float | None:
        """Mean seconds of a full-schedule epoch of ``key`` over its seeds (training + evaluation)."""
        rows = [r for s in range(self.auto.seeds) for r in rundir.read_history(self.root / key / f"seed{s}")]
        return sum(r["seconds"] for r in rows) / len(rows) if rows else None


def fresh_student(student, seed: int):
    """A copy of the user's student for one trial: seed 0 keeps its initial weights (every candidate
    starts from the same ones), seed k > 0 re-initialises every module with ``reset_parameters``
    under the seed, so the seed spread includes the initialisation as it does for zoo models."""
    copy_ = copy.deepcopy(student)
    if seed:
        torch.manual_seed(seed)
        for m in copy_.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return copy_
