"""The run directory's lock: one process owns a run from the first decision about it to its last
write. A flock, so a lock left by a killed process is never stale."""
from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from wdistill.engine.rundir.names import LOCK
from wdistill.errors import RunBusy


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
