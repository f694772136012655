"""Side by side with the official WKD trainer (issue 26; `python -m benchtools gpu --official PATH`).

The official code (github.com/JiamingLv/WKD, built on mdistiller) is imported from the checkout
given on the command line, never copied into this project. Two comparisons:

- **step**: KD, DKD, WKD-L and WKD-F on the same batch, pair (resnet32x4 -> resnet8x4), precision
  and device. The official forward hard-codes ``torch.cuda.amp.autocast()`` (float16) and its
  trainer steps through a GradScaler, so on a GPU both sides run float16 + GradScaler; on the CPU
  that autocast is inactive and both run float32. The official step is its trainer's
  ``train_iter``: forward, summed losses, scaled backward and step, then its per-step readouts
  (accuracy and three ``.cpu()`` copies, each a host sync). Ours is the Trainer's step.
- **epoch**: one CIFAR-100 training epoch with WKD-L, each side with its own data pipeline on the
  same generated files in the genuine pickle format: the official torchvision ``CIFAR100`` with PIL
  transforms in DataLoader workers, under its ``tools/train.py`` settings (``cudnn.deterministic``,
  no ``cudnn.benchmark``); ours the Trainer with the in-memory loader.

Two things are patched, neither on the timed path: torchvision's md5 check of the CIFAR files
(generated files cannot match the published checksums) and, where the optional packages are
missing, stub ``wandb``/``tensorboardX`` modules (imported by the official trainer, used only for
logging, which is not called).
"""
from __future__ import annotations

import statistics
import sys
import time
import types
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from benchtools.genuine import cifar100_members, write_tree
from benchtools.gpu import GpuSetup, _timer
from benchtools.speed import SpeedSetup, SyntheticTask
from wdistill import models
from wdistill.config.presets import PRESETS_DIR
from wdistill.engine.precision import Precision
from wdistill.engine.rundir import read_history
from wdistill.errors import ConfigError
from wdistill.workflows.reuse import run_or_load

ROWS = ("kd", "dkd", "wkd_l", "wkd_f")
CONFIG = {"wkd_l": "configs/cifar100/wkd_l/res32x4_res8x4.yaml", "wkd_f": "configs/cifar100/wkd_f/res32x4_res8x4.yaml"}
# mdistiller's published DKD setting (its configs/cifar100/dkd/res32x4_res8x4.yaml); the WKD
# repository kept the DKD class but not the DKD block of its config.
DKD = {"CE_WEIGHT": 1.0, "ALPHA": 1.0, "BETA": 8.0, "T": 4.0, "WARMUP": 20}


@dataclass
class Official:
    root: Path
    distillers: dict
    cifar_models: dict
    cfg: object  # the official yacs CFG, cloned per use


def check_official(path: str | Path) -> Path:
    """The checkout's root, if ``path`` is one and yacs is importable; else a ConfigError saying what to do (the GPU
    benchmark asks before it measures anything)."""
    root = Path(path).expanduser().resolve()
    if not (root / "mdistiller" / "distillers" / "WKD.py").is_file():
        raise ConfigError(f"--official {path}: not a checkout of the WKD repository (no mdistiller/distillers/WKD.py "
                          "there); clone github.com/JiamingLv/WKD and pass its folder")
    try:
        import yacs  # noqa: F401 - the official configs are yacs CfgNodes
    except ImportError:
        raise ConfigError("--official: the official code needs yacs: pip install yacs") from None
    return root


def load_official(path: str | Path) -> Official:
    """Import the official package from the checkout at ``path`` (clear error when it is not one)."""
    root = check_official(path)
    for name in ("wandb", "tensorboardX"):
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.SummaryWriter = None
            sys.modules[name] = stub
    sys.path.insert(0, str(root))
    from mdistiller.distillers import distiller_dict
    from mdistiller.engine.cfg import CFG
    from mdistiller.models.cifar import cifar_model_dict
    return Official(root, distiller_dict, cifar_model_dict, CFG)


