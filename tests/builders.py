"""Shared builders for the tests: small training runs (one skeleton, each file picks its sizes),
random teachers, zoo models with non-trivial BN statistics."""
from __future__ import annotations

import torch
import torch.nn as nn

from wdistill import models


def small_run(tmp_path, *, seed: int, train_subset: int = 128, test_subset: int = 64, batch_size: int = 32,
              epochs: int = 2, schedule: str = "cosine", name: str = "r", extra_data: dict | None = None,
              extra_train: dict | None = None, **sections) -> dict:
    """A resnet8 run on the bundled Fashion-MNIST sample, written under ``tmp_path/runs``.
    ``extra_data``/``extra_train`` add keys to those sections; a keyword named after a section
    (``data=``, ``loss=``, ``teacher=``...) replaces that whole section."""
    cfg = {"run": {"name": name, "out_dir": str(tmp_path / "runs"), "seed": seed},
           "data": {"name": "fmnist_sample", "train_subset": train_subset, "test_subset": test_subset,
                    "batch_size": batch_size, **(extra_data or {})},
           "student": {"model": "resnet8"},
           "optim": {"epochs": epochs, "lr": 0.05, "schedule": schedule},
           "train": {"progress": False, **(extra_train or {})}}
    cfg.update(sections)
    return cfg


def random_teacher(path, arch: str = "resnet8", seed: int = 0) -> str:
    """An untrained 10-class, 1-channel ``arch`` saved as a checkpoint at ``path``."""
    torch.manual_seed(seed)
    torch.save({"model": models.create(arch, num_classes=10, in_channels=1).state_dict()}, path)
    return str(path)


def free_port() -> int:
    """A local TCP port free now, for a process group or a torchrun of this test: not torchrun's fixed 29500, which
    another test process may hold at the same moment."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hold_lock(lock_path):
    """A child process holding an exclusive flock on ``lock_path`` (its PID written inside), as a
    running job would; kill it to let go. Returns the Popen."""
    import subprocess
    import sys
    code = ("import fcntl, os, sys, time; os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True); "
            "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush(); print('locked', flush=True); "
            "time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(lock_path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


IMAGENET_ZOO = {"resnet18", "resnet34", "resnet50", "MobileNetV1"}


def zoo_model(name: str, **kw):
    """A zoo model built from seed 0 (1000 classes for the ImageNet models, 100 otherwise)."""
    kw.setdefault("num_classes", 1000 if name in IMAGENET_ZOO else 100)
    torch.manual_seed(0)
    return models.create(name, **kw)


def randomize_bn(model, seed: int = 1):
    """Non-trivial BN statistics and affine parameters, so eval-mode BN is not near identity and a
    checkpoint that skipped them would show; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()
