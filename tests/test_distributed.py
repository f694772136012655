"""torchrun semantics on CPU ranks (gloo on loopback): DistributedDataParallel, the global batch,
memory banks that equal a single process's, rank 0 alone writing the run directory."""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from builders import free_port

TAPS = {"feats": ["conv1", "conv2"], "embed": "fc:in"}


class TinyNet(nn.Module):
    """BatchNorm-free, so one process and N processes compute the same thing."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def _train(out_dir: str, name: str, world: int, rank: int, batch: int = 32) -> dict:
    from wdistill.config import load_config
    from wdistill.data import bundled_sample
    from wdistill.engine import Trainer
    torch.manual_seed(0)
    student, teacher = TinyNet(), TinyNet(16)
    cfg = load_config({
        "run": {"name": name, "out_dir": out_dir, "seed": 0, "device": "cpu"},
        "data": {"batch_size": batch, "crop_padding": 0, "flip": False},
        "student": {"model": "TinyNet", "taps": TAPS},
        "teacher": {"model": "TinyNet", "taps": TAPS},
        "loss": [{"name": "ce"}, {"name": "kd", "weight": 0.9}, {"name": "crd", "weight": 0.8, "num_negatives": 64}],
        "optim": {"epochs": 2, "lr": 0.1, "schedule": "cosine"}, "train": {"progress": False}})
    data = (bundled_sample("train").subset(slice(0, 256)), bundled_sample("test").subset(slice(0, 200)))
    trainer = Trainer(cfg, student=student, teachers=[teacher], data=data, log=lambda m: None)
    summary = trainer.fit()
    return {"student": {k: v.detach().clone() for k, v in student.state_dict().items()},
            "bank": {k: v.clone() for k, v in trainer.distiller.terms["crd"].state_dict().items()},
            "summary": summary, "steps": len(trainer.train_loader)}


def _torchrun_env(rank: int, world: int, port: int) -> None:
    """The environment torchrun gives rank ``rank`` of ``world``: wdistill joins the group itself."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    _torchrun_env(rank, world, port)
    torch.set_num_threads(1)
    result = _train(out_dir, "ddp", world, rank)
    from torch.nn.parallel import DistributedDataParallel  # noqa: F401  (the trainer used it)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    from wdistill.engine import ddp
    ddp.leave()


@pytest.mark.slow
def test_two_ranks_equal_one_process_on_the_same_global_batch(tmp_path):
    """Same global batch (32) on 1 and 2 processes: same steps per epoch, the same student up to
    float rounding, CRD memory banks identical on both ranks and equal to the single process's."""
    single = _train(str(tmp_path), "single", 1, 0)
    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == single["steps"] == 256 // 32
    for k, v in r0["student"].items():
        assert torch.equal(v, r1["student"][k]), k  # DDP keeps the ranks bit-identical
        assert torch.allclose(v, single["student"][k], atol=2e-5, rtol=1e-4), (
            k,
            (v - single["student"][k]).abs().max(),
        )
    for k, v in r0["bank"].items():
        assert torch.equal(v, r1["bank"][k]), k
        assert torch.allclose(v, single["bank"][k], atol=2e-5, rtol=1e-4), (k, (v - single["bank"][k]).abs().max())
    moved = max(
        (single["student"][k] - TinyNet().state_dict()[k]).abs().max()
        for k in single["student"]
        if k.endswith("weight")
    )
    assert moved > 1e-2  # it really trained, so equality is not trivial
    assert r0["summary"]["final_top1"] == r1["summary"]["final_top1"]
    assert abs(r0["summary"]["final_top1"] - single["summary"]["final_top1"]) <= 0.5  # 200 images: at most one flips
    assert r0["summary"]["world_size"] == 2
    written = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert written["final_top1"] == r0["summary"]["final_top1"]


def test_global_batch_must_divide_over_ranks_and_micro_batches(tmp_path):
    from wdistill.engine.ddp import per_rank_batch
    from wdistill.errors import ConfigError

    assert per_rank_batch(64, 2) == 32 and per_rank_batch(64, 2, 4) == 8 and per_rank_batch(64, 1) == 64
    with pytest.raises(ConfigError, match="multiple of 6"):
        per_rank_batch(64, 3, 2)


