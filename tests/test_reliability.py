"""Issue 12: no file, no second process and no bad value corrupts a run.

Crafted pickles never run (every entry point), a run directory has one owner, a refused run
touches nothing, --resume refuses changed settings, non-finite values are named with their weights
and never saved, term parameters are typed, and the training step does not sync with the host."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from builders import hold_lock, random_teacher, small_run

from wdistill import cli, losses, models
from wdistill.config import load_config
from wdistill.engine import Trainer, rundir
from wdistill.errors import ConfigError, NonFiniteLoss


def _cfg(tmp_path, **over):
    return small_run(tmp_path, seed=1, extra_data={"crop_padding": 2}, **over)


@pytest.fixture
def teacher_ckpt(tmp_path):
    return random_teacher(tmp_path / "teacher.pt", "resnet8")


class _Evil:
    """Unpickling this creates ``marker``: stands for any code a crafted file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_yaml(path, cfg):
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


# ---- nothing loaded from a file runs code -------------------------------------------------------

def test_crafted_pickle_never_runs_through_any_entry_point(tmp_path, teacher_ckpt, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"distiller": _Evil(marker), "model": _Evil(marker), "arch": "resnet8"}, evil)

    # 1. eval
    assert cli.main(["eval", str(evil), "--data", "fmnist_sample", "--subset", "10"]) == 2
    assert "pickled Python objects" in capsys.readouterr().err
    # 2. --resume with a crafted last.pt
    cfg = _cfg(tmp_path)
    path = _write_yaml(tmp_path / "c.yaml", cfg)
    (tmp_path / "runs" / "r").mkdir(parents=True)
    torch.save({"config": _Evil(marker), "distiller": _Evil(marker)}, tmp_path / "runs" / "r" / "last.pt")
    assert cli.main(["train", path, "--resume"]) == 2
    assert "cannot be loaded" in capsys.readouterr().err
    # 3. teacher checkpoint
    t = {"model": "resnet8", "checkpoint": str(evil)}
    assert cli.main(["distill", _write_yaml(tmp_path / "d.yaml", _cfg(tmp_path, teacher=t, loss=[{"name": "kd"}])),
                     "run.name=d"]) == 2
    assert "teacher.checkpoint" in capsys.readouterr().err
    # 4. WKD-L cost file given in the config
    torch.save(_Evil(marker), tmp_path / "cost.pt")
    t = {"model": "resnet8", "checkpoint": teacher_ckpt}
    assert cli.main(["distill", _write_yaml(tmp_path / "w.yaml", _cfg(
        tmp_path, teacher=t, loss=[{"name": "wkd_l", "cost": str(tmp_path / "cost.pt")}])), "run.name=w"]) == 2
    assert "WKD-L cost file" in capsys.readouterr().err
    # 5. export
    assert cli.main(["export", str(tmp_path / "runs" / "r"), "--which", "last"]) == 2
    assert not marker.exists()