def official_cfg(off: Official, method: str, device: torch.device):
    """The official configuration of ``method`` for resnet32x4 -> resnet8x4."""
    cfg = off.cfg.clone()
    cfg.defrost()
    if method in CONFIG:
        cfg.merge_from_file(str(off.root / CONFIG[method]))
        if device.type == "cpu" and method == "wkd_l":
            cfg.WKD.COST_MATRIX = "fc"  # the CKA file is loaded with .cuda(); same Sinkhorn work on the CPU
        cfg.WKD.COST_MATRIX_PATH = str(off.root / cfg.WKD.COST_MATRIX_PATH)
    cfg.DISTILLER.TYPE = "WKD" if method in CONFIG else method.upper()
    cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT = "resnet32x4", "resnet8x4"
    if method == "dkd":
        cfg.DKD = type(cfg)(DKD)
    cfg.freeze()
    return cfg


class OfficialStep:
    """One official training step (its ``train_iter``) of ``method`` on a fixed batch."""

    def __init__(self, off: Official, method: str, batch: dict, device: torch.device, readouts: bool = True):
        cfg = official_cfg(off, method, device)
        self.readouts = readouts  # False: the step without its per-step readouts (where its time goes)
        teacher = off.cifar_models["resnet32x4"][0](num_classes=100).requires_grad_(False)
        student = off.cifar_models["resnet8x4"][0](num_classes=100)
        self.distiller = off.distillers[cfg.DISTILLER.TYPE](student, teacher, cfg).to(device).train()
        self.opt = torch.optim.SGD(self.distiller.get_learnable_parameters(), lr=0.0, momentum=0.9,
                                   weight_decay=5e-4, nesterov=True)
        self.scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
        self.image, self.target = batch["image"], batch["target"]
        self.params = sum(p.numel() for p in student.parameters())

    def __call__(self, image=None, target=None) -> None:
        image = self.image if image is None else image
        target = self.target if target is None else target
        self.opt.zero_grad()
        preds, losses = self.distiller(image=image, target=target, epoch=1)
        loss = sum(v.mean() for v in losses.values())
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        if not self.readouts:
            return
        # the official readouts: top-1/top-5 and three .cpu() copies every step (host syncs)
        top = preds.topk(5, 1).indices.eq(target[:, None])
        float(top[:, :1].sum()), float(top.sum())
        for v in (loss, losses["loss_ce"], losses.get("loss_kd", loss)):
            v.cpu().detach().numpy().mean()


def _ours(method: str, batch_size: int, device: torch.device):
    """Our step of ``method`` on the same pair, batch size and precision (float16 on a GPU, as the official forward
    hard-codes), with the Trainer's scaler and optimiser step for that precision."""
    task = SyntheticTask(SpeedSetup(batch=batch_size))
    torch.manual_seed(0)
    d = task.distiller(method, device)
    precision = Precision("fp16" if device.type == "cuda" else "fp32", device)
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4, nesterov=True,
                          fused=precision.fused_optimizer)
    scaler = precision.scaler()
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in task.batch.items()}

    def step():
        with precision.autocast():
            total, _, _ = d(batch)
        opt.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()
        d.after_step()
    return step, batch, d


def step_side_by_side(off: Official, setup: GpuSetup, batch_size: int = 64) -> list[dict]:
    """Images per second of each side's step, median of ``setup.steps`` after warm-up."""
    device, rows = torch.device(setup.device), []
    timer = _timer(device)
    for method in ROWS:
        ours, batch, d = _ours(method, batch_size, device)
        theirs = OfficialStep(off, method, batch, device)
        bare = OfficialStep(off, method, batch, device, readouts=False)
        try:
            for _ in range(setup.warmup):
                ours(), theirs(), bare()
            times = [(timer(ours), timer(theirs), timer(bare)) for _ in range(setup.steps)]
        finally:
            d.close()
        t_ours, t_theirs, t_bare = (statistics.median(t[i] for t in times) for i in range(3))
        rows.append({"method": method, "batch": batch_size, "ours_img_s": batch_size / t_ours,
                     "official_img_s": batch_size / t_theirs, "ratio": t_theirs / t_ours,
                     "official_bare_img_s": batch_size / t_bare,
                     "params_ours": sum(p.numel() for p in d.student.parameters()), "params_official": theirs.params})
    return rows