def test_accumulation_equals_one_big_batch(tmp_path):
    """train.accumulate=4 splits each 32-row step into 4 micro-batches (no_sync on all but the
    last under DDP): BatchNorm-free, the result equals one 32-row step."""
    from wdistill.config import load_config
    from wdistill.data import bundled_sample
    from wdistill.engine import Trainer

    torch.manual_seed(0)
    student, teacher = TinyNet(), TinyNet(16)
    cfg = load_config(
        {
            "run": {"name": "acc", "out_dir": str(tmp_path), "seed": 0, "device": "cpu"},
            "data": {"batch_size": 32, "crop_padding": 0, "flip": False},
            "student": {"model": "TinyNet", "taps": TAPS},
            "teacher": {"model": "TinyNet", "taps": TAPS},
            "loss": [{"name": "ce"}, {"name": "kd", "weight": 0.9}],
            "optim": {"epochs": 2, "lr": 0.1, "schedule": "cosine"},
            "train": {"progress": False, "accumulate": 4},
        }
    )
    data = (bundled_sample("train").subset(slice(0, 256)), bundled_sample("test").subset(slice(0, 200)))
    Trainer(cfg, student=student, teachers=[teacher], data=data, log=lambda m: None).fit()
    torch.manual_seed(0)
    ref_student, ref_teacher = TinyNet(), TinyNet(16)
    cfg_ref = load_config(
        dict(
            cfg.model_dump(mode="json"),
            run={"name": "ref", "out_dir": str(tmp_path), "seed": 0, "device": "cpu"},
            train={"progress": False, "accumulate": 1},
        )
    )
    Trainer(cfg_ref, student=ref_student, teachers=[ref_teacher], data=data, log=lambda m: None).fit()
    for k, v in student.state_dict().items():
        assert torch.allclose(v, ref_student.state_dict()[k], atol=2e-5, rtol=1e-4), k
    torch.manual_seed(0)
    assert not torch.allclose(student.fc.weight, TinyNet().fc.weight, atol=1e-3)  # it trained


def test_sync_bn_converts_every_batchnorm_and_refuses_cpu():
    from wdistill import models
    from wdistill.engine.ddp import sync_batchnorm
    from wdistill.errors import ConfigError

    net = models.create("resnet8", num_classes=10)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert n_bn > 0 and sync_batchnorm(net, torch.device("cpu"), 1) is net  # one process: nothing to sync
    with pytest.raises(ConfigError, match="train.sync_bn=false"):
        sync_batchnorm(net, torch.device("cpu"), 2)
    converted = sync_batchnorm(net, torch.device("cuda"), 2)  # conversion itself needs no GPU
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules()) == n_bn
    assert not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())


def test_the_command_line_leaves_its_process_group_on_every_way_out(tmp_path, capsys):
    """Left to interpreter shutdown, a gloo group's destructor can abort a worker ("terminate called without an
    active exception", exit -6): after a finished job (seen in CI after a torchrun restart; torchrun then counts the
    job failed), and after a failed one (seen in CI on the rank whose peer was killed). `bash
    scripts/ddp_exit_check.sh` measures how often."""
    from wdistill import cli

    for argv, code in ((["list"], 0), (["train", str(tmp_path / "missing.yaml")], 2)):
        dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / f"store{code}"), 1), rank=0,
                                world_size=1)
        try:
            assert cli.main(argv) == code and not dist.is_initialized(), argv
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()


def test_leaving_collects_the_garbage_that_still_holds_a_group_first(tmp_path, monkeypatch):
    """A DDP wrap in cyclic garbage lives until a garbage collection, perhaps at interpreter shutdown, after the
    destroy: where gloo can abort the worker. A finished Trainer can be such garbage: the first optimiser of a
    process imports torch._dynamo, and the stack of that import, the trainer's frames included, stays in a cycle.
    ``ddp.leave`` collects first, so nothing of it is alive when the groups are destroyed."""
    import gc
    import weakref

    from wdistill.engine import ddp
    destroy, alive = dist.destroy_process_group, []
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a: (alive.append(wrapped() is not None), destroy(*a)))
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    gc.disable()
    try:
        cycle = {"wrap": ddp.wrap(nn.Linear(3, 2), torch.device("cpu"), find_unused=False)}
        cycle["self"], wrapped = cycle, weakref.ref(cycle["wrap"])
        del cycle
        assert type(wrapped()).__name__ == "DistributedDataParallel"
        ddp.leave()
        assert alive == [False]
    finally:
        gc.enable()
        if dist.is_initialized():
            destroy()


_KEPT: list = []  # what a Python caller's script keeps to its end