def test_corrupt_checkpoints_are_one_clear_message(tmp_path, capsys):
    good = tmp_path / "good.pt"
    torch.save({"model": models.create("resnet8", 10, 1).state_dict(), "arch": "resnet8"}, good)
    blob = good.read_bytes()
    cases = {"empty.pt": b"", "truncated.pt": blob[: len(blob) // 2], "random.pt": os.urandom(4096)}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module, not a state_dict
    for name in [*cases, "module.pt", "missing.pt"]:
        assert cli.main(["eval", str(tmp_path / name), "--data", "fmnist_sample"]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and str(tmp_path / name) in err, (name, err)


# ---- one owner per run directory ------------------------------------------------------------

def test_second_process_on_a_run_directory_is_refused_and_stale_lock_is_taken(tmp_path):
    holder = hold_lock(tmp_path / "runs" / "r" / ".lock")
    try:
        with pytest.raises(ConfigError, match=f"in use by process {holder.pid}"):
            Trainer(load_config(_cfg(tmp_path)))
        assert not (tmp_path / "runs" / "r" / "config.yaml").exists()  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died without unlocking: the lock is stale and the next run takes it
    summary = Trainer(load_config(_cfg(tmp_path, optim={"epochs": 1, "lr": 0.05}))).fit()
    assert summary["final_top1"] is not None
    assert (tmp_path / "runs" / "r" / ".lock").read_text() == ""  # released at the end


def test_a_refused_trainer_leaves_its_callers_lock_held(tmp_path):
    """A caller that locked the run directory itself (the benchmarks' reuse of finished runs) passes it as ``held``.
    A start the Trainer refuses must leave that lock held: it is the caller's, and the directory stays theirs."""
    cfg = load_config(_cfg(tmp_path))
    run = rundir.RunDir(cfg)
    run.lock()
    try:
        with pytest.raises(ConfigError, match="nothing to resume"):
            Trainer(cfg, resume=True, held=run)
        assert run.locked
        other, holder = rundir.try_lock(run.path / rundir.LOCK)  # another open of the file: flock refuses it
        assert other is None and holder == str(os.getpid())
    finally:
        run.release()


def test_two_concurrent_cli_runs_one_is_refused(tmp_path):
    path = _write_yaml(tmp_path / "c.yaml", _cfg(tmp_path, optim={"epochs": 3, "lr": 0.05}))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-m", "wdistill.cli", "train", path], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "runs" / "r" / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.1)
    first.send_signal(signal.SIGSTOP)  # alive and holding the run, however slow the second's start-up
    try:
        second = subprocess.run([sys.executable, "-m", "wdistill.cli", "train", path, "--resume"], env=env,
                                capture_output=True, text=True)
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert second.returncode == 2 and f"in use by process {first.pid}" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr


# ---- refused starts touch nothing; resume refuses changed settings ---------------------------------

def test_resume_refuses_changed_settings_and_leaves_the_run_untouched(tmp_path):
    Trainer(load_config(_cfg(tmp_path, loss=[{"name": "ce"}]))).fit()
    run = tmp_path / "runs" / "r"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    with pytest.raises(ConfigError) as e:
        Trainer(load_config(_cfg(tmp_path, loss=[{"name": "ce", "label_smoothing": 0.1}]), ["optim.lr=0.5"]),
                resume=True)
    assert "optim.lr: 0.05 -> 0.5" in str(e.value) and "loss.0.label_smoothing: 0.0 -> 0.1" in str(e.value)
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before  # config.yaml included: a refused resume rewrites nothing
    # a longer schedule is an allowed change
    summary = Trainer(load_config(_cfg(tmp_path, loss=[{"name": "ce"}]), ["optim.epochs=3"]), resume=True).fit()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["epochs"] == 3 and [r["epoch"] for r in rows] == [1, 2, 3]


def test_failed_overwrite_keeps_the_old_run_and_started_overwrite_clears_it(tmp_path, teacher_ckpt):
    Trainer(load_config(_cfg(tmp_path))).fit()
    run = tmp_path / "runs" / "r"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    bad = _cfg(tmp_path, teacher={"model": "resnet8", "checkpoint": str(tmp_path / "nope.pt")}, loss=[{"name": "kd"}])
    with pytest.raises(ConfigError, match="does not exist"):
        Trainer(load_config(bad), overwrite=True)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before

    class Stop(Exception):
        pass

    def stop(msg):
        if msg.startswith("epoch"):
            raise Stop

    cfg = load_config(_cfg(tmp_path, teacher={"model": "resnet8", "checkpoint": teacher_ckpt}, loss=[{"name": "kd"}]))
    with pytest.raises(Stop):
        Trainer(cfg, overwrite=True, log=stop).fit()  # stops at the end of epoch 1
    assert not (run / "student.pt").exists() and not (run / "summary.json").exists()  # the old run's are gone
    assert yaml.safe_load((run / "config.yaml").read_text())["loss"][0]["name"] == "kd"


# ---- non-finite values ---------------------------------------------------------------------

class _NanStage(losses.Term):
    name = "test_nan_stage"

    def setup(self, ctx):
        self.scale = torch.nn.Parameter(torch.ones(()))

    def stages(self):
        def loss(s, t, batch):
            return (s["logits"].sum() * self.scale) * float("nan")
        return [losses.Stage("nan_init", 1, loss, lambda: [self.scale])]

    def forward(self, s, t, batch):
        return s["logits"].sum() * 0.0


losses.registry._TERMS.setdefault("test_nan_stage", _NanStage)


def test_nan_in_a_stage_is_never_saved(tmp_path, teacher_ckpt):
    cfg = load_config(_cfg(tmp_path, teacher={"model": "resnet8", "checkpoint": teacher_ckpt},
                           loss=[{"name": "ce"}, {"name": "test_nan_stage"}]))
    with pytest.raises(NonFiniteLoss, match="stage 'nan_init'"):
        Trainer(cfg).fit()
    assert not (tmp_path / "runs" / "r" / "last.pt").exists()


def test_huge_weight_is_named_with_its_weight_and_cli_exits_3_without_traceback(tmp_path, teacher_ckpt, capsys):
    cfg = _cfg(tmp_path, teacher={"model": "resnet8", "checkpoint": teacher_ckpt},
               loss=[{"name": "ce"}, {"name": "kd", "weight": 1e30}])
    path = _write_yaml(tmp_path / "c.yaml", cfg)
    assert cli.main(["distill", path]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    assert "'kd' (weight 1e+30)" in err, err
    # caught where it starts: the first step's gradient, while every loss value is still finite
    assert err.startswith("error: the gradient (every loss value finite) became non-finite in epoch 1, step 0"), err
    assert not (tmp_path / "runs" / "r" / "last.pt").exists()  # nothing non-finite was saved


# ---- typed parameters --------------------------------------------------------------------

def test_term_parameters_are_typed_and_recorded_with_defaults(tmp_path):
    cfg = load_config(_cfg(tmp_path, loss=[{"name": "kd", "T": "1e1"}]))
    assert cfg.loss[0].params == {"T": 10.0} and isinstance(cfg.loss[0].params["T"], float)
    with pytest.raises(ConfigError, match=r"method 'kd' parameter 'T' must be float, got 'abc'"):
        load_config(_cfg(tmp_path, loss=[{"name": "kd"}]), ["loss.0.T=abc"])
    with pytest.raises(ConfigError, match=r"method 'crd' parameter 'num_negatives' must be int, got 2.5"):
        load_config(_cfg(tmp_path, loss=[{"name": "crd", "num_negatives": 2.5}]))
    cfg = load_config(_cfg(tmp_path, loss=[{"name": "ab", "init_lr": "1e-3"}]))
    dumped = yaml.safe_load(__import__("wdistill.config.load", fromlist=["dump_config"]).dump_config(cfg))
    assert dumped["loss"][0] == {"name": "ab", "id": "ab", "weight": 1.0, "margin": 1.0, "init_epochs": 30,
                                 "main_weight": 0.0, "init_lr": 0.001}


@pytest.mark.parametrize("override, message", [
    ("data.train_subset=-5", "data.train_subset"), ("optim.epochs=0", "optim.epochs"),
    ("run.name=../../x", "never an absolute path"), ("loss.0.weight=-5", "loss.0.weight"),
    ("optim.warmup_epochs=-3", "optim.warmup_epochs"), ("run.device=tpu", "run.device 'tpu'"),
    ("optim.lr.x=1", "optim.lr"), ("optim.lr=[1,", "not valid YAML"), ("data.crop_padding=100", "crop_padding=100"),
    ("data.train_subset=999999", "must be in 1..6000"), ("data.batch_size=33", "multiple"),
    ("student.taps={feats: [layer1]}", "embed"),
])
def test_bad_values_are_refused_before_work(tmp_path, capsys, override, message):
    path = _write_yaml(tmp_path / "c.yaml", _cfg(tmp_path, loss=[{"name": "ce"}]))
    extra = ["train.accumulate=2"] if override.startswith("data.batch_size") else []
    assert cli.main(["train", path, override, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "runs" / "r" / "last.pt").exists()


def test_out_dir_that_is_a_file_and_eval_on_missing_cuda(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    path = _write_yaml(tmp_path / "c.yaml", _cfg(tmp_path, loss=[{"name": "ce"}]))
    assert cli.main(["train", path, f"run.out_dir={tmp_path / 'afile'}"]) == 2
    assert "is a file" in capsys.readouterr().err
    if not torch.cuda.is_available():
        good = tmp_path / "m.pt"
        torch.save({"model": models.create("resnet8", 10, 1).state_dict(), "arch": "resnet8"}, good)
        assert cli.main(["eval", str(good), "--data", "fmnist_sample", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: usage and one line
        cli.main(["eval", "x.pt", "--subset", "0"])
    assert e.value.code == 2 and "--subset: must be at least 1, got 0" in capsys.readouterr().err


# ---- no host sync inside the training step --------------------------------------------------

def test_training_steps_do_not_sync_with_the_host(tmp_path, teacher_ckpt, monkeypatch):
    """.item()/.tolist() run once per logging interval, not once per step."""
    cfg = load_config(_cfg(tmp_path, teacher={"model": "resnet8", "checkpoint": teacher_ckpt},
                           loss=[{"name": "ce"}, {"name": "kd", "weight": 0.9}],
                           data={"name": "fmnist_sample", "train_subset": 512, "test_subset": 32,
                                 "batch_size": 16, "crop_padding": 2}),
                      ["optim.epochs=1", "train.log_every=1000"])
    tr = Trainer(cfg)
    tr.setup_terms()
    calls = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        orig = getattr(torch.Tensor, name)

        def counting(self, *a, _orig=orig, **k):
            calls["n"] += 1
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counting)
    steps = len(tr.train_loader)
    assert steps == 32
    tr.fit()
    monkeypatch.undo()
    # per epoch: guard check + meter read + evaluation read; nothing that grows with the 32 steps
    assert calls["n"] < 10, calls["n"]


# ---- atomic writes ---------------------------------------------------------------------------

def test_atomic_writes_leave_the_permissions_a_plain_write_leaves(tmp_path):
    """mkstemp's temporary file is the owner's alone (0600); what it is renamed to must carry what
    ``open(path, "w")`` gives: 0666 less the umask for a new file, the old file's mode for a replaced one."""
    import stat

    from wdistill import io as _io
    before = os.umask(0o027)
    try:
        (tmp_path / "plain.txt").write_text("x")
        _io.atomic_write_text("x", tmp_path / "atomic.txt")
        _io.atomic_save({"w": torch.ones(1)}, tmp_path / "sub" / "atomic.pt")
        models.save_student_safetensors({"w": torch.ones(1)}, tmp_path / "student.safetensors", {"arch": "x"})
    finally:
        os.umask(before)
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*.*")}
    assert mode == {"plain.txt": 0o640, "atomic.txt": 0o640, "atomic.pt": 0o640, "student.safetensors": 0o640}
    (tmp_path / "atomic.txt").chmod(0o604)
    _io.atomic_write_text("y", tmp_path / "atomic.txt")
    assert stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode) == 0o604


def test_a_path_that_cannot_be_a_file_is_refused_naming_it(tmp_path):
    from wdistill import io as _io
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match=f"cannot write {tmp_path / 'f' / 'x' / 'y.pt'}: {tmp_path / 'f'} is a "
                                          "file, not a directory"):
        _io.atomic_save({"w": torch.ones(1)}, tmp_path / "f" / "x" / "y.pt")
    with pytest.raises(ConfigError, match=f"cannot write {tmp_path}: it is a directory"):
        _io.atomic_write_text("x", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]

@pytest.mark.parametrize("stage", ["save", "fsync", "replace"])
def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch, stage):
    from wdistill import io as _io
    from wdistill import io as ckpt
    path = tmp_path / "last.pt"
    ckpt.atomic_save({"epoch": 1, "w": torch.ones(3)}, path)

    class Crash(Exception):
        pass

    def boom(*a, **k):
        raise Crash

    if stage == "save":
        real = torch.save

        def partial(obj, f, *a, **k):  # half a file reaches the disk, then the process dies
            real(obj, f)
            f.seek(0)
            f.truncate(10)
            raise Crash
        monkeypatch.setattr(_io.torch, "save", partial)
    elif stage == "fsync":
        monkeypatch.setattr(_io.os, "fsync", boom)
    else:
        monkeypatch.setattr(_io.os, "replace", boom)
    with pytest.raises(Crash):
        ckpt.atomic_save({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = ckpt.load_dict(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind
