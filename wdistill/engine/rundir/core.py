"""The run directory, ``run.out_dir/run.name``, owned by one process: the "same config" and
"finished" checks and the claim/begin/release sequence.

Order of events: :meth:`RunDir.claim` (in the Trainer's constructor, before any long work) takes
an exclusive lock and checks that the requested start fits what the directory holds; only when the
run really starts does :meth:`RunDir.begin` clear an overwritten run and write ``config.yaml``.
So a refused run never touches the files of the run it was refused for. A caller that decides
between training and reusing a run (``workflows.reuse``) takes the same lock first and hands the
RunDir to the Trainer, so one lock file covers a run from that decision to its last write.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch.distributed as dist
import yaml

from wdistill.config.load import dump_config, load_config
from wdistill.config.schema import RunConfig
from wdistill.engine.rundir.lock import acquire, unlock
from wdistill.engine.rundir.names import (
    CONFIG,
    LAST,
    METRICS_CSV,
    METRICS_JSONL,
    NOT_IDENTITY,
    RESUMABLE_CHANGES,
    RUN_FILES,
    STUDENT,
    SUMMARY,
)
from wdistill.errors import ConfigError, RunBusy
from wdistill.io import atomic_write_text, load_dict


def run_path(cfg: RunConfig) -> Path:
    return Path(cfg.run.out_dir) / cfg.run.name


def finished(run_dir: Path) -> bool:
    """A run that ended: its summary and its student file are written (the last two writes)."""
    return (run_dir / SUMMARY).is_file() and (run_dir / STUDENT).is_file()


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}{i}."))
        out[f"{prefix}length"] = len(d)
    else:
        out[prefix[:-1]] = d
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two dumped configs."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def changes_from(stored: dict, cfg: RunConfig) -> list[str]:
    """Keys of ``cfg`` that differ from a stored config. The stored one is read through the current
    schema, so a setting added since (with its default) does not count as a change; a stored config
    the schema no longer accepts raises ConfigError."""
    try:
        then = load_config(stored).model_dump(mode="json")
    except ConfigError as e:
        raise ConfigError(f"the stored config is no longer valid ({str(e).splitlines()[-1].strip()})") from None
    return config_differences(then, cfg.model_dump(mode="json"))


def fmt(v) -> str:
    """A metric as the log and metrics.csv show it."""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """metrics.csv and metrics.jsonl: one row per finished epoch (every key any row has)."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    lines = [",".join(keys)] + [",".join(fmt(row.get(k, "")) for k in keys) for row in history]
    atomic_write_text("\n".join(lines) + "\n", Path(run_dir) / METRICS_CSV)
    atomic_write_text("".join(json.dumps(r) + "\n" for r in history), Path(run_dir) / METRICS_JSONL)


def holds_config(run_dir: Path, cfg: RunConfig) -> bool:
    """Whether ``run_dir/config.yaml`` records exactly ``cfg`` (the run is this job)."""
    saved = run_dir / CONFIG
    if not saved.is_file():
        return False
    try:
        changes = changes_from(yaml.safe_load(saved.read_text()) or {}, cfg)
    except (ConfigError, yaml.YAMLError):
        return False
    return not [k for k in changes if not k.startswith(NOT_IDENTITY)]


class RunDir:
    """``run.out_dir/run.name``, owned by this process from :meth:`lock` (or :meth:`claim`) to
    :meth:`release`."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        out = Path(cfg.run.out_dir)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"run.out_dir {str(out)!r} is a file, not a directory: choose another run.out_dir")
        self.path = out / cfg.run.name
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path} is a file, not a run directory: choose another run.name")
        self._lock = None

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def locked(self) -> bool:
        return self._lock is not None

    def lock(self, wait: bool = False, log=print, poll: float = 30.0) -> None:
        """Take the run's lock (see :func:`acquire`)."""
        self._lock = acquire(self.path, wait, log, poll)

    def claim(self, resume: bool | str, overwrite: bool) -> bool:
        """Lock the directory (unless this process holds its lock already) and check that the
        requested start fits what it holds. ``resume="auto"`` continues the run the directory holds,
        if any, else starts it. Returns whether the run resumes."""
        if resume and overwrite:
            raise ConfigError("--resume continues a run and --overwrite starts it again: pass one of them")
        took = not self.locked
        if took:
            try:
                self.lock(wait=False)
            except RunBusy as busy:
                holder = str(busy).rsplit("process ", 1)[-1].split()[0]
                raise ConfigError(f"run directory {self.path} is in use by process {holder}: wait for it to "
                                  "finish (or stop it), or choose another run.name") from None
        if resume == "auto":
            resume = self.last.exists()
        try:
            self._check_start(bool(resume), overwrite)
        except BaseException:
            if took:  # a lock the caller held stays theirs
                self.release()
            raise
        return bool(resume)

    def claim_on_every_rank(self, resume: bool | str, overwrite: bool, rank: int, world_size: int) -> bool:
        """Rank 0 claims the directory (:meth:`claim`); every rank learns the verdict (so a refused distributed run
        stops on all ranks at once instead of hanging in a collective) and, for ``resume="auto"``, whether to
        continue."""
        error = None
        if rank == 0:
            try:
                resume = self.claim(resume, overwrite)
            except ConfigError as e:
                error = str(e)
        if world_size > 1:
            box = [error, resume]
            dist.broadcast_object_list(box, 0)
            error, resume = box
        if error:
            raise ConfigError(error)
        return bool(resume)

    def _check_start(self, resume: bool, overwrite: bool) -> None:
        has_run = self.last.exists()
        if has_run and not (resume or overwrite):
            raise ConfigError(f"run directory {self.path} already holds a run: pass --resume to continue it, "
                              "--overwrite to start again, or choose another run.name")
        if not resume:
            return
        if not has_run:
            raise ConfigError(f"nothing to resume: {self.last} does not exist (start the run without --resume)")
        stored = load_dict(self.last, what="run checkpoint").get("config")
        if not isinstance(stored, dict):
            raise ConfigError(f"{self.last} records no config, so it cannot be resumed safely: start again "
                              "with --overwrite")
        try:
            changed = [k for k in changes_from(stored, self.cfg)
                       if k not in RESUMABLE_CHANGES and not k.startswith(NOT_IDENTITY)]
        except ConfigError as e:
            raise ConfigError(f"{self.last}: {e}: start again with --overwrite") from None
        if changed:
            old, new = _flatten(load_config(stored).model_dump(mode="json")), _flatten(self.cfg.model_dump(mode="json"))
            detail = "; ".join(f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in changed[:10])
            raise ConfigError(f"--resume with settings that differ from the run in {self.path} ({detail}). A resumed "
                              f"run may change only {', '.join(RESUMABLE_CHANGES)}. Resume with the run's own "
                              f"settings (its config.yaml), or start a new run (another run.name, or --overwrite)")

    def begin(self, overwrite: bool, resume: bool) -> None:
        """The run starts: clear an overwritten run, then record the resolved config."""
        if overwrite and not resume:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / "tb", ignore_errors=True)
        for tmp in self.path.glob(".*.tmp"):  # an atomic write cut short by a kill: never a run file itself
            tmp.unlink(missing_ok=True)
        atomic_write_text(dump_config(self.cfg), self.path / CONFIG)

    def release(self) -> None:
        if self._lock is not None:
            unlock(self._lock)
            self._lock = None