def _kept_trainer_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import atexit
    import weakref

    from wdistill.config import load_config
    from wdistill.engine import Trainer, ddp
    _torchrun_env(rank, world, port)
    torch.set_num_threads(1)
    wraps, wrap, found = [], ddp.wrap, {}
    ddp.wrap = lambda *a, **k: (wraps.append(wrap(*a, **k)), wraps[-1])[1]

    def at_exit():  # registered before wdistill's: runs after it
        vote = _KEPT[0].vote
        try:
            vote.now([0, 0, 0])
            after = "the vote still ran"
        except RuntimeError as e:
            after = str(e)
        torch.save({"left": not dist.is_initialized(), "wrap_alive": found["wrap"]() is not None,
                    "vote_group_alive": found["vote"]() is not None, "after": after},
                   os.path.join(out_dir, f"exit{rank}.pt"))

    atexit.register(at_exit)
    cfg = load_config({"run": {"out_dir": out_dir, "name": "kept", "device": "cpu"},
                       "data": {"name": "fmnist_sample", "train_subset": 64, "test_subset": 32, "batch_size": 32},
                       "student": {"model": "TinyNet"}, "optim": {"epochs": 1}, "train": {"progress": False}})
    _KEPT.append(Trainer(cfg, student=TinyNet(), log=lambda m: None))
    _KEPT[0].fit()
    assert type(wraps[0]).__name__ == "DistributedDataParallel"
    found.update(wrap=weakref.ref(wraps.pop()), vote=_KEPT[0].vote._group)
    # the script ends here, its trainer kept and no ddp.leave() of its own


def test_a_python_script_under_torchrun_leaves_at_exit_with_its_trainer_kept(tmp_path):
    """A Python caller under torchrun: wdistill joined the group, so it leaves it at the interpreter's exit (else
    gloo's destructor at shutdown can abort a finished worker). The trainer the script keeps to its end must then
    hold no group: fit() drops its DDP wrap and the vote's group is held by wdistill's registry, which the leave
    drops. A trainer used after the leave says why it cannot vote."""
    mp.start_processes(_kept_trainer_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    for r in (0, 1):
        seen = torch.load(tmp_path / f"exit{r}.pt", weights_only=True)
        assert seen["left"] and not seen["wrap_alive"] and not seen["vote_group_alive"], seen
        assert "process group was ended (Trainer.close() or wdistill.engine.ddp.leave())" in seen["after"], seen


def _sweep_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from torch.distributed.distributed_c10d import _world

    from wdistill import distill
    from wdistill.data import bundled_sample
    from wdistill.engine import ddp
    from wdistill.errors import ConfigError
    from wdistill.losses._shared import distributed as ddist
    _torchrun_env(rank, world, port)
    torch.set_num_threads(1)
    train, test = bundled_sample("train").subset(slice(0, 64)), bundled_sample("test").subset(slice(0, 32))
    groups = []
    for name in ("first", "second", "third"):
        distill(TinyNet(), None, train, test, epochs=1, lr=0.05, out_dir=out_dir, name=name,
                data={"batch_size": 32}, train={"progress": False})
        groups.append((len(_world.pg_map), len(ddist._HELD)))
    refused = []
    loader = torch.utils.data.DataLoader(train, batch_size=8)
    for name, data in (("first", train), ("fourth", loader)):  # refused at the claim; in the build (by its data)
        try:
            distill(TinyNet(), None, data, test, epochs=1, out_dir=out_dir, name=name, train={"progress": False})
        except ConfigError as e:
            refused.append(str(e).split(":")[0])
        groups.append((len(_world.pg_map), len(ddist._HELD)))
    torch.save({"groups": groups, "refused": refused}, os.path.join(out_dir, f"sweep{rank}.pt"))
    ddp.leave()


def test_a_sweep_of_runs_in_one_process_keeps_no_group_of_a_finished_run(tmp_path):
    """Each trainer of a multi-process job votes on a gloo group of its own (threads and file descriptors: 3 and 5 per
    process on two ranks). ``distill`` closes its trainer, which destroys that group, so a script that runs many
    jobs in one process (a sweep) holds only the default group between them, not one more per run. Nor does a
    trainer that was refused: at the claim (no group is made) or while it was built (its group ends with it)."""
    mp.start_processes(_sweep_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    for r in (0, 1):
        seen = torch.load(tmp_path / f"sweep{r}.pt", weights_only=True)
        assert seen["groups"] == [(1, 0)] * 5, seen
        assert seen["refused"] == [f"run directory {tmp_path / 'first'} already holds a run",
                                   "train_data is a DataLoader"], seen


RESTARTED_WORKER = """
import os, sys, time
import torch, torch.distributed as dist
from wdistill.engine import ddp
attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
if attempt > 0 and int(os.environ["RANK"]) == attempt - 1:
    time.sleep(2.0)  # restart k: rank k-1 joins late, so the other rank reads the store first
ddp.init_distributed()
x = torch.tensor([float(os.environ["RANK"]) + 1.0])
dist.all_reduce(x)
dist.all_reduce(x, group=dist.new_group(backend="gloo"))  # a second group, as the stop-signal vote makes
print(f"attempt {attempt} sum {float(x)}", flush=True)
if attempt == 0:
    time.sleep(300)  # killed from outside, as torchrun's agent kills the survivors of a failed attempt
ddp.leave()
"""


def test_a_restarted_attempt_never_reads_the_dead_attempts_keys(tmp_path):
    """torchrun's agent keeps one key-value store for every attempt of a job. The test hosts such a store, runs
    attempt 0 (two real gloo workers, SIGKILLed after joining, as the agent does), then restarts 1 and 2 with one
    rank late each time. Each restarted attempt must join, and no key an attempt wrote may be one a dead attempt
    left: under a shared key a worker can read the dead peer's address and hang on "Connection refused" (whether
    it does depends on which side of a gloo pair connects, so the key check, not the hang, decides the test)."""
    import subprocess
    import sys
    from datetime import timedelta

    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, 3, is_master=True, timeout=timedelta(seconds=60),
                          wait_for_workers=False)
    written: list[set[str]] = []
    for attempt in range(3):
        before = set(store.list_keys())
        workers = [subprocess.Popen(
            [sys.executable, "-c", RESTARTED_WORKER], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(r),
                     LOCAL_RANK=str(r), TORCHELASTIC_USE_AGENT_STORE="True", TORCHELASTIC_RESTART_COUNT=str(attempt),
                     OMP_NUM_THREADS="1")) for r in range(2)]
        try:
            if attempt == 0:
                assert [w.stdout.readline().strip() for w in workers] == ["attempt 0 sum 6.0"] * 2
                for w in workers:
                    w.kill()
                    w.wait()
            else:
                outs = [w.communicate(timeout=30)[0] for w in workers]
                assert [w.returncode for w in workers] == [0, 0], outs
                assert all(f"attempt {attempt} sum 6.0" in out for out in outs), outs
        except subprocess.TimeoutExpired:
            pytest.fail(f"restart {attempt} hung: a worker is connecting to a dead attempt's address")
        finally:
            for w in workers:
                w.kill()
        written.append(set(store.list_keys()) - before)
    assert written[0], "attempt 0 wrote nothing: the workers did not use the test's store"
    assert written[1] and written[2], f"a restarted attempt wrote no key of its own: it reused the dead one's {written}"
    assert not written[1] & written[0] and not written[2] & (written[0] | written[1]), written