def generated_cifar100(root: Path, n_train: int, n_test: int) -> Path:
    """CIFAR-100 files in the genuine pickle format under ``root`` (kept for the next run)."""
    if not (root / "cifar-100-python" / "meta").is_file():
        members, _ = cifar100_members(np.random.default_rng(0), n_train, n_test)
        write_tree(root, members, as_tar=False)
    return root


@contextmanager
def _official_data(off: Official, root: Path):
    """The official CIFAR-100 loaders reading ``root``, torchvision's md5 check bypassed."""
    import mdistiller.dataset.cifar100 as data
    from torchvision.datasets import cifar  # the official pipeline's own dependency
    folder, check = data.get_data_folder, cifar.check_integrity
    data.get_data_folder, cifar.check_integrity = (lambda: str(root)), (lambda *args, **kwargs: True)
    try:
        yield data
    finally:
        data.get_data_folder, cifar.check_integrity = folder, check


def official_epoch(off: Official, root: Path, device: torch.device, workers: int) -> dict:
    """Seconds of one official WKD-L training epoch over the files under ``root``, and of them the seconds its
    host waited for the next batch (the rest is its steps: each ends reading values back, so its GPU work is done)."""
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False  # tools/train.py's set_seed
    try:
        with _official_data(off, root) as data:
            train_loader = data.get_cifar100_dataloaders(64, 64, workers)[0]
            first = next(iter(train_loader))
            step = OfficialStep(off, "wkd_l", {"image": first[0].to(device), "target": first[1].to(device)}, device)
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            sync()
            t0 = waited = time.perf_counter()
            data_s = 0.0
            for image, target in train_loader:
                data_s += time.perf_counter() - waited  # the host waiting for the loader's workers
                step(image.to(device, non_blocking=True), target.to(device, non_blocking=True))
                waited = time.perf_counter()  # the step's readouts have waited for the GPU: its work is done
            sync()
            return {"seconds": time.perf_counter() - t0, "data_wait_s": data_s}
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


def our_epoch(root: Path, device: torch.device, work: Path) -> float:
    """Seconds of one of our WKD-L training epochs (the shipped preset) over the files under ``root``:
    no per-epoch gradient-share pass (the official trainer has none); the epoch's time includes our
    evaluation of 64 test images (the official epoch's is not timed), a few steps' worth."""
    work.mkdir(parents=True, exist_ok=True)
    teacher = work / "teacher-random.pt"
    if not teacher.is_file():
        torch.manual_seed(0)
        torch.save(models.create("resnet32x4", num_classes=100).state_dict(), teacher)
    cfg = yaml.safe_load((PRESETS_DIR / "cifar100" / "resnet32x4-resnet8x4" / "wkd_l.yaml").read_text())
    cfg["run"] |= {"name": f"epoch-{device.type}", "out_dir": str(work)}
    cfg["data"] |= {"root": str(root), "test_subset": 64}
    cfg["teacher"]["checkpoint"] = str(teacher)
    cfg["optim"]["epochs"] = 1
    cfg["run"]["device"] = device.type
    cfg["train"] = {"progress": False, "channels_last": True, "grad_share": False} | (
        {"precision": "fp16"} if device.type == "cuda" else {})
    run_or_load(cfg, log=lambda m: None)
    return read_history(work / cfg["run"]["name"])[0]["seconds"]


def epoch_side_by_side(off: Official, setup: GpuSetup, workers: int, work: Path = Path("runs/gpu-bench")) -> dict:
    device = torch.device(setup.device)
    n_train, n_test = (256, 64) if setup.quick else (50_000, 10_000)
    root = generated_cifar100(work / f"cifar100-generated-{n_train}", n_train, n_test)
    theirs = official_epoch(off, root, device, workers)
    ours = our_epoch(root, device, work / "official-epoch")
    return {"images": n_train, "workers": workers, "ours_s": ours, "official_s": theirs["seconds"],
            "official_data_wait_s": theirs["data_wait_s"], "ratio": theirs["seconds"] / ours}
