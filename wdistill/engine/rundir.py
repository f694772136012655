"""A run directory that one process owns: lock, acceptance checks, resume against the stored config.

Order of events: :meth:`RunDir.claim` (in the Trainer's constructor, before any long work) takes
an exclusive lock and checks that the requested start fits what the directory holds; only when the
run really starts does :meth:`RunDir.begin` clear an overwritten run and write ``config.yaml``.
So a refused run never touches the files of the run it was refused for.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

from wdistill.engine.checkpoint import atomic_write_text, load
from wdistill.config.schema import ConfigError, RunConfig, dump_config

# What a resumed run may change: the length of the schedule and how it reports and where it runs.
RESUMABLE_CHANGES = ("optim.epochs", "train.progress", "train.eval_every", "train.log_every",
                     "train.tensorboard", "run.device", "data.workers", "data.eval_batch_size")
RUN_FILES = ("last.pt", "best.pt", "student.pt", "student.safetensors", "metrics.csv", "metrics.jsonl",
             "summary.json", "config.yaml")


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


def try_lock(path: Path):
    """Take an exclusive flock on ``path`` and write our PID in it: ``(open file, None)``, or
    ``(None, holder)`` when another process holds it (``holder``: the PID it wrote, or "unknown").
    The kernel drops a flock when its holder dies, so a lock file left by a killed process (its PID
    still inside) is never stale: the next process simply gets the lock and overwrites the PID."""
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None, holder
        raise
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f, None


def unlock(f) -> None:
    """Release a lock from :func:`try_lock`; the file stays (deleting a lock file races its next owner)."""
    try:
        f.seek(0)
        f.truncate()
        fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        f.close()


class RunDir:
    """``run.out_dir/run.name``, owned by this process from :meth:`claim` to :meth:`release`."""

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
        return self.path / "last.pt"

    def claim(self, resume: bool, overwrite: bool) -> None:
        """Lock the directory and check that the requested start fits what it holds."""
        if resume and overwrite:
            raise ConfigError("--resume continues a run and --overwrite starts it again: pass one of them")
        self._acquire()
        try:
            has_run = self.last.exists()
            if has_run and not (resume or overwrite):
                raise ConfigError(f"run directory {self.path} already holds a run: pass --resume to continue it, "
                                  "--overwrite to start again, or choose another run.name")
            if resume:
                if not has_run:
                    raise ConfigError(f"nothing to resume: {self.last} does not exist (start the run without "
                                      "--resume)")
                self._check_same_config(load(self.last, what="run checkpoint"))
        except BaseException:
            self.release()
            raise

    def _check_same_config(self, state: dict) -> None:
        stored = state.get("config")
        if not isinstance(stored, dict):
            raise ConfigError(f"{self.last} records no config, so it cannot be resumed safely: start again "
                              "with --overwrite")
        try:
            stored = RunConfig.model_validate(stored).model_dump(mode="json")
        except Exception as e:  # noqa: BLE001 - an old or edited config
            raise ConfigError(f"the config stored in {self.last} is no longer valid ({str(e).splitlines()[0]}): "
                              "start again with --overwrite") from None
        new = self.cfg.model_dump(mode="json")
        changed = [k for k in config_differences(stored, new) if k not in RESUMABLE_CHANGES]
        if changed:
            flat_old, flat_new = _flatten(stored), _flatten(new)
            detail = "; ".join(f"{k}: {flat_old.get(k, '<absent>')!r} -> {flat_new.get(k, '<absent>')!r}"
                               for k in changed[:10])
            raise ConfigError(f"--resume with settings that differ from the run in {self.path} ({detail}). A resumed "
                              f"run may change only {', '.join(RESUMABLE_CHANGES)}. Resume with the run's own "
                              f"settings (its config.yaml), or start a new run (another run.name, or --overwrite)")

    def _acquire(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock, holder = try_lock(self.path / ".lock")
        if self._lock is None:
            raise ConfigError(f"run directory {self.path} is in use by process {holder}: wait for it to "
                              "finish (or stop it), or choose another run.name")

    def begin(self, overwrite: bool, resume: bool) -> None:
        """The run starts: clear an overwritten run, then record the resolved config."""
        if overwrite and not resume:
            for name in RUN_FILES:
                p = self.path / name
                if p.exists():
                    p.unlink()
            shutil.rmtree(self.path / "tb", ignore_errors=True)
        atomic_write_text(dump_config(self.cfg), self.path / "config.yaml")

    def release(self) -> None:
        if self._lock is not None:
            unlock(self._lock)
            self._lock = None
