"""Issue 28: long runs that survive a cluster.

A real SIGTERM to a real training process writes a step checkpoint and exits 75, and the resumed
run ends bit-identical to an uninterrupted one; step checkpoints resume inside an epoch on both
data paths; a full disk (a small tmpfs when mounting is permitted, and always a per-file size limit
set with RLIMIT_FSIZE, both failing at the OS level) leaves the previous checkpoint loadable and
exits 74; under torchrun the ranks agree on the stop step, and a rank SIGKILLed from outside is
restarted by the elastic agent and the job resumes by itself with every epoch exactly once."""
from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from builders import free_port, small_run

from wdistill.config import load_config
from wdistill.config.training import checkpoint_interval
from wdistill.engine import Trainer
from wdistill.engine import epochs as epochs_module
from wdistill.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = dict(os.environ, OMP_NUM_THREADS="1")
CLI = [sys.executable, "-m", "wdistill.cli"]


def _yaml(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True)["distiller"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- configuration -------------------------------------------------------------------------------
def test_checkpoint_every_takes_steps_or_a_time_and_refuses_the_rest(tmp_path):
    assert checkpoint_interval(500) == (500, None) and checkpoint_interval("500 steps") == (500, None)
    assert checkpoint_interval("30 min") == (None, 1800.0) and checkpoint_interval("2h") == (None, 7200.0)
    assert checkpoint_interval("90 s") == (None, 90.0) and checkpoint_interval(None) == (None, None)
    for bad in (0, "1.5 steps", "3 parsecs", True, "-2 min"):
        with pytest.raises(ConfigError, match="train.checkpoint_every"):
            load_config(small_run(tmp_path, seed=0, extra_train={"checkpoint_every": bad}))
    cfg = load_config(small_run(tmp_path, seed=0, extra_train={"stop_signals": ["term", "SIGUSR2"]}))
    assert cfg.train.stop_signals == ["SIGTERM", "SIGUSR2"] and cfg.train.checkpoint_every == "30 min"
    with pytest.raises(ConfigError, match="SIGKILL"):
        load_config(small_run(tmp_path, seed=0, extra_train={"stop_signals": ["SIGKILL"]}))


# ---- a real SIGTERM, then --resume -------------------------------------------------------------
def test_sigterm_writes_a_step_checkpoint_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """SIGTERM a few steps into epoch 2 of a real CLI process: exit 75 within a step, last.pt inside the
    epoch; `--resume` then ends with weights and metrics bit-identical to an uninterrupted run (CRD:
    its memory bank and its negatives drawn from the global RNG must continue exactly too)."""
    cfg = small_run(tmp_path, seed=4, train_subset=768, test_subset=64, batch_size=16, name="stopped",
                    loss=[{"name": "ce"}, {"name": "crd", "weight": 0.8, "num_negatives": 64}],
                    teacher={"model": "resnet8", "checkpoint": _teacher(tmp_path)},
                    extra_data={"crop_padding": 2}, extra_train={"checkpoint_every": None, "log_every": 7})
    path = _yaml(tmp_path / "c.yaml", cfg)
    proc = subprocess.Popen([*CLI, "distill", path], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch 1/2"):
            time.sleep(0.2)  # into epoch 2 (48 steps of ~30 ms)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err
    assert "stopped: SIGTERM: stopped in epoch 2 with" in err and "Traceback" not in err
    run = tmp_path / "runs" / "stopped"
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and 0 < state["step"] < 48 and len(state["ranks"]) == 1, (state["epoch"], state["step"])
    print(f"SIGTERM to exit: {time.monotonic() - sent:.2f} s, stopped after {state['step']} steps of epoch 2")
    again = subprocess.run([*CLI, "distill", path, "--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"after epoch 1 and {state['step']} steps of the next" in again.stdout
    Trainer(load_config(dict(cfg, run=dict(cfg["run"], name="whole"))), log=lambda m: None).fit()
    assert _same(_weights(run), _weights(tmp_path / "runs" / "whole"))
    assert _rows(run) == _rows(tmp_path / "runs" / "whole")


def _teacher(tmp_path) -> str:
    from builders import random_teacher
    return random_teacher(tmp_path / "teacher.pt", "resnet8")


def test_a_second_signal_exits_at_once_and_a_quick_repeat_counts_once(tmp_path):
    code = ("import sys, time\nfrom wdistill.engine.preempt import StopSignals\n"
            "with StopSignals(['SIGTERM', 'SIGUSR1']) as s:\n"
            "    print('ready', flush=True)\n"
            "    while True:\n        time.sleep(0.01)\n        print(int(s.requested), flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.1)
    proc.send_signal(signal.SIGUSR1)  # a scheduler signalling torchrun and its workers: the same request
    time.sleep(0.6)
    assert proc.poll() is None
    time.sleep(0.5)
    t = time.monotonic()
    proc.send_signal(signal.SIGUSR1)  # a second request: out at once, by the signal itself
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGUSR1 and time.monotonic() - t < 2
    err = proc.stderr.read()
    assert "SIGUSR1 received: finishing this step" in err and "SIGUSR1 again: exiting now" in err


_WORKER_CHECK = """
import subprocess, sys, time, torch
from wdistill.data.det_loader import DetectionLoader
from wdistill.data.stream import StreamLoader
torch.set_num_threads(2)
torch.randn(256, 256) @ torch.randn(256, 256)  # the parent's thread pool started, as in any training process
shield = ("SIGTERM", "SIGUSR1")
if sys.argv[1] == "stream":
    items = [(torch.zeros(1, 2, 2, dtype=torch.uint8), 0)] * 64
    loader = StreamLoader(items, 4, True, workers=1, shield_signals=shield)
else:
    item = (torch.zeros(3, 4, 4), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)})
    loader = DetectionLoader([item] * 64, 4, True, workers=1, shield_signals=shield)
batches = iter(loader)
next(batches)
worker = loader.loader._iterator._workers[0]
for sig in ("-TERM", "-USR1"):
    subprocess.run(["kill", sig, str(worker.pid)], check=True)  # sent by another process
time.sleep(0.3)
assert worker.is_alive() and sum(1 for _ in batches) == 15
worker.terminate()  # SIGTERM from the main process
worker.join(10)
assert worker.exitcode == 0, worker.exitcode
print("ok")
"""


@pytest.mark.parametrize("kind", ["stream", "detection"])
def test_workers_ignore_a_schedulers_sigterm_but_obey_their_parent(kind):
    """SLURM signals every process of a job: a DataLoader worker must survive a SIGTERM from
    outside (its main process still needs it to finish the step), yet exit when its own main
    process terminates it, or interpreter exit would wait for it forever. Run as a user runs it
    (without OMP_NUM_THREADS=1, the parent's thread pool started): then a worker holds a thread
    before its worker_init_fn runs, which a SIGTERM could reach (CI found it; a test process with
    one OpenMP thread did not)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", _WORKER_CHECK, kind], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def _signal_self_on(prefix: str, logs: list):
    """A log callback that sends this process SIGTERM when a line starting with ``prefix`` is logged."""
    def log(msg):
        logs.append(msg)
        if msg.startswith(prefix):
            os.kill(os.getpid(), signal.SIGTERM)
    return log


def test_a_signal_during_evaluation_or_a_stage_stops_at_the_right_place(tmp_path):
    """SIGTERM during evaluation (here: while the epoch-1 line is logged, after its checkpoint)
    stops right after that epoch; in a pre-training stage (AB's initialisation) it stops at the
    next step writing nothing new, and --auto-resume runs the stage again. Both are Preempted (exit
    75 from the CLI); outside fit() the process's own handler is back."""
    from wdistill.errors import Preempted
    cfg = small_run(tmp_path, seed=8, epochs=2, name="ev", extra_train={"checkpoint_every": None})
    logs = []
    with pytest.raises(Preempted, match="stopped after epoch 1, whose checkpoint is written"):
        Trainer(load_config(cfg), log=_signal_self_on("epoch 1/2", logs)).fit()
    assert torch.load(tmp_path / "runs" / "ev" / "last.pt", weights_only=True)["epoch"] == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    Trainer(load_config(cfg), resume=True, log=lambda m: None).fit()
    assert [r["epoch"] for r in _rows(tmp_path / "runs" / "ev")] == [1, 2]
    teacher = {"model": "resnet8", "checkpoint": _teacher(tmp_path)}
    staged = small_run(tmp_path, seed=8, epochs=1, name="st", teacher=teacher,
                       loss=[{"name": "ce"}, {"name": "ab", "init_epochs": 2}])
    with pytest.raises(Preempted, match="stopped during stage 'ab_init' epoch 1 .* nothing new was written"):
        Trainer(load_config(staged), log=_signal_self_on("stage ab_init", [])).fit()
    assert not (tmp_path / "runs" / "st" / "last.pt").exists()
    logs = []
    Trainer(load_config(staged), resume="auto", log=logs.append).fit()
    assert "stage ab_init: 2 epochs" in logs and [r["epoch"] for r in _rows(tmp_path / "runs" / "st")] == [1]


# ---- step checkpoints: a crash right after one, on both data paths -------------------------------
class _Crash(Exception):
    pass


def _crash_after_step_checkpoint(monkeypatch, step: int):
    real = epochs_module.save_finite

    def save_then_die(state, run_dir, names):
        real(state, run_dir, names)
        if state["step"] == step:
            raise _Crash  # as a SIGKILL right after the write: nothing after it reaches the disk
    monkeypatch.setattr(epochs_module, "save_finite", save_then_die)


@pytest.mark.parametrize("path", ["memory", "stream", "stream-main"])
def test_step_checkpoints_resume_inside_the_epoch_bit_identically(tmp_path, monkeypatch, path):
    """train.checkpoint_every: 5 writes last.pt every 5 steps; a run killed right after the one at
    step 10 resumes at step 11 and ends bit-identical to an uninterrupted run, on the in-memory path
    (its augmentation generator restored) and on the streaming one (a real image folder decoded by a
    worker process, or in the main process: the sampler restarts at the batch, per-sample seeds,
    and iterating never moves the global RNG that CRD draws its negatives from)."""
    from wdistill.data.synthetic import make_image_folder
    if path.startswith("stream"):
        make_image_folder(tmp_path / "imgs", 48, classes=4, size=(20, 20))
        data = {"name": "image_folder", "root": str(tmp_path / "imgs"), "loader": "stream",
                "workers": 1 if path == "stream" else 0, "batch_size": 8, "options": {"size": 16},
                "random_resized_crop": 16}
    else:
        data = {"name": "fmnist_sample", "train_subset": 192, "test_subset": 32, "batch_size": 8, "crop_padding": 2}
    loss = [{"name": "ce"}, {"name": "crd", "weight": 0.8, "num_negatives": 32}]
    cfg = small_run(tmp_path, seed=5, name="cut", data=data, loss=loss, extra_train={"checkpoint_every": 5},
                    teacher={"model": "resnet8", "checkpoint": _teacher_for(tmp_path, path)})
    whole = Trainer(load_config(dict(cfg, run=dict(cfg["run"], name="whole"))), log=lambda m: None)
    whole.fit()
    steps = len(whole.train_loader)
    _crash_after_step_checkpoint(monkeypatch, step=10)
    with pytest.raises(_Crash):
        Trainer(load_config(cfg), log=lambda m: None).fit()
    monkeypatch.undo()
    state = torch.load(tmp_path / "runs" / "cut" / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 10)
    logs = []
    Trainer(load_config(cfg), resume=True, log=logs.append).fit()
    assert any(m.startswith(f"resuming epoch {state['epoch'] + 1} at step 11 of {steps}") for m in logs), logs
    assert _same(_weights(tmp_path / "runs" / "cut"), _weights(tmp_path / "runs" / "whole"))
    assert _rows(tmp_path / "runs" / "cut") == _rows(tmp_path / "runs" / "whole")


def _teacher_for(tmp_path, path: str) -> str:
    from builders import random_teacher

    from wdistill import models
    if path == "memory":
        return random_teacher(tmp_path / "teacher.pt", "resnet8")
    torch.manual_seed(0)
    torch.save({"model": models.create("resnet8", num_classes=4, in_channels=3).state_dict()}, tmp_path / "t3.pt")
    return str(tmp_path / "t3.pt")


# ---- a full disk ------------------------------------------------------------------------------------
def _disk_cfg(tmp_path, out_dir, epochs: int) -> str:
    cfg = small_run(tmp_path, seed=6, train_subset=128, test_subset=32, batch_size=32, epochs=epochs, name="d",
                    extra_train={"checkpoint_every": None})
    cfg["run"]["out_dir"] = str(out_dir)
    return _yaml(tmp_path / f"disk{epochs}.yaml", cfg)


def _assert_refused_and_kept(proc, run: Path, expect: str) -> None:
    assert proc.returncode == 74, proc.stderr
    assert "Traceback" not in proc.stderr and f"cannot write {run / 'last.pt'}: {expect}" in proc.stderr
    assert "It needs about" in proc.stderr and "--resume" in proc.stderr
    state = torch.load(run / "last.pt", weights_only=True)  # the previous checkpoint, whole
    assert state["epoch"] == 1 and not list(run.glob(".*.tmp"))


def test_a_file_size_limit_fails_the_checkpoint_write_and_keeps_the_previous_one(tmp_path):
    """RLIMIT_FSIZE set in the child: the kernel refuses (EFBIG) any write past the limit, as a full
    disk refuses with ENOSPC. Epoch 1 is written without a limit; the resumed run's next
    checkpoint is larger than the limit: exit 74, the path and the size named, epoch 1 intact."""
    first = subprocess.run([*CLI, "train", _disk_cfg(tmp_path, tmp_path / "runs", 1)], env=ENV, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "runs" / "d"
    limit = (run / "last.pt").stat().st_size // 2  # metrics and config fit, a checkpoint does not

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    proc = subprocess.run([*CLI, "train", _disk_cfg(tmp_path, tmp_path / "runs", 2), "--resume"], env=ENV,
                          capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    _assert_refused_and_kept(proc, run, "the file is larger than this process may write")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1.5 MB tmpfs (root, where mounting is permitted), unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root and permission to mount (the RLIMIT_FSIZE test covers this)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_tmpfs_fails_the_checkpoint_write_and_keeps_the_previous_one(tmp_path, small_tmpfs):
    """A real full disk: epoch 1's last.pt and best.pt fit in the 1.5 MB tmpfs, epoch 2's new
    last.pt (written beside the old one, then renamed over it) does not: ENOSPC, exit 74, the free
    space and the size needed named, epoch 1 still loadable, no temporary file left."""
    proc = subprocess.run([*CLI, "train", _disk_cfg(tmp_path, small_tmpfs, 3)], env=ENV, capture_output=True,
                          text=True, timeout=300)
    _assert_refused_and_kept(proc, small_tmpfs / "d", "the disk is full")
    assert "free there" in proc.stderr


# ---- torchrun: the ranks agree on the stop step; a killed rank is restarted and resumes -----------------
def _torchrun(tmp_path, name: str, *extra: str, restarts: int = 1) -> subprocess.Popen:
    # Batches of 8: 64 steps an epoch, a step checkpoint every 4. (At 32, an epoch took under half a second, and a
    # signal timed from epoch 1's end could land after epoch 2's last vote, or in epoch 3.)
    cfg = small_run(tmp_path, seed=7, train_subset=512, test_subset=64, batch_size=8, epochs=3, name=name,
                    extra_data={"crop_padding": 2}, extra_train={"checkpoint_every": 4})
    cfg["run"]["device"] = "cpu"
    path = _yaml(tmp_path / f"{name}.yaml", cfg)
    log = open(tmp_path / f"{name}.log", "a")
    return subprocess.Popen([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node=2",
                             f"--master-port={free_port()}", f"--max-restarts={restarts}", "--monitor-interval=0.2",
                             "-m", "wdistill.cli", "train", path, *extra], env=ENV, stdout=log,
                            stderr=subprocess.STDOUT, text=True)


def _workers(agent: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the worker processes torchrun started."""
    out = {}
    for task in os.listdir(f"/proc/{agent.pid}/task"):
        for pid in map(int, Path(f"/proc/{agent.pid}/task/{task}/children").read_text().split()):
            env = dict(e.split("=", 1) for e in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in e)
            if "RANK" in env:
                out[int(env["RANK"])] = pid
    return out


def _wait_for(path: Path, agent: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert agent.poll() is None and time.monotonic() < deadline, "the job ended or hung before " + path.name
        time.sleep(0.1)


def _wait_for_step_checkpoint_in_epoch_2(run: Path, agent: subprocess.Popen) -> None:
    """Until last.pt holds epoch 1 and some steps of epoch 2 (it is written before metrics.jsonl)."""
    _wait_for(run / "metrics.jsonl", agent)
    while True:
        state = torch.load(run / "last.pt", weights_only=True)
        if state["epoch"] == 1 and state["step"] > 0:
            return
        assert agent.poll() is None and state["epoch"] <= 1, f"epoch 2 ended or the job stopped: {state['epoch']}"
        time.sleep(0.02)


@pytest.mark.slow
def test_a_rank_killed_under_torchrun_is_restarted_and_the_job_resumes_by_itself(tmp_path):
    """torchrun --max-restarts=1, 2 gloo processes: rank 1 is SIGKILLed from outside in epoch 2; the
    agent restarts both, they continue from the last step checkpoint by themselves (no --resume),
    and the metrics hold epochs 1, 2, 3 once each, equal to an uninterrupted job's."""
    whole = _torchrun(tmp_path, "whole")
    assert whole.wait(timeout=300) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    job = _torchrun(tmp_path, "killed")
    run = tmp_path / "runs" / "killed"
    _wait_for_step_checkpoint_in_epoch_2(run, job)
    os.kill(_workers(job)[1], signal.SIGKILL)
    assert job.wait(timeout=300) == 0, (tmp_path / "killed.log").read_text()[-3000:]
    log = (tmp_path / "killed.log").read_text()
    # The agent names the first failed rank of its poll: the killed one (-9), or rank 0 if it had already stopped
    # on the lost peer (exit 1; before the command line left its group on errors, at times -6, an abort).
    assert re.search(r"\(exitcode: -9\)|\(exitcode: 1\) local_rank: 0", log), log[-3000:]
    assert "after epoch 1 and " in log and "steps of the next" in log, log[-3000:]
    assert [r["epoch"] for r in _rows(run)] == [1, 2, 3]
    assert _rows(run) == _rows(tmp_path / "runs" / "whole")
    assert _same(_weights(run), _weights(tmp_path / "runs" / "whole"))


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_at_one_step_and_auto_resume_finishes(tmp_path):
    """SIGTERM to rank 1 alone, in epoch 2: rank 0 never sees it, yet both ranks stop at the same
    step (their vote) after writing one checkpoint with both ranks' state, and nothing hangs; the
    same command with --auto-resume then finishes the job. (SIGTERM to the torchrun agent, what
    SLURM and Kubernetes send, reaches every rank: the agent forwards it.)"""
    job = _torchrun(tmp_path, "term", restarts=0)
    run = tmp_path / "runs" / "term"
    _wait_for_step_checkpoint_in_epoch_2(run, job)
    os.kill(_workers(job)[1], signal.SIGTERM)
    job.wait(timeout=120)
    log = (tmp_path / "term.log").read_text()
    stops = [line.split("stopped: ", 1)[1] for line in log.splitlines() if line.startswith("stopped: ")]
    assert len(stops) == 2, log[-3000:]
    where = [re.search(r": stopped in epoch (\d+) with (\d+) of its 64 steps done", s) for s in stops]
    assert all(where) and where[0].groups() == where[1].groups(), log[-3000:]  # the same step on both ranks
    assert {s.split(": stopped in ", 1)[0] for s in stops} == {"SIGTERM", "a stop signal (on another rank)"}, log
    assert "]: Traceback" not in log, log[-3000:]  # none from a rank
    state = torch.load(run / "last.pt", weights_only=True)
    epoch, step = map(int, where[0].groups())
    assert len(state["ranks"]) == 2 and (state["epoch"] + 1, state["step"]) == (epoch, step) and step > 0
    again = _torchrun(tmp_path, "term", "--auto-resume", restarts=0)
    assert again.wait(timeout=300) == 0, (tmp_path / "term.log").read_text()[-3000:]
    assert [r["epoch"] for r in _rows(run)] == [1, 2, 3]
