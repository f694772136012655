"""Two CPU ranks (gloo on loopback), as torchrun would start them: same weights on both ranks,
each rank sees half of every global batch, only rank 0 writes the run directory."""
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, teacher_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from wdistill.engine import Trainer, load_config
    cfg = load_config({
        "run": {"name": "ddp", "out_dir": out_dir, "seed": 0, "device": "cpu"},
        "data": {"name": "fmnist_sample", "train_subset": 512, "test_subset": 300, "batch_size": 32,
                 "crop_padding": 2},
        "student": {"model": "resnet8"},
        "teacher": {"model": "resnet8", "checkpoint": teacher_path},
        "loss": [{"name": "ce"}, {"name": "kd", "weight": 0.9}, {"name": "crd", "weight": 0.8, "num_negatives": 64}],
        "optim": {"epochs": 2, "lr": 0.05, "schedule": "cosine"}, "train": {"progress": False}})
    trainer = Trainer(cfg, log=lambda m: None)
    summary = trainer.fit()
    assert len(trainer.train_loader) == 512 // (32 * world)
    torch.save({"student": trainer.student.state_dict(), "summary": summary,
                "bank": trainer.distiller.terms["crd"].state_dict()}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_train_in_lockstep(tmp_path):
    from wdistill import models
    torch.manual_seed(0)
    teacher_path = str(tmp_path / "t.pt")
    torch.save({"model": models.create("resnet8", num_classes=10, in_channels=1).state_dict()}, teacher_path)
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path), teacher_path), nprocs=2, join=True,
                       start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for k, v in r0["student"].items():
        if v.is_floating_point():
            assert torch.equal(v, r1["student"][k]), k
    for k, v in r0["bank"].items():
        assert torch.equal(v, r1["bank"][k]), k
    assert r0["summary"]["final_top1"] == r1["summary"]["final_top1"]  # test set summed over both shards
    assert r0["summary"]["world_size"] == 2
    written = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert written["final_top1"] == r0["summary"]["final_top1"] > 10


def test_sync_bn_converts_every_batchnorm_and_refuses_cpu():
    from wdistill import models
    from wdistill.engine.config import ConfigError
    from wdistill.engine.trainer import sync_batchnorm

    net = models.create("resnet8", num_classes=10)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert n_bn > 0 and sync_batchnorm(net, torch.device("cpu"), 1) is net  # one process: nothing to sync
    with pytest.raises(ConfigError, match="train.sync_bn=false"):
        sync_batchnorm(net, torch.device("cpu"), 2)
    converted = sync_batchnorm(net, torch.device("cuda"), 2)  # conversion itself needs no GPU
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules()) == n_bn
    assert not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())
