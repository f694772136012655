"""The run directory, ``run.out_dir/run.name``: the one home of its file names, its lock, the
"same config" and "finished" checks, and the student file (its writer and its readers).

Order of events: :meth:`RunDir.claim` (in the Trainer's constructor, before any long work) takes
an exclusive lock and checks that the requested start fits what the directory holds; only when the
run really starts does :meth:`RunDir.begin` clear an overwritten run and write ``config.yaml``.
So a refused run never touches the files of the run it was refused for. A caller that decides
between training and reusing a run (``workflows.reuse``) takes the same lock first and hands the
RunDir to the Trainer, so one lock file covers a run from that decision to its last write.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
from pathlib import Path

import torch
import yaml

from wdistill.config.load import dump_config, load_config
from wdistill.config.schema import RunConfig
from wdistill.errors import ConfigError, RunBusy
from wdistill.io import atomic_save, atomic_write_text, load_dict
from wdistill.models import save_student_safetensors

CONFIG, LAST, BEST, STUDENT, SUMMARY = "config.yaml", "last.pt", "best.pt", "student.pt", "summary.json"
STUDENT_SAFETENSORS, METRICS_CSV, METRICS_JSONL, LOCK = "student.safetensors", "metrics.csv", "metrics.jsonl", ".lock"
RUN_FILES = (LAST, BEST, STUDENT, STUDENT_SAFETENSORS, METRICS_CSV, METRICS_JSONL, SUMMARY, CONFIG)
# What `wdistill eval` and the probe read from a run directory, by --which.
WHICH = {"student": STUDENT, "best": BEST, "last": LAST}
# What a resumed run may change: the length of the schedule and how it reports and where it runs.
RESUMABLE_CHANGES = ("optim.epochs", "train.progress", "train.eval_every", "train.log_every",
                     "train.tensorboard", "run.device", "data.workers", "data.eval_batch_size",
                     "train.checkpoint_every", "train.stop_signals", "data.on_bad_image")


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


def holds_config(run_dir: Path, cfg: RunConfig) -> bool:
    """Whether ``run_dir/config.yaml`` records exactly ``cfg`` (the run is this job)."""
    saved = run_dir / CONFIG
    if not saved.is_file():
        return False
    try:
        return not changes_from(yaml.safe_load(saved.read_text()) or {}, cfg)
    except (ConfigError, yaml.YAMLError):
        return False


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


def acquire(run_dir: Path, wait: bool = False, log=print, poll: float = 30.0):
    """The lock of ``run_dir`` (an open file to pass to :func:`unlock`). While another live process
    holds it: wait (saying so once) when ``wait``, else raise RunBusy."""
    run_dir.mkdir(parents=True, exist_ok=True)
    said = False
    while True:
        f, holder = try_lock(run_dir / LOCK)
        if f is not None:
            return f
        if not wait:
            raise RunBusy(f"{run_dir}: process {holder} is running this job")
        if not said:
            log(f"{run_dir}: process {holder} is running this job; waiting for it")
            said = True
        time.sleep(poll)


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
        if not self.locked:
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
            self.release()
            raise
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
            changed = [k for k in changes_from(stored, self.cfg) if k not in RESUMABLE_CHANGES]
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


# ---- the student file ------------------------------------------------------------------------------
def student_record(cfg: RunConfig, num_classes: int, in_channels: int, metrics: dict) -> dict:
    """What a student file records beside its weights: enough to rebuild the model and to score
    it on the data (and view) it was trained on (``wdistill eval``)."""
    s = cfg.student
    return {"arch": s.model, "num_classes": num_classes, "in_channels": in_channels, "taps": s.taps,
            "kwargs": s.kwargs, "view": None if s.view is None else s.view.model_dump(mode="json"),
            "data": cfg.data.model_dump(mode="json"), "metrics": metrics}


def write_student(path: Path, state_dict: dict[str, torch.Tensor], record: dict) -> None:
    """``path`` (.pt: weights + record) and the same weights as ``path.with_suffix('.safetensors')``
    (record as string metadata), both written atomically."""
    atomic_save({"model": state_dict, **record}, path)
    meta = {k: record[k] for k in ("arch", "num_classes", "in_channels", "kwargs") if record.get(k) is not None}
    save_student_safetensors(state_dict, Path(path).with_suffix(".safetensors"), meta)


def resolve_checkpoint(path: str | Path, which: str | None = None) -> tuple[Path, str | None]:
    """(file to read, note for the user or None) for a run directory or a checkpoint file: a
    directory gives its student.pt (``which``: best.pt / last.pt), or for an unfinished run
    best.pt, then last.pt (said in the note)."""
    path = Path(path)
    if path.is_dir():
        if which:
            f = path / WHICH[which]
            if not f.is_file():
                raise ConfigError(f"{path} has no {f.name}: the run wrote "
                                  f"{', '.join(p.name for p in sorted(path.glob('*.pt'))) or 'no checkpoint yet'}")
            return f, None
        for name in ("student", "best", "last"):
            f = path / WHICH[name]
            if f.is_file():
                note = None if name == "student" else f"{path} has no {STUDENT} (unfinished run): using {f.name}"
                return f, note
        raise ConfigError(f"{path} holds no {STUDENT}, {BEST} or {LAST}: pass a run directory written by "
                          "`wdistill train/distill` or a checkpoint file")
    if which:
        raise ConfigError("--which picks a file of a run directory; you passed a file")
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    return path, None


def student_weights(state: dict) -> tuple[dict, dict | None, str | None, dict]:
    """(state_dict, run config or None, arch or None, model kwargs) of any checkpoint a run writes."""
    if not isinstance(state, dict):
        raise ConfigError(f"the checkpoint holds a {type(state).__name__}, not a dict of weights")
    if "distiller" in state:  # best.pt / last.pt: the whole distiller; the student is under "student."
        prefix = "student."
        sd = {k[len(prefix):]: v for k, v in state["distiller"].items() if k.startswith(prefix)}
        cfg = state.get("config")
        kwargs = (cfg or {}).get("student", {}).get("kwargs") or {}
        return sd, cfg, state.get("arch"), kwargs
    if isinstance(state.get("model"), dict):  # student.pt or an exported student
        cfg = {"data": state["data"]} if isinstance(state.get("data"), dict) else None
        return state["model"], cfg, state.get("arch"), state.get("kwargs") or {}
    return state, None, None, {}  # a bare state_dict (published checkpoints)


def run_config(run_dir: Path) -> RunConfig:
    """The config a run directory records (its config.yaml)."""
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir() or not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG}): pass the directory "
                          "`wdistill train/distill` wrote")
    return load_config(path)
