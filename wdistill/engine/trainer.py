"""The training loop: stages, epochs, evaluation, metrics, atomic checkpoints, exact resume.

Building (``build.py``), the run directory (``rundir.py``), one optimisation step (``loop.py``)
and scale-out (``ddp.py``) live beside this file; the Trainer puts them in order.
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from wdistill import losses, models
from wdistill.data import ImageDataset
from wdistill.data import build as data_build  # module, not name: data.build imports engine.config
from wdistill.engine import checkpoint as ckpt
from wdistill.engine import ddp
from wdistill.engine.build import build_model, build_terms, check_teacher_needs, check_teacher_view, resolve_device
from wdistill.config.schema import ConfigError, RunConfig
from wdistill.engine.distiller import Distiller, lr_at
from wdistill.engine.ddp import init_distributed, sync_batchnorm
from wdistill.data.views import View, Viewed
from wdistill.engine.evaluate import Ensemble, evaluate
from wdistill.engine.loop import Guard, Meter, NonFiniteLoss, Stepper
from wdistill.engine.rundir import RunDir

__all__ = ["Trainer", "evaluate", "build_model", "resolve_device", "init_distributed",
           "sync_batchnorm", "NonFiniteLoss"]


class _StageLoss(nn.Module):
    """A pre-training stage as a module, so DDP can average its gradients like the main loss."""

    def __init__(self, distiller: Distiller, stage, teacher_index: int | None = None):
        super().__init__()
        self.distiller, self.stage, self.teacher_index = distiller, stage, teacher_index

    def forward(self, batch: dict):
        if self.teacher_index is None:
            t_out = self.distiller.teacher_forward(batch["image"])
        else:  # a per-teacher instance of an ensemble's term: its own teacher
            t_out = self.distiller.teacher_outputs(batch["image"])[self.teacher_index]
        s_out = self.distiller.student_forward(batch["image"])
        loss = self.stage.loss(s_out, t_out, batch)
        return loss, {f"stage_{self.stage.name}": loss}, None


class Trainer:
    """Runs one configured job. Models and data may be passed in (Python API, benchmarks);
    otherwise they are built from ``cfg``. Everything is validated here, before any training;
    the run directory is locked from here until :meth:`fit` ends or :meth:`close`."""

    def __init__(self, cfg: RunConfig, *, student: nn.Module | None = None, teachers: list[nn.Module] | None = None,
                 data: tuple[ImageDataset, ImageDataset] | None = None, resume: bool = False,
                 overwrite: bool = False, log=print):
        self.cfg, self.log, self.resume, self.overwrite = cfg, log, resume, overwrite
        self.rank, self.world_size = init_distributed()
        self.device = resolve_device(cfg.run.device)
        self.rundir = RunDir(cfg)
        self.run_dir = self.rundir.path
        self._claim_run_dir()
        try:
            self._build(student, teachers, data)
        except BaseException:
            self.rundir.release()
            raise

    def _claim_run_dir(self) -> None:
        """Rank 0 locks and checks the directory; every rank learns the verdict (so a refused
        distributed run stops on all ranks at once instead of hanging in a collective)."""
        error = None
        if self.rank == 0:
            try:
                self.rundir.claim(self.resume, self.overwrite)
            except ConfigError as e:
                error = str(e)
        if self.world_size > 1:
            box = [error]
            dist.broadcast_object_list(box, 0)
            error = box[0]
        if error:
            raise ConfigError(error)

    def _build(self, student, teachers, data) -> None:
        cfg = self.cfg
        if not teachers:
            check_teacher_needs(cfg)  # before the data loads
        self.micro_batch = ddp.per_rank_batch(cfg.data.batch_size, self.world_size, cfg.train.accumulate)
        torch.manual_seed(cfg.run.seed)
        # data.batch_size is the global batch of one optimiser step: each rank loads its share.
        self.data = data_build.build_loaders(cfg.data, data=data, seed=cfg.run.seed, device=self.device, rank=self.rank,
                                             world_size=self.world_size,
                                             batch_size=self.micro_batch * cfg.train.accumulate,
                                             eval_batch_size=max(1, cfg.data.eval_batch_size // self.world_size),
                                             need_targets=any(losses.get(t.name).needs_train_targets for t in cfg.loss),
                                             log=self.log if self.rank == 0 else (lambda msg: None))
        self.train_set, self.test_set = self.data.train_set, self.data.test_set
        nc, ch = self.data.num_classes, self.data.channels
        t_sections = cfg.teacher_sections()
        self.student = student if student is not None else build_model(cfg.student, nc, ch, "student")
        if cfg.train.sync_bn:
            self.student = sync_batchnorm(self.student, self.device, self.world_size)
        self.teachers = teachers if teachers is not None else [build_model(s, nc, ch, "teacher") for s in t_sections]
        terms = build_terms(cfg)
        t_taps = [s.taps for s in t_sections] if t_sections else None
        for s in t_sections:
            check_teacher_view(s)
        views = [cfg.student.view, *(s.view for s in t_sections)]
        for role, view in zip(["student"] + ["teacher"] * len(t_sections), views):
            try:
                View(view).check(ch)  # the image size is checked on the probe batch, in setup_terms
            except ValueError as e:
                raise ConfigError(f"{role}.view: {e}") from None
        try:
            self.distiller = Distiller(self.student, self.teachers, terms, cfg.student.taps, t_taps,
                                       student_view=cfg.student.view,
                                       teacher_views=[s.view for s in t_sections] if t_sections else None,
                                       ).to(self.device)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"student/teacher taps: {e!s}. A tap spec needs 'feats' (module paths) and 'embed' "
                              "(e.g. 'fc:in'); `wdistill list` names the zoo models, which need none") from None
        if cfg.train.channels_last:
            self.distiller.to(memory_format=torch.channels_last)
        if cfg.train.compile:
            # The hooks stay on the original submodules; dynamo traces them into the graph.
            self.distiller.student_tap.model = torch.compile(self.student)
        self.train_loader, self.test_loader = self.data.train_loader, self.data.test_loader
        self.progress = cfg.train.progress and self.rank == 0
        self.amp_dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.amp and self.device.type == "cuda")
        self.history: list[dict] = []
        self.best_top1 = -1.0
        self.start_epoch = 0
        self.stages_done: list[str] = []
        self._terms_ready = False

    # ---- helpers -------------------------------------------------------------------------
    def viewed_student(self) -> nn.Module:
        """The student on its own view (evaluation sees what training saw)."""
        view = self.distiller.student_view
        return self.student if view.is_identity else Viewed(self.student, view)

    def amp_ctx(self):
        if not self.cfg.train.amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _prepare(self, batch: dict) -> dict:
        if self.cfg.train.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    def _plain_batches(self):
        return self.data.plain_batches()

    def setup_terms(self) -> None:
        """Probe one batch and let every loss term build its parts (done by ``fit``)."""
        probe = self._prepare(next(iter(self.train_loader)))
        d = self.distiller
        for role, view in [("student", d.student_view), *(("teacher", v) for v in d.teacher_views)]:
            try:
                view.check(self.data.channels, tuple(probe["image"].shape[-2:]))
            except ValueError as e:
                raise ConfigError(f"{role}.view: {e}") from None
        targets = self.data.train_targets
        ctx = dict(num_classes=self.data.num_classes, num_samples=self.data.num_samples,
                   train_targets=None if targets is None else targets.to(self.device), device=self.device,
                   train_batches=self._plain_batches, cache_dir=str(Path(self.cfg.run.out_dir) / "cache"))
        self.distiller.setup(ctx, probe)
        self.distiller.to(self.device)
        self._terms_ready = True

    def make_optimizer(self, params, lr) -> torch.optim.Optimizer:
        o = self.cfg.optim
        return torch.optim.SGD(params, lr=lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)

    def close(self) -> None:
        """Remove the feature hooks this trainer put on the models and unlock the run directory."""
        self.distiller.close()
        self.rundir.release()

    def _state(self, epoch: int) -> dict:
        trainable = {k: v for k, v in self.distiller.state_dict().items() if not k.startswith("teachers.")}
        return {"epoch": epoch, "distiller": trainable, "optimizer": self.optimizer.state_dict(),
                "best_top1": self.best_top1, "history": self.history, "stages_done": self.stages_done,
                "config": self.cfg.model_dump(mode="json"), "arch": self.cfg.student.model}

    def _save(self, state: dict, *names: str) -> None:
        """Write a checkpoint after checking that every tensor in it is finite."""
        floats = {k: v for k, v in state["distiller"].items() if v.is_floating_point() and v.numel()}
        finite = torch.stack([torch.isfinite(v).all() for v in floats.values()]) if floats else torch.ones(1, dtype=bool)
        if not bool(finite.all()):  # one host sync per save
            bad = [k for k, ok in zip(floats, finite.tolist()) if not ok]
            raise NonFiniteLoss(f"refusing to save non-finite weights ({', '.join(bad[:5])}); the last checkpoint "
                                "in the run directory is the last good state. Lower the learning rate or the "
                                "terms' weights")
        for name in names:
            ckpt.atomic_save(state, self.run_dir / name)

    def _load_state(self, state: dict) -> None:
        try:
            missing, unexpected = self.distiller.load_state_dict(state["distiller"], strict=False)
            missing = [k for k in missing if not k.startswith("teachers.")]
            if missing or unexpected:
                raise ConfigError(f"{self.run_dir / 'last.pt'} does not match this configuration "
                                  f"(missing {missing[:5]}, unexpected {unexpected[:5]}): resume with the run's own "
                                  f"config ({self.run_dir / 'config.yaml'})")
            self.optimizer.load_state_dict(state["optimizer"])
            self.best_top1 = float(state["best_top1"])
            self.history = list(state["history"])
            self.stages_done = list(state["stages_done"])
            self.start_epoch = int(state["epoch"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{self.run_dir / 'last.pt'} is not a complete wdistill checkpoint ({type(e).__name__}: "
                              f"{e}); start again with --overwrite") from None

    def export_student(self, path: Path, metrics: dict) -> None:
        ckpt.atomic_save({"model": self.student.state_dict(), "arch": self.cfg.student.model,
                          "num_classes": self.data.num_classes, "in_channels": self.data.channels,
                          "taps": self.cfg.student.taps, "kwargs": self.cfg.student.kwargs,
                          "view": None if self.cfg.student.view is None else self.cfg.student.view.model_dump(),
                          "data": self.cfg.data.model_dump(mode="json"),  # `wdistill eval` scores on this data
                          "metrics": metrics}, path)
        models.save_student_safetensors(self.student, path.with_suffix(".safetensors"), {
            "arch": self.cfg.student.model, "num_classes": self.data.num_classes,
            "in_channels": self.data.channels, "kwargs": self.cfg.student.kwargs})

    # ---- stages and epochs -------------------------------------------------------------------
    def _steps(self, loader) -> int:
        return min(len(loader), self.cfg.train.max_steps or len(loader))

    def _run_loop(self, stepper: Stepper, desc: str, where: str, first_step: int = 0) -> dict:
        """Every batch of one pass of the training loader through ``stepper``; returns the sums."""
        n_steps = self._steps(self.train_loader)
        every = self.cfg.train.log_every
        bar = tqdm(total=n_steps, desc=desc, leave=False, disable=None if self.progress else True)
        for step, batch in enumerate(self.train_loader):
            if step == n_steps:
                break
            batch = self._prepare(batch)
            batch["step"] = first_step + step
            stepper.step(batch, first_step + step)
            bar.update(1)
            if (step + 1) % every == 0 and step + 1 < n_steps:
                stepper.guard.check(where)
                if self.progress:  # a host sync, once per interval
                    s = stepper.meter.read()
                    post = {"loss": f"{s['loss'] / s['n']:.4f}"}
                    if "correct" in s:
                        post["acc"] = f"{100 * s['correct'] / s['n']:.1f}"
                    bar.set_postfix(post)
        bar.close()
        stepper.guard.check(where)
        return stepper.meter.read(self.world_size)

    def _run_stage(self, stage, teacher_index: int | None = None) -> None:
        params = list(stage.parameters())
        if stage.train_student:
            params = [p for p in self.student.parameters() if p.requires_grad] + params
        opt = self.make_optimizer(params, stage.lr or self.cfg.optim.lr)
        module = ddp.wrap(_StageLoss(self.distiller, stage, teacher_index), self.device, self.world_size, find_unused=True)
        for e in range(stage.epochs):
            torch.manual_seed(self.cfg.run.seed * 1000003 + 7919 * (e + 1))
            self.train_loader.set_epoch(-(e + 1))
            self.student.train(stage.train_student)
            stepper = Stepper(module, lambda b: module(dict(b, epoch=-1, num_epochs=self.cfg.optim.epochs)), opt,
                              torch.amp.GradScaler(self.device.type, enabled=False), self.amp_ctx,
                              self.cfg.train.accumulate, params, Meter(self.device),
                              Guard([], {}, self.device))
            self._run_loop(stepper, f"stage {stage.name} {e + 1}/{stage.epochs}", f"stage {stage.name!r} epoch {e + 1}")
        self.student.train()

    def _train_epoch(self, epoch: int) -> dict:
        o = self.cfg.optim
        lr = lr_at(epoch, o.lr, o.schedule, o.epochs, o.milestones, o.gamma, o.warmup_epochs)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        torch.manual_seed(self.cfg.run.seed * 1000003 + epoch)
        self.train_loader.set_epoch(epoch)
        self.distiller.train()
        module = self.train_module
        names = list(self.distiller.terms)

        def forward(batch):
            total, parts, s_out = module(dict(batch, epoch=epoch, num_epochs=o.epochs))
            return total, parts, s_out["logits"]

        stepper = Stepper(module, forward, self.optimizer, self.scaler, self.amp_ctx, self.cfg.train.accumulate,
                          self.optimizer_params, Meter(self.device),
                          Guard(names, dict(self.distiller.weights), self.device), self.distiller.after_step)
        sums = self._run_loop(stepper, f"epoch {epoch + 1}/{o.epochs}", f"epoch {epoch + 1}",
                              first_step=epoch * len(self.train_loader))
        n = sums.pop("n")
        correct = sums.pop("correct", 0.0)
        row = {"epoch": epoch + 1, "lr": lr}
        row.update({f"train_{k}": v / n for k, v in sums.items()})
        row["train_top1"] = 100.0 * correct / n
        return row

    def _write_metrics(self) -> None:
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        lines = [",".join(keys)] + [",".join(_fmt(row.get(k, "")) for k in keys) for row in self.history]
        ckpt.atomic_write_text("\n".join(lines) + "\n", self.run_dir / "metrics.csv")
        ckpt.atomic_write_text("".join(json.dumps(r) + "\n" for r in self.history), self.run_dir / "metrics.jsonl")

    def fit(self) -> dict:
        """Run (or resume) the job; returns the summary also written to ``summary.json``.
        Under torch.distributed every rank trains; rank 0 alone writes files and logs."""
        try:
            return self._fit()
        finally:
            self.rundir.release()

    def _fit(self) -> dict:
        main = self.rank == 0
        if main:
            self.rundir.begin(self.overwrite, self.resume)
        if not self._terms_ready:
            self.setup_terms()
        self.optimizer_params = self.distiller.trainable_parameters()
        self.optimizer = self.make_optimizer(self.optimizer_params, self.cfg.optim.lr)
        if self.resume:
            self._load_state(ckpt.load(self.run_dir / "last.pt", self.device, what="run checkpoint"))
            self.log(f"resuming {self.run_dir} after epoch {self.start_epoch}")
        d = self.distiller
        teacher_metrics = evaluate(Ensemble([Viewed(t, v) for t, v in zip(self.teachers, d.teacher_views)]),
                                   self.test_loader, self.amp_ctx) if self.teachers else None
        for name, stage, teacher_index, term in d.stages():
            if name in self.stages_done:
                continue
            if main:
                self.log(f"stage {name}: {stage.epochs} epochs")
            self._run_stage(stage, teacher_index)
            term.on_stage_end(stage)
            self.stages_done.append(name)
            if main:
                self._save(self._state(self.start_epoch), "last.pt")
        writer = self._tensorboard() if main else None
        # DDP broadcasts rank 0's parameters and buffers once here, then averages gradients in
        # the backward pass. Stage-only parameters take no part in the main loss.
        has_stages = bool(self.distiller.stages())
        self.train_module = ddp.wrap(self.distiller, self.device, self.world_size, find_unused=has_stages)
        if main and self.world_size > 1:
            self.log(f"distributed: {self.world_size} processes, global batch {self.cfg.data.batch_size} = "
                     f"{self.world_size} x {self.micro_batch * self.cfg.train.accumulate} per process")
        t0 = time.time()
        for epoch in range(self.start_epoch, self.cfg.optim.epochs):
            start = time.time()
            row = self._train_epoch(epoch)
            ddp.broadcast_buffers(self.student, self.world_size)
            if (epoch + 1) % self.cfg.train.eval_every == 0 or epoch + 1 == self.cfg.optim.epochs:
                row.update({f"test_{k}": v for k, v in evaluate(self.viewed_student(), self.test_loader,
                                                                      self.amp_ctx).items()})
            row["seconds"] = time.time() - start
            self.history.append(row)
            improved = row.get("test_top1", -1) > self.best_top1
            if improved:
                self.best_top1 = row["test_top1"]
            if main:
                self._write_metrics()
                state = self._state(epoch + 1)
                self._save(state, *(("last.pt", "best.pt") if improved else ("last.pt",)))
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

    def _tensorboard(self):
        if not self.cfg.train.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tensorboard=true needs the tensorboard package: "
                              "pip install 'wdistill[tensorboard]'") from None
        return SummaryWriter(str(self.run_dir / "tb"))


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)
