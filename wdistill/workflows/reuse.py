"""Resumable benchmark runs: each is a Trainer run directory; finished runs are skipped."""
from __future__ import annotations

import json
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

from wdistill.engine import Trainer, load_config
from wdistill.engine.checkpoint import atomic_write_text
from wdistill.config.schema import ConfigError, dump_config
from wdistill.engine.rundir import try_lock, unlock

WALL_FILE = "bench_wall.json"  # wall seconds of every session that worked on the run, summed
LOCK_FILE = ".bench.lock"  # PID of the process running the job (benchmark shards may share a teacher)


class RunBusy(RuntimeError):
    """Another live process is training this run (raised instead of waiting when ``wait=False``)."""


@contextmanager
def run_lock(run_dir: Path, log=print, poll: float = 30.0, wait: bool = True):
    """Hold ``run_dir/.bench.lock`` (the run directory's kind of lock: a flock, so a dead holder's
    lock is free) from the load-or-train decision to the end of training; wait while another live
    process holds it, or raise RunBusy if ``wait`` is False."""
    run_dir.mkdir(parents=True, exist_ok=True)
    said = False
    while True:
        f, holder = try_lock(run_dir / LOCK_FILE)
        if f is not None:
            break
        if not wait:
            raise RunBusy(f"{run_dir}: process {holder} is running this job")
        if not said:
            log(f"{run_dir}: process {holder} is running this job; waiting for it")
            said = True
        time.sleep(poll)
    try:
        yield
    finally:
        unlock(f)


def shared_queue(jobs, get, bar):
    """Run ``jobs`` in order and yield ``(key, summary or None)`` for each, so that two shells running
    the same command share the work. ``jobs``: ``(key, make_config, needs)``, where ``make_config()``
    builds the job's config when its turn comes and ``needs`` lists the configs of jobs whose
    checkpoints it reads (its teachers). ``get(cfg, log=, wait=)`` is run_or_load or a loader.

    A job another process is training goes to the back of the queue once; the second time round this
    process waits for it. Before a job starts, each job it needs is fetched waiting (finished:
    its summary is read; being trained elsewhere: wait; not started: train it now)."""
    def log(msg):
        bar.write(str(msg))
    pending = deque((key, make, needs, False) for key, make, needs in jobs)
    while pending:
        key, make, needs, deferred = pending.popleft()
        bar.set_postfix_str(" ".join(str(k) for k in key if k is not None) if isinstance(key, tuple) else str(key))
        try:
            for need in needs:
                get(need, log=log, wait=True)
            summary = get(make(), log=log, wait=deferred)
        except RunBusy as busy:
            log(f"{busy}; coming back to it later")
            pending.append((key, make, needs, True))
            continue
        bar.update()
        yield key, summary


def run_dir_of(cfg_dict: dict) -> Path:
    return Path(cfg_dict["run"]["out_dir"]) / cfg_dict["run"]["name"]


def _same_config(run_dir: Path, cfg) -> bool:
    """Whether ``run_dir`` holds a run of ``cfg``. The saved config is read through the current
    schema, so a setting added since (with its default) does not make old runs look different."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return False
    try:
        then = load_config(yaml.safe_load(saved.read_text()))
    except (ConfigError, ValueError):
        return False  # written by a schema that no longer validates: not this config
    return yaml.safe_load(dump_config(then)) == yaml.safe_load(dump_config(cfg))


def run_or_load(cfg_dict: dict, log=print, data=None, wait: bool = True) -> dict:
    """Run the configured job unless its directory already holds a finished run of the same config.

    finished (summary.json) with the same config -> its summary, nothing trained;
    interrupted (last.pt) with the same config -> resumed from last.pt;
    a different config in the directory (e.g. a preset re-tuned since) -> started again;
    being trained by another live process -> wait for it, or raise RunBusy if ``wait`` is False.
    The summary gains ``wall_seconds``: wall time of every session of the run, summed.
    """
    cfg = load_config(cfg_dict)
    run_dir = run_dir_of(cfg_dict)
    with run_lock(run_dir, log, wait=wait):
        return _run_or_load(cfg, run_dir, log, data)


def load_finished(cfg_dict: dict) -> dict | None:
    """The summary of a finished run of exactly this config, or None (nothing is trained)."""
    run_dir = run_dir_of(cfg_dict)
    if _same_config(run_dir, load_config(cfg_dict)) and (run_dir / "summary.json").is_file():
        return _with_wall(run_dir, json.loads((run_dir / "summary.json").read_text()))
    return None


def _run_or_load(cfg, run_dir: Path, log, data) -> dict:
    same = _same_config(run_dir, cfg)
    if same and (run_dir / "summary.json").is_file():
        return _with_wall(run_dir, json.loads((run_dir / "summary.json").read_text()))
    resume = same and (run_dir / "last.pt").is_file()
    if (run_dir / "config.yaml").is_file() and not same:
        log(f"{run_dir}: holds a run of another configuration; starting again")
        (run_dir / WALL_FILE).unlink(missing_ok=True)
        (run_dir / "summary.json").unlink(missing_ok=True)
    t0 = time.time()
    summary = Trainer(cfg, resume=resume, overwrite=not resume, log=log, data=data).fit()
    wall = _wall(run_dir) + time.time() - t0
    atomic_write_text(json.dumps({"wall_seconds": wall, "threads": torch.get_num_threads()}) + "\n",
                      run_dir / WALL_FILE)
    return _with_wall(run_dir, summary)


def _wall_record(run_dir: Path) -> dict:
    f = run_dir / WALL_FILE
    return json.loads(f.read_text()) if f.is_file() else {}


def _wall(run_dir: Path) -> float:
    return _wall_record(run_dir).get("wall_seconds", 0.0)


def _with_wall(run_dir: Path, summary: dict) -> dict:
    """``summary`` + ``wall_seconds`` (sessions summed; epoch time if a crashed session lost it) and
    ``threads`` (torch threads of the last session, None if unknown)."""
    rec = _wall_record(run_dir)
    return {**summary, "wall_seconds": rec.get("wall_seconds") or summary.get("train_seconds"),
            "threads": rec.get("threads")}
