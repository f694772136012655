"""Runs that are reused when finished: each job is an ordinary run directory; a finished run of the
same config is read back, an interrupted one resumed, a changed one started again. The demo, the
benchmarks and ``wdistill auto`` run their jobs through :func:`run_or_load`.

Two processes given the same list of jobs share it as a work queue (:func:`shared_queue`): the run
directory's lock (``engine.rundir``) is held from the load-or-train decision to the end of
training, so the second process skips a job the first is training and comes back to it.

A run whose loss became non-finite is marked (``diverged.json``) and raises :class:`NonFiniteLoss`
again when asked for, without training: resuming it from its last checkpoint would replay the same
steps into the same divergence, in this process or in another one sharing the queue. A changed
config starts the run again; deleting the file tries the same config again.
"""
from __future__ import annotations

import json
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

import torch

from wdistill.config import load_config
from wdistill.engine import make_trainer, rundir
from wdistill.errors import NonFiniteLoss, RunBusy
from wdistill.io import atomic_write_text

WALL_FILE = "wall.json"  # wall seconds of every session that worked on the run, summed


@contextmanager
def run_lock(run_dir: Path, log=print, poll: float = 30.0, wait: bool = True):
    """Hold ``run_dir``'s lock for work on a finished run (a probe, a fine-tune) the way training
    holds it: wait while another live process holds it, or raise RunBusy if ``wait`` is False."""
    f = rundir.acquire(Path(run_dir), wait, log, poll)
    try:
        yield
    finally:
        rundir.unlock(f)


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


def run_or_load(cfg_dict: dict, log=print, data=None, wait: bool = True, poll: float = 30.0, models=None) -> dict:
    """Run the configured job unless its directory already holds a finished run of the same config.

    finished with the same config -> its summary, nothing trained;
    interrupted (last.pt) with the same config -> resumed from last.pt;
    a different config in the directory (e.g. a preset re-tuned since) -> started again;
    being trained by another live process -> wait for it, or raise RunBusy if ``wait`` is False.
    The summary gains ``wall_seconds``: wall time of every session of the run, summed.
    ``data``: ``(train, test)`` datasets and ``models``: ``(student, teachers)`` modules passed to the
    Trainer instead of building them from the config (the Python API).
    """
    cfg = load_config(cfg_dict)
    run = rundir.RunDir(cfg)
    run.lock(wait=wait, log=log, poll=poll)
    try:
        return _run_or_load(cfg, run, log, data, models)
    finally:
        run.release()


def load_finished(cfg_dict: dict) -> dict | None:
    """The summary of a finished run of exactly this config, or None (nothing is trained)."""
    path = run_dir_of(cfg_dict)
    if rundir.finished(path) and rundir.holds_config(path, load_config(cfg_dict)):
        return _with_wall(path, json.loads((path / rundir.SUMMARY).read_text()))
    return None


def diverged_error(path: Path) -> str | None:
    """The engine's message in run directory ``path``'s ``diverged.json``, or None (it has none)."""
    f = Path(path) / rundir.DIVERGED
    return json.loads(f.read_text())["error"] if f.is_file() else None


def load_diverged(cfg_dict: dict) -> str | None:
    """The engine's message if a run of exactly this config diverged (its ``diverged.json``), else None."""
    path = run_dir_of(cfg_dict)
    error = diverged_error(path)
    return error if error is not None and rundir.holds_config(path, load_config(cfg_dict)) else None


def _run_or_load(cfg, run: rundir.RunDir, log, data, models) -> dict:
    path = run.path
    same = rundir.holds_config(path, cfg)
    if same and rundir.finished(path):
        return _with_wall(path, json.loads((path / rundir.SUMMARY).read_text()))
    error = diverged_error(path) if same else None
    if error is not None:
        raise NonFiniteLoss(f"{path} diverged when it was trained (delete {path / rundir.DIVERGED} to try the same "
                            f"config again): {error}")
    resume = same and (path / rundir.LAST).is_file()
    if (path / rundir.CONFIG).is_file() and not same:
        log(f"{path}: holds a run of another configuration; starting again")
        for name in (WALL_FILE, rundir.SUMMARY, rundir.DIVERGED):
            (path / name).unlink(missing_ok=True)
    t0 = time.time()
    student, teachers = models or (None, None)
    trainer = make_trainer(cfg, resume=resume, overwrite=not resume, log=log, data=data, held=run,
                           student=student, teachers=teachers)
    try:
        summary = trainer.fit()
    except NonFiniteLoss as e:
        atomic_write_text(json.dumps({"error": str(e)}) + "\n", path / rundir.DIVERGED)
        raise
    finally:
        trainer.close()  # the models get their forward hooks back off (a shared teacher serves many runs)
    wall = _wall_record(path).get("wall_seconds", 0.0) + time.time() - t0
    atomic_write_text(json.dumps({"wall_seconds": wall, "threads": torch.get_num_threads()}) + "\n",
                      path / WALL_FILE)
    return _with_wall(path, summary)


def _wall_record(path: Path) -> dict:
    f = path / WALL_FILE
    if not f.is_file():
        f = path / "bench_wall.json"  # the name runs written before December 2026 used
    return json.loads(f.read_text()) if f.is_file() else {}


def _with_wall(path: Path, summary: dict) -> dict:
    """``summary`` + ``wall_seconds`` (sessions summed; epoch time if a crashed session lost it) and
    ``threads`` (torch threads of the last session, None if unknown)."""
    rec = _wall_record(path)
    return {**summary, "wall_seconds": rec.get("wall_seconds") or summary.get("train_seconds"),
            "threads": rec.get("threads")}
