"""Stopping a run cleanly: stop signals, step checkpoints, and the step every rank agrees on.

**Signals** (``train.stop_signals``, default SIGTERM and SIGUSR1): the first one sets a flag; the
step under way finishes, ``last.pt`` is written at that point of the epoch and the run raises
:class:`Preempted` (the CLI exits 75). A second signal a second or more later exits at once by
that signal's default action (the last checkpoint stays). Repeats within a second are the same
request: a scheduler that signals both torchrun and its workers, which torchrun then signals again.
DataLoader workers ignore the stop signals (a worker killed by SLURM's SIGTERM to the whole job
step would otherwise crash the main process before it could write the checkpoint).

**The agreement** (:class:`Vote`): before step k, every rank must take the same decision (go on,
checkpoint, stop, stop for a bad file) or the ranks' collectives would no longer pair up and the
job would hang. Each rank contributes flags (a stop signal seen, a checkpoint due by rank 0's
clock, a bad file in batch k under ``data.on_bad_image: error``), reduced by MAX over a gloo
group of CPU tensors. The reduction for step k+1 is started before step k and waited for after
it, so it overlaps a whole step and never touches the GPU: no host-device sync per step (the
ranks' CPUs exchange 3 integers asynchronously). Hence a signal reaches the decision one or two
steps after it arrives. One process needs no reduction and decides at the next step.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Callable

import torch
import torch.distributed as dist

from wdistill.data.samples import bad_message
from wdistill.errors import BadImages, ConfigError, Preempted
from wdistill.losses._shared import distributed as helpers

REPEAT_WINDOW = 1.0  # seconds: a repeat of the stop signal within this counts as the same request
STOP, DUE, BAD = range(3)


def _say(text: str) -> None:
    """Write from a signal handler (print may be in use by the interrupted code: not re-entrant)."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass


class StopSignals:
    """While entered, the named signals request a clean stop instead of killing the process."""

    def __init__(self, names: list[str], log: Callable[[str], None] = print):
        self.names, self.log = list(names), log
        self.received: str | None = None
        self._first_at = None
        self._previous: dict = {}
        self._pid = os.getpid()

    def __enter__(self) -> StopSignals:
        if self.names and threading.current_thread() is threading.main_thread():
            for name in self.names:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked child (a DataLoader worker before its init): not ours to stop
            return
        name, now = signal.Signals(signum).name, time.monotonic()
        if self._first_at is None:
            self._first_at, self.received = now, name
            _say(f"\n{name} received: finishing this step, then writing last.pt and stopping "
                 f"(a second {name} exits at once)\n")
        elif now - self._first_at >= REPEAT_WINDOW:
            _say(f"\n{name} again: exiting now without a new checkpoint (the last one stays)\n")
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