def _wrap_worker(rank: int, world: int, port: int, out_dir: str, new_ddp: bool) -> None:
    from wdistill.engine import ddp
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ddp._FORWARD_SYNC_BUFFERS = new_ddp  # False: the path of torch < 2.13 (DDP's broadcast_buffers)
    net = nn.BatchNorm1d(3)
    net.running_mean.fill_(float(rank))  # each rank's own statistics
    torch.manual_seed(rank)
    nn.init.normal_(net.weight)
    wrapped = ddp.wrap(net, torch.device("cpu"), find_unused=False)
    at_start = (net.running_mean.clone(), net.weight.detach().clone())
    wrapped(torch.randn(4, 3) + rank)  # a forward must not broadcast again: the statistics stay per rank
    torch.save({"start": at_start, "after": net.running_mean.clone()}, os.path.join(out_dir, f"wrap{rank}.pt"))
    del wrapped  # DDP holds the group: released after the destroy, gloo can abort the process (1 run in 5)
    ddp.leave()


@pytest.mark.parametrize("new_ddp", [True, False])
def test_ddp_broadcasts_rank_0s_buffers_once_at_the_start_on_either_torch(tmp_path, new_ddp):
    """torch 2.13 renamed DDP's broadcast_buffers to forward_sync_buffers, with another meaning at the start: the
    wrap gives both the same behaviour. Rank 0's parameters and buffers reach every rank when wrapped; a forward
    broadcasts nothing more (BatchNorm statistics stay per rank until the epoch's end)."""
    from wdistill.engine import ddp
    if new_ddp and not ddp._FORWARD_SYNC_BUFFERS:
        pytest.skip(f"torch {torch.__version__}'s DDP has no forward_sync_buffers")
    mp.start_processes(_wrap_worker, args=(2, free_port(), str(tmp_path), new_ddp), nprocs=2, join=True,
                       start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"wrap{r}.pt", weights_only=True) for r in (0, 1))
    for a, b in zip(r0["start"], r1["start"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (r0["start"][0] == 0).all()
    assert not torch.allclose(r0["after"], r1["after"])


def _counts_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import gc
    import weakref

    from wdistill.engine import ddp
    from wdistill.losses._shared import distributed as ddist
    get_backend = dist.get_backend
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows = 4 + 3 * rank
    # A tensor without data: the counts must come from its shape alone (on a GPU, reading a device value is a sync).
    out = {"meta": ddist.row_counts(torch.empty(rows, 5, device="meta")), "default": ddist.host_group()}
    dist.get_backend = lambda *a: "nccl"  # as under NCCL: a gloo group of its own, made once
    first, second = ddist.host_group(), ddist.host_group()
    out.update(twin=first is not None and first is second, nccl_counts=ddist.row_counts(torch.empty(rows, 2)))
    mine = torch.arange(rows * 2.0).view(rows, 2) + 100 * rank
    out["gathered"] = ddist.gather_rows(mine, sizes=out["nccl_counts"])[0]
    dist.get_backend, twin = get_backend, weakref.ref(first)
    del first, second
    ddp.leave()  # must drop the twin too: a group alive after the destroy can abort the process at its exit
    gc.collect()
    out["twin_released"] = twin() is None
    torch.save(out, os.path.join(out_dir, f"counts{rank}.pt"))


def test_row_counts_come_from_the_hosts_shapes_on_a_gloo_group(tmp_path):
    """CRD's and WCoRD's banks under DDP exchange each rank's row count every step: as host integers on gloo (a
    group of its own when the default is NCCL), never as a device tensor read back, which would make the host wait
    for the GPU once per step. ``ddp.leave`` releases that twin: kept past the destroy, gloo can abort the process."""
    mp.start_processes(_counts_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    for r in (0, 1):
        out = torch.load(tmp_path / f"counts{r}.pt", weights_only=True)
        assert out["meta"] == [4, 7] and out["nccl_counts"] == [4, 7] and out["twin_released"]
        assert out["default"] is None and out["twin"]
        expected = torch.cat([torch.arange(8.0).view(4, 2), torch.arange(14.0).view(7, 2) + 100])
        torch.testing.assert_close(out["gathered"], expected, rtol=0, atol=0)


class _OneBadLabel(torch.utils.data.Dataset):
    """A user's streamed Dataset of the bundled images whose item ``bad`` carries the label 10 of 10 classes."""

    def __init__(self, images, bad: int):
        self.images, self.bad = images, bad

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image, target = self.images[i]
        return image, 10 if i == self.bad else target


def _bad_label_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    _torchrun_env(rank, world, port)
    torch.set_num_threads(1)
    from wdistill.config import load_config
    from wdistill.data import bundled_sample
    from wdistill.engine import Trainer, ddp
    from wdistill.errors import ConfigError
    cfg = load_config({"run": {"name": "bad", "out_dir": out_dir, "seed": 0, "device": "cpu"},
                       "data": {"batch_size": 16, "loader": "stream", "workers": 0, "num_classes": 10},
                       "student": {"model": "TinyNet", "taps": TAPS}, "optim": {"epochs": 2},
                       "train": {"progress": False}})
    train, test = bundled_sample("train").subset(slice(0, 128)), bundled_sample("test").subset(slice(0, 32))
    try:
        Trainer(cfg, student=TinyNet(), data=(_OneBadLabel(train, 100), test), log=lambda m: None).fit()
        said = "finished"
    except ConfigError as e:
        said = str(e)
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(said)
    ddp.leave()


def test_a_bad_label_on_one_rank_stops_every_rank_after_one_checkpoint(tmp_path):
    """Item 100's label is met by one rank inside the first epoch: both ranks stop at the same step with the item
    named (no rank left waiting in a collective), after rank 0 wrote last.pt with every rank's part."""
    mp.start_processes(_bad_label_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    for rank in (0, 1):
        said = (tmp_path / f"rank{rank}.txt").read_text()
        assert said.startswith("item 100 of the training split has the label 10") and "--resume" in said, said
    state = torch.load(tmp_path / "bad" / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and 0 < state["step"] < 128 // 16 and len(state["ranks"]) == 2
