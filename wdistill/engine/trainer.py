"""The training loop: stages, epochs, evaluation, metrics, atomic checkpoints, exact resume."""
from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from .. import losses, models
from ..data import BatchLoader, ImageDataset, load_dataset
from . import checkpoint as ckpt
from .config import ConfigError, RunConfig, dump_config
from .distiller import Distiller, lr_at


def init_distributed() -> tuple[int, int]:
    """(rank, world size). Under torchrun (WORLD_SIZE > 1) joins the process group: NCCL on
    GPUs, gloo on CPUs. Gradients are averaged across ranks after every backward."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device={name!r} but CUDA is not available here; use run.device=cpu")
    return dev


def sync_batchnorm(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """``train.sync_bn``: under torch.distributed, every BatchNorm of ``model`` becomes a
    SyncBatchNorm (batch statistics over the global batch, as multi-GPU ImageNet recipes do)."""
    if world_size == 1:
        return model
    if device.type == "cpu":
        raise ConfigError("train.sync_bn needs GPUs: torch's SyncBatchNorm has no CPU kernel. "
                          "Set train.sync_bn=false for a CPU (gloo) run")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def load_data(cfg: RunConfig) -> tuple[ImageDataset, ImageDataset]:
    train, test = load_dataset(cfg.data.name, cfg.data.root, **cfg.data.options)
    if cfg.data.train_subset:
        train = train.subset(slice(0, cfg.data.train_subset))
    if cfg.data.test_subset:
        test = test.subset(slice(0, cfg.data.test_subset))
    return train, test


# Where the teacher checkpoints the shipped presets expect come from, by path prefix.
_CHECKPOINT_SOURCES = {
    "runs/bench/": "`wdistill bench accuracy` trains and keeps the benchmark teacher there",
    "checkpoints/cifar100/": "configs/cifar100/README.md names the published files to put there",
    "checkpoints/imagenet/": "configs/imagenet/README.md names the published files to put there",
}


def missing_checkpoint_message(role: str, path: str) -> str:
    where = next((hint for prefix, hint in _CHECKPOINT_SOURCES.items() if path.replace("\\", "/").startswith(prefix)),
                 "train one with `wdistill train CONFIG` (its run's student.pt is the checkpoint)")
    return f"{role}.checkpoint {path!r} does not exist: {where}, or set {role}.checkpoint=PATH"


def build_model(section, num_classes: int, in_channels: int, role: str) -> nn.Module:
    try:
        model = models.create(section.model, num_classes=num_classes, in_channels=in_channels, **section.kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{role}.model: {e}") from None
    if section.checkpoint:
        from ..models.checkpoint import load_checkpoint
        if not os.path.isfile(section.checkpoint):
            raise ConfigError(missing_checkpoint_message(role, section.checkpoint))
        load_checkpoint(model, section.checkpoint)
    elif role == "teacher":
        raise ConfigError(f"teacher {section.model!r} has no checkpoint: train one first "
                          "(`wdistill train CONFIG`) and set teacher.checkpoint=RUN_DIR/student.pt")
    return model


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, amp_ctx=nullcontext) -> dict:
    """top-1, top-5 (%) and mean cross-entropy of ``model`` over ``loader`` (summed over ranks
    when the loader is sharded)."""
    was = model.training
    model.eval()
    n, correct1, correct5, loss = 0, 0, 0, 0.0
    for batch in loader:
        with amp_ctx():
            logits = model(batch["image"]).float()
        target = batch["target"]
        loss += nn.functional.cross_entropy(logits, target, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == target).sum().item()
        correct5 += (top == target[:, None]).any(1).sum().item()
        n += len(target)
    model.train(was)
    n, correct1, correct5, loss = _all_sum([n, correct1, correct5, loss], loader.world_size)
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss / n}


def _all_sum(values: list[float], world_size: int) -> list[float]:
    if world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


class Trainer:
    """Runs one configured job. Models and data may be passed in (Python API, benchmarks);
    otherwise they are built from ``cfg``."""

    def __init__(self, cfg: RunConfig, *, student: nn.Module | None = None, teachers: list[nn.Module] | None = None,
                 data: tuple[ImageDataset, ImageDataset] | None = None, resume: bool = False,
                 overwrite: bool = False, log=print):
        self.cfg = cfg
        self.log = log
        self.rank, self.world_size = init_distributed()
        self.device = resolve_device(cfg.run.device)
        self.run_dir = Path(cfg.run.out_dir) / cfg.run.name
        self.resume = resume
        torch.manual_seed(cfg.run.seed)
        self.train_set, self.test_set = data or load_data(cfg)
        nc, ch = self.train_set.num_classes, self.train_set.channels
        t_sections = cfg.teacher_sections()
        self.student = student if student is not None else build_model(cfg.student, nc, ch, "student")
        if cfg.train.sync_bn:
            self.student = sync_batchnorm(self.student, self.device, self.world_size)
        self.teachers = teachers if teachers is not None else [build_model(s, nc, ch, "teacher") for s in t_sections]
        terms = []
        for t in cfg.loss:
            try:
                terms.append((t.name, t.weight, losses.create(t.name, **t.params)))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"loss term {t.name!r}: {e}") from None
        if not self.teachers and any(n not in ("ce",) for n, _, _ in terms):
            raise ConfigError(f"loss terms {[n for n, _, _ in terms if n != 'ce']} need a teacher: "
                              "add a 'teacher:' section (model + checkpoint)")
        if self.rank == 0 and (self.run_dir / "last.pt").exists() and not (resume or overwrite):
            raise ConfigError(f"run directory {self.run_dir} already holds a run: pass --resume to continue it, "
                              "--overwrite to start again, or choose another run.name")
        if resume and not (self.run_dir / "last.pt").exists():
            raise ConfigError(f"nothing to resume: {self.run_dir / 'last.pt'} does not exist")
        t_taps = [s.taps for s in t_sections] if t_sections else None
        self.distiller = Distiller(self.student, self.teachers, terms, cfg.student.taps, t_taps).to(self.device)
        if cfg.train.channels_last:
            self.distiller.to(memory_format=torch.channels_last)
        if cfg.train.compile:
            # The hooks stay on the original submodules; dynamo traces them into the graph.
            self.distiller.student_tap.model = torch.compile(self.student)
        d = cfg.data
        shard = dict(rank=self.rank, world_size=self.world_size, **d.crop_kwargs())
        self.train_loader = BatchLoader(self.train_set, d.batch_size, True, self.device, d.crop_padding, d.flip,
                                        seed=cfg.run.seed, **shard)
        self.test_loader = BatchLoader(self.test_set, d.eval_batch_size, False, self.device, **shard)
        self.progress = cfg.train.progress and self.rank == 0
        self.amp_dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.amp and self.device.type == "cuda")
        self.history: list[dict] = []
        self.best_top1 = -1.0
        self.start_epoch = 0
        self.stages_done: list[str] = []

    # ---- helpers -------------------------------------------------------------------------
    def amp_ctx(self):
        if not self.cfg.train.amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _prepare(self, batch: dict) -> dict:
        if self.cfg.train.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    def _plain_batches(self):
        loader = BatchLoader(self.train_set, self.cfg.data.eval_batch_size, False, self.device,
                             **self.cfg.data.crop_kwargs())
        return loader  # iterable with a length, so progress bars over it have a total

    def setup_terms(self) -> None:
        """Probe one batch and let every loss term build its parts (done by ``fit``)."""
        probe = self._prepare(next(iter(self.train_loader)))
        ctx = dict(num_classes=self.train_set.num_classes, num_samples=len(self.train_set),
                   train_targets=self.train_set.targets.to(self.device), device=self.device,
                   train_batches=self._plain_batches, cache_dir=str(Path(self.cfg.run.out_dir) / "cache"))
        self.distiller.setup(ctx, probe)
        self.distiller.to(self.device)

    def make_optimizer(self, params, lr) -> torch.optim.Optimizer:
        o = self.cfg.optim
        return torch.optim.SGD(params, lr=lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)

    def close(self) -> None:
        """Remove the feature hooks this trainer put on the models."""
        self.distiller.close()

    def _state(self, epoch: int) -> dict:
        trainable = {k: v for k, v in self.distiller.state_dict().items() if not k.startswith("teachers.")}
        return {"epoch": epoch, "distiller": trainable, "optimizer": self.optimizer.state_dict(),
                "best_top1": self.best_top1, "history": self.history, "stages_done": self.stages_done,
                "config": self.cfg.model_dump(mode="json"), "arch": self.cfg.student.model}

    def _load_state(self, state: dict) -> None:
        missing, unexpected = self.distiller.load_state_dict(state["distiller"], strict=False)
        missing = [k for k in missing if not k.startswith("teachers.")]
        if missing or unexpected:
            raise ConfigError(f"{self.run_dir / 'last.pt'} does not match this configuration "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]}): resume with the run's own "
                              f"config ({self.run_dir / 'config.yaml'})")
        self.optimizer.load_state_dict(state["optimizer"])
        self.best_top1 = state["best_top1"]
        self.history = state["history"]
        self.stages_done = state["stages_done"]
        self.start_epoch = state["epoch"]

    def export_student(self, path: Path, metrics: dict) -> None:
        ckpt.atomic_save({"model": self.student.state_dict(), "arch": self.cfg.student.model,
                          "num_classes": self.train_set.num_classes, "in_channels": self.train_set.channels,
                          "taps": self.cfg.student.taps, "kwargs": self.cfg.student.kwargs,
                          "data": self.cfg.data.model_dump(mode="json"),  # `wdistill eval` scores on this data
                          "metrics": metrics}, path)

    # ---- stages and epochs -------------------------------------------------------------------
    def _run_stage(self, stage) -> None:
        params = list(stage.parameters())
        if stage.train_student:
            params = [p for p in self.student.parameters() if p.requires_grad] + params
        opt = self.make_optimizer(params, stage.lr or self.cfg.optim.lr)
        for e in range(stage.epochs):
            torch.manual_seed(self.cfg.run.seed * 1000003 + 7919 * (e + 1))
            self.train_loader.set_epoch(-(e + 1))
            self.student.train(stage.train_student)
            bar = tqdm(self.train_loader, desc=f"stage {stage.name} {e + 1}/{stage.epochs}", leave=False,
                       disable=None if self.progress else True)
            for step, batch in enumerate(bar):
                batch = self._prepare(batch)
                batch.update(epoch=-1, num_epochs=self.cfg.optim.epochs, step=step)
                with self.amp_ctx():
                    t_out = self.distiller.teacher_forward(batch["image"])
                    s_out = self.distiller.student_tap(batch["image"])
                    loss = stage.loss(s_out, t_out, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                self._average_gradients(params)
                opt.step()
                bar.set_postfix(loss=f"{loss.item():.4f}")
        self.student.train()

    def _train_epoch(self, epoch: int) -> dict:
        o = self.cfg.optim
        lr = lr_at(epoch, o.lr, o.schedule, o.epochs, o.milestones, o.gamma, o.warmup_epochs)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        torch.manual_seed(self.cfg.run.seed * 1000003 + epoch)
        self.train_loader.set_epoch(epoch)
        self.distiller.train()
        sums: dict[str, float] = {}
        n, correct = 0, 0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{o.epochs}", leave=False,
                   disable=None if self.progress else True)
        for step, batch in enumerate(bar):
            batch = self._prepare(batch)
            batch.update(epoch=epoch, num_epochs=o.epochs, step=epoch * len(self.train_loader) + step)
            with self.amp_ctx():
                total, parts, s_out = self.distiller(batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            self._average_gradients(self.optimizer_params)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            b = len(batch["target"])
            n += b
            correct += (s_out["logits"].argmax(1) == batch["target"]).sum().item()
            sums["loss"] = sums.get("loss", 0.0) + total.item() * b
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v.item() * b
            bar.set_postfix(loss=f"{sums['loss'] / n:.4f}", acc=f"{100 * correct / n:.1f}")
        keys = list(sums)
        *totals, n, correct = _all_sum([sums[k] for k in keys] + [n, correct], self.world_size)
        row = {"epoch": epoch + 1, "lr": lr}
        row.update({f"train_{k}": v / n for k, v in zip(keys, totals)})
        row["train_top1"] = 100.0 * correct / n
        return row

    def _average_gradients(self, params) -> None:
        if self.world_size == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def _write_metrics(self) -> None:
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        lines = [",".join(keys)] + [",".join(_fmt(row.get(k, "")) for k in keys) for row in self.history]
        ckpt.atomic_write_text("\n".join(lines) + "\n", self.run_dir / "metrics.csv")
        ckpt.atomic_write_text("".join(json.dumps(r) + "\n" for r in self.history), self.run_dir / "metrics.jsonl")

    def fit(self) -> dict:
        """Run (or resume) the job; returns the summary also written to ``summary.json``.
        Under torch.distributed every rank trains; rank 0 alone writes files and logs."""
        main = self.rank == 0
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(dump_config(self.cfg), self.run_dir / "config.yaml")
        self.setup_terms()
        self._broadcast_state()
        self.optimizer_params = self.distiller.trainable_parameters()
        self.optimizer = self.make_optimizer(self.optimizer_params, self.cfg.optim.lr)
        if self.resume:
            self._load_state(ckpt.load(self.run_dir / "last.pt", self.device))
            self.log(f"resuming {self.run_dir} after epoch {self.start_epoch}")
        teacher_metrics = evaluate(_Ensemble(self.teachers), self.test_loader, self.amp_ctx) if self.teachers else None
        for term in self.distiller.terms.values():
            for stage in term.stages():
                if stage.name in self.stages_done:
                    continue
                if main:
                    self.log(f"stage {stage.name}: {stage.epochs} epochs")
                self._run_stage(stage)
                self.stages_done.append(stage.name)
                if main:
                    ckpt.atomic_save(self._state(self.start_epoch), self.run_dir / "last.pt")
        writer = self._tensorboard() if main else None
        t0 = time.time()
        for epoch in range(self.start_epoch, self.cfg.optim.epochs):
            start = time.time()
            row = self._train_epoch(epoch)
            self._broadcast_buffers()
            if (epoch + 1) % self.cfg.train.eval_every == 0 or epoch + 1 == self.cfg.optim.epochs:
                row.update({f"test_{k}": v for k, v in evaluate(self.student, self.test_loader, self.amp_ctx).items()})
            row["seconds"] = time.time() - start
            self.history.append(row)
            improved = row.get("test_top1", -1) > self.best_top1
            if improved:
                self.best_top1 = row["test_top1"]
            if main:
                self._write_metrics()
                state = self._state(epoch + 1)
                ckpt.atomic_save(state, self.run_dir / "last.pt")
                if improved:
                    ckpt.atomic_save(state, self.run_dir / "best.pt")
                if writer:
                    for k, v in row.items():
                        if k != "epoch":
                            writer.add_scalar(k, v, epoch + 1)
                self.log(f"epoch {epoch + 1}/{self.cfg.optim.epochs} " + " ".join(
                    f"{k}={_fmt(v)}" for k, v in row.items() if k not in ("epoch",)))
        last = self.history[-1] if self.history else {}
        summary = {"run": self.cfg.run.name, "final_top1": last.get("test_top1"), "final_top5": last.get("test_top5"),
                   "best_top1": self.best_top1 if self.history else None, "epochs": self.cfg.optim.epochs,
                   "teacher_top1": teacher_metrics["top1"] if teacher_metrics else None,
                   "train_seconds": sum(r["seconds"] for r in self.history), "session_seconds": time.time() - t0,
                   "world_size": self.world_size}
        if main:
            self.export_student(self.run_dir / "student.pt", summary)
            ckpt.atomic_write_text(json.dumps(summary, indent=2) + "\n", self.run_dir / "summary.json")
        if writer:
            writer.close()
        return summary

    def _broadcast_buffers(self) -> None:
        """Give every rank rank 0's BatchNorm statistics (as DDP's broadcast_buffers does)."""
        if self.world_size > 1:
            for b in self.student.buffers():
                dist.broadcast(b, 0)

    def _broadcast_state(self) -> None:
        """Start every rank from rank 0's student and term state (parameters and buffers)."""
        if self.world_size == 1:
            return
        for t in self.distiller.state_dict().values():
            if isinstance(t, torch.Tensor) and not t.is_floating_point() and t.dim() == 0:
                continue  # num_batches_tracked counters: identical anyway
            dist.broadcast(t, 0)

    def _tensorboard(self):
        if not self.cfg.train.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tensorboard=true needs the tensorboard package: "
                              "pip install 'wdistill[tensorboard]'") from None
        return SummaryWriter(str(self.run_dir / "tb"))


class _Ensemble(nn.Module):
    """Mean logits of frozen models (a single teacher is an ensemble of one)."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        return torch.stack([m(x) for m in self.members]).mean(0)

    def train(self, mode: bool = True):
        return super().train(False)


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)