class Vote:
    """The ranks' common flags (MAX over ranks), asynchronously on a gloo group of CPU tensors."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        # Every rank creates the group at the same point (the Trainer's constructor). helpers holds it, until
        # ddp.leave() drops it: a trainer that its caller keeps must not keep the group past the destroy.
        self._group = helpers.held_gloo_group() if world_size > 1 else None
        self._pending = None

    @property
    def group(self):
        """The vote's gloo group; None on one process."""
        if self._group is None:
            return None
        group = self._group()
        if group is None:
            raise RuntimeError("this trainer's process group was ended (Trainer.close() or "
                               "wdistill.engine.ddp.leave()); use the trainer of a multi-process job before that")
        return group

    def close(self) -> None:
        """Destroy the vote's group (the trainer is done with it)."""
        if self._group is not None:
            helpers.release_gloo_group(self._group)

    def send(self, flags: list[int]) -> None:
        if self.group is None:  # one process: plain integers, no tensor at all
            self._pending = (list(flags), None)
            return
        t = torch.tensor(flags, dtype=torch.int32)  # on the CPU: the GPU never waits for it
        self._pending = (t, dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group, async_op=True))

    def recv(self) -> list[int]:
        t, work = self._pending
        self._pending = None
        if work is None:
            return t
        work.wait()
        return [int(v) for v in t.tolist()]

    def now(self, flags: list[int]) -> list[int]:
        self.send(flags)
        return self.recv()

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` on rank 0 (None elsewhere); ``[obj]`` on one process."""
        if self.group is None:
            return [obj]
        out = [None] * self.world_size if dist.get_rank() == 0 else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def all_gather(self, obj) -> list:
        if self.group is None:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out


class StepControl:
    """Called around every step of a pass (``engine.loop.run_pass``): :meth:`send` right after a
    batch is fetched (its flags for the vote), :meth:`decide` before that batch trains.

    ``save(position)`` writes last.pt with ``position`` steps of the epoch done (None in a
    pre-training stage, where a stop writes nothing and the stage runs again on resume);
    ``every_steps``/``every_seconds`` are train.checkpoint_every; ``first_step`` is the run's step
    count at position 0 of this pass."""

    def __init__(self, signals: StopSignals, vote: Vote, loader, rank: int, where: str, first_step: int = 0,
                 save: Callable[[int], None] | None = None, every_steps: int | None = None,
                 every_seconds: float | None = None, clock: dict | None = None):
        self.signals, self.vote, self.loader, self.rank, self.where = signals, vote, loader, rank, where
        self.first_step, self.save, self.every_steps, self.every_seconds = first_step, save, every_steps, every_seconds
        self.clock = clock if clock is not None else {"saved": time.monotonic()}  # shared over a run's passes
        self.start = None

    def _bad_here(self) -> bool:
        """The batch just fetched stops the run: a bad file under data.on_bad_image=error, a sample with no
        readable replacement (under skip too), or a label out of range or images of two sizes."""
        if not getattr(self.loader, "defer_errors", False):
            return False
        loader = self.loader
        return bool(loader.last_failed or loader.last_problem or (loader.on_bad_image == "error" and loader.last_bad))

    def send(self) -> None:
        due = (self.every_seconds is not None and self.rank == 0
               and time.monotonic() - self.clock["saved"] >= self.every_seconds)
        self.vote.send([int(self.signals.requested), int(due), int(self._bad_here())])

    def decide(self, position: int) -> None:
        flags = self.vote.recv()
        if self.vote.group is None:
            flags[STOP] = int(self.signals.requested)  # one process: the flag as it is now
        if self.start is None:
            self.start = position  # the first step of this pass (a resumed epoch starts inside)
        step = self.first_step + position
        due = flags[DUE] or (self.every_steps is not None and position > self.start and step % self.every_steps == 0)
        if flags[BAD]:
            self._stop_for_bad(position)
        if flags[STOP]:
            if self.save is not None:
                self.save(position)
            raise Preempted(self._stopped(position))
        if due and self.save is not None:
            self.save(position)
            self.clock["saved"] = time.monotonic()

    def _stop_for_bad(self, position: int) -> None:
        loader = self.loader
        mine = (list(loader.last_bad), bool(loader.last_failed), loader.last_problem) if self._bad_here() else \
            ([], False, None)
        found = self.vote.all_gather(mine)  # every rank names every bad file, whichever rank met it
        every, exhausted = [b for bad, _, _ in found for b in bad], any(failed for _, failed, _ in found)
        problem = next((p for _, _, p in found if p), None)  # a label or an image size, on any rank
        if self.save is not None:
            self.save(position)
        if problem:
            raise ConfigError(problem + ("; the run stopped after writing last.pt: once the data are fixed, run the "
                                         "same command with --resume" if self.save is not None else ""))
        raise BadImages(bad_message(every, getattr(self.loader, "what", "the data"), resumable=self.save is not None,
                                    exhausted=exhausted))

    def _stopped(self, position: int) -> str:
        name = self.signals.received or "a stop signal (on another rank)"
        if self.save is None:
            return (f"{name}: stopped during {self.where} with {position} steps done; nothing new was written (a "
                    "pre-training stage runs again from its start on resume). Run the same command with --resume "
                    "(or --auto-resume) to continue")
        return (f"{name}: stopped in {self.where} with {position} of its {len(self.loader)} steps done, and last.pt "
                "written there. Run the same command with --resume (or --auto-resume) to continue from that step")
