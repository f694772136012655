"""The training loop: stages, epochs, evaluation, metrics, atomic checkpoints, exact resume.

Building (``build.py``), the run directory (``rundir/``), one optimisation step (``loop.py``), pre-training stages
(``stages.py``) and scale-out (``ddp.py``) live beside this file; the Trainer puts them in order.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn as nn

from wdistill import losses, models
from wdistill.config.schema import RunConfig
from wdistill.data import ImageDataset
from wdistill.data.build import build_loaders
from wdistill.data.views import Viewed
from wdistill.engine import ddp, preempt, rundir
from wdistill.engine.build import build_distiller, build_model, check_models, resolve_device, tensorboard_writer
from wdistill.engine.epochs import train_epoch
from wdistill.engine.evaluate import Ensemble, evaluate
from wdistill.engine.helping import helping_warnings
from wdistill.engine.loop import Stepper, run_pass
from wdistill.engine.precision import Precision, configure_backends
from wdistill.engine.stages import run_stages
from wdistill.engine.state import restore, save_finite, training_state
from wdistill.errors import ConfigError, PeerLost, Preempted
from wdistill.io import atomic_write_text, load_dict


class Trainer:
    """Runs one configured job. Models and data may be passed in (Python API, benchmarks); otherwise they are
    built from ``cfg``. Everything is validated here, before any training; the run directory is locked from here
    until :meth:`fit` ends or :meth:`close` (a caller holding its lock passes that RunDir as ``held``).
    ``watchers``: :class:`~wdistill.engine.loop.StepWatcher` objects that see every step of the main epochs."""

    def __init__(self, cfg: RunConfig, *, student: nn.Module | None = None, teachers: list[nn.Module] | None = None,
                 data: tuple[ImageDataset, ImageDataset] | None = None, resume: bool = False,
                 overwrite: bool = False, log=print, held: rundir.RunDir | None = None):
        self.rank, self.world_size = ddp.init_distributed()
        if ddp.restart_count() and not resume:  # torchrun restarted the workers: continue, never start over
            resume, overwrite = "auto", False
        self.cfg, self.log, self.resume, self.overwrite, self.watchers = cfg, log, resume, overwrite, []
        self.device = resolve_device(cfg.run.device)
        self.precision = Precision(cfg.train.precision, self.device)  # refused before any long work
        configure_backends(self.device, cfg.train.tf32)
        self._check(student, teachers)  # before the run directory is made and the data loads
        self.rundir = held or rundir.RunDir(cfg)
        self._owns_lock = not self.rundir.locked
        self.run_dir = self.rundir.path
        self.resume = self.rundir.claim_on_every_rank(self.resume, self.overwrite, self.rank, self.world_size)
        self.vote = preempt.Vote(self.world_size)  # every rank creates its group here, in step after the claim
        try:
            self._build(student, teachers, data)
        except BaseException:  # nothing of a trainer that was never made is kept: its group ends, its lock goes
            self.vote.close()
            self._release()
            raise

    def _release(self) -> None:
        if self._owns_lock:
            self.rundir.release()

    def _check(self, student, teachers) -> None:
        check_models(self.cfg, student=student is None, teachers=not teachers)

    def _build(self, student, teachers, data) -> None:
        cfg = self.cfg
        self.micro_batch, share = ddp.loader_share(cfg.data, cfg.train.accumulate, self.rank, self.world_size, self.log)
        torch.manual_seed(cfg.run.seed)
        self.data = build_loaders(cfg.data, data=data, seed=cfg.run.seed, device=self.device,
                                  need_targets=any(losses.get(t.name).needs_train_targets for t in cfg.loss),
                                  num_classes_hint=None if student is None else models.output_classes(student),
                                  shield_signals=tuple(cfg.train.stop_signals), **share)
        self.train_set, self.test_set = self.data.train_set, self.data.test_set
        nc, ch = self.data.num_classes, self.data.channels
        self.student = student if student is not None else build_model(cfg.student, nc, ch, "student")
        self.teachers = teachers if teachers is not None else [build_model(s, nc, ch, "teacher")
                                                               for s in cfg.teacher_sections()]
        self._assemble(lambda: build_distiller(cfg, self.student, self.teachers, ch))
        if cfg.train.compile:
            # The hooks stay on the original submodules; dynamo traces them into the graph.
            self.distiller.student_tap.model = torch.compile(self.student)
        self.train_loader, self.test_loader = self.data.train_loader, self.data.test_loader
        self.progress = cfg.train.progress and self.rank == 0
        self.scaler = self.precision.scaler()
        self._fresh_progress()

    def _assemble(self, make_distiller) -> None:
        """``train.sync_bn`` on the student (before the distiller hooks it), the distiller, its memory format."""
        if self.cfg.train.sync_bn:
            self.student = ddp.sync_batchnorm(self.student, self.device, self.world_size)
        self.distiller = make_distiller().to(self.device)
        if self.cfg.train.channels_last:
            self.distiller.to(memory_format=torch.channels_last)

    def _fresh_progress(self) -> None:
        """Where a run stands before it starts (a resumed one: set again by ``state.restore``)."""
        self.history: list[dict] = []
        self.best_top1 = -1.0  # the best ``best_metric`` so far (test_top1, or test_AP for detectors)
        self.start_epoch, self.start_step, self.resume_ranks = 0, 0, []
        self.signals = preempt.StopSignals([])  # fit() installs the configured ones
        self.clock = {"saved": time.monotonic()}  # when last.pt was last written (train.checkpoint_every)
        self.stages_done, self._terms_ready = [], False  # the pre-training stages run; the loss terms not built

    # ---- helpers -------------------------------------------------------------------------
    def viewed_student(self) -> nn.Module:
        """The student on its own view (evaluation sees what training saw)."""
        view = self.distiller.student_view
        return self.student if view.is_identity else Viewed(self.student, view)

    def amp_ctx(self):
        return self.precision.autocast()

    def _prepare(self, batch: dict) -> dict:
        if self.cfg.train.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

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
                   train_batches=self.data.plain_batches, cache_dir=str(Path(self.cfg.run.out_dir) / "cache"))
        self.distiller.setup(ctx, probe)
        self.distiller.to(self.device)
        self._terms_ready = True

    def make_optimizer(self, params, lr) -> torch.optim.Optimizer:
        o = self.cfg.optim  # fused under float16 loss scaling (Precision.fused_optimizer): no host sync
        return torch.optim.SGD(params, lr=lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay,
                               fused=self.precision.fused_optimizer)

    def close(self) -> None:
        """Take this trainer's feature hooks off the models, end its vote's process group, unlock the run directory."""
        self.distiller.close()
        self.vote.close()
        self._release()

    # ---- checkpoints ---------------------------------------------------------------------
    def _save(self, epoch: int, *names: str) -> None:
        save_finite(training_state(self, epoch), self.run_dir, names)

    # ---- stages and epochs -------------------------------------------------------------------
    def run_loop(self, stepper: Stepper, desc: str, where: str, first_step: int = 0, start: int = 0,
                 control: preempt.StepControl | None = None) -> dict:
        """Every batch of one pass of the training loader through ``stepper``; returns the sums.
        Without ``control`` (a pre-training stage) a stop signal stops it and nothing is written."""
        tr = self.cfg.train
        steps = min(len(self.train_loader), tr.max_steps or len(self.train_loader))
        control = control or preempt.StepControl(self.signals, self.vote, self.train_loader, self.rank, where)
        return run_pass(self.train_loader, stepper, steps=steps, log_every=tr.log_every, progress=self.progress,
                        prepare=self._prepare, world_size=self.world_size, desc=desc, where=where,
                        first_step=first_step, start=start, control=control)

    def fit(self) -> dict:
        """Run (or resume) the job; returns the summary also written to ``summary.json``.
        Under torch.distributed every rank trains; rank 0 alone writes files and logs. A stop
        signal (``train.stop_signals``) ends it with :class:`Preempted` once last.pt is written."""
        try:
            with preempt.StopSignals(self.cfg.train.stop_signals, self.log) as self.signals:
                return self._fit()
        except RuntimeError as e:
            if self.world_size > 1 and ddp.peer_lost(e):
                raise PeerLost(f"another process of this {self.world_size}-process job stopped or died (its own "
                               "log says why), so this one cannot go on. torchrun --max-restarts=N restarts the "
                               "job, which continues from its last checkpoint by itself") from e
            raise
        finally:
            self.train_module = None  # the DDP wrap holds the process group: dropped, or ddp.leave() could not end it
            self._release()

    def _start(self) -> None:
        """Record the run, build the terms and the optimiser, load a resumed state, run the stages."""
        main = self.rank == 0
        if main:
            self.rundir.begin(self.overwrite, self.resume)
        if not self._terms_ready:
            self.setup_terms()
        self.optimizer_params = self.distiller.trainable_parameters()
        self.optimizer = self.make_optimizer(self.optimizer_params, self.cfg.optim.lr)
        if self.resume:
            restore(self, load_dict(self.run_dir / rundir.LAST, self.device, what="run checkpoint"))
            if main:
                within = f" and {self.start_step} steps of the next" if self.start_step else ""
                self.log(f"resuming {self.run_dir} after epoch {self.start_epoch}{within}")
        if hasattr(self.train_loader, "defer_errors"):  # streamed: a bad file stops every rank at once, saved
            self.train_loader.defer_errors = True
            for loader in (self.train_loader, self.test_loader):  # every rank names the bad files it meets
                loader.log = self.log if self.rank == 0 else (lambda m: self.log(f"[rank {self.rank}] {m}"))
        run_stages(self)
        # DDP broadcasts rank 0's parameters and buffers once here, then averages gradients in
        # the backward pass. Stage-only parameters take no part in the main loss.
        self.train_module = ddp.wrap(self.distiller, self.device, find_unused=bool(self.distiller.stages()))
        if main and ddp.backend():
            each = self.micro_batch * self.cfg.train.accumulate
            self.log(f"DDP ({ddp.backend()}): global batch {self.cfg.data.batch_size} = {self.world_size} x {each}")

    def _end_epoch(self, epoch: int, row: dict, writer) -> None:
        """Record the epoch; rank 0 writes the metrics, last.pt (and best.pt) and the log line."""
        self.history.append(row)
        improved = row.get(metric := getattr(self, "best_metric", "test_top1"), -1) > self.best_top1  # top-1, or AP
        if improved:
            self.best_top1 = row[metric]
        if self.rank != 0:
            return
        self._save(epoch + 1, *((rundir.LAST, rundir.BEST) if improved else (rundir.LAST,)))
        self.clock["saved"] = time.monotonic()
        rundir.write_metrics(self.run_dir, self.history)  # after last.pt: never an epoch the checkpoint lacks
        if writer:
            for k, v in row.items():
                if k != "epoch":
                    writer.add_scalar(k, v, epoch + 1)
        self.log(f"epoch {epoch + 1}/{self.cfg.optim.epochs} " + " ".join(
            f"{k}={rundir.fmt(v)}" for k, v in row.items() if k not in ("epoch",) and not k.startswith("grad_norm_")))
        if epoch == 0:
            ce = [k for k, term in self.distiller.terms.items() if term.supervised]  # ce, or det for detectors
            for line in helping_warnings(row, dict(self.distiller.weights), ce):
                self.log(line)

    def _train_epoch(self, epoch: int) -> tuple[dict, float]:
        """(metrics row, seconds spent before a resume inside it) of one main epoch (epochs.py)."""
        return train_epoch(self, epoch)

    def _stop_if_signalled(self, epoch: int) -> None:
        """A stop signal that came during evaluation (or on another rank) ends the run here, its checkpoint written."""
        if self.vote.now([int(self.signals.requested), 0, 0])[preempt.STOP]:
            raise Preempted(f"{self.signals.received or 'a stop signal (on another rank)'}: stopped after epoch "
                            f"{epoch + 1}, whose checkpoint is written. Run the same command with --resume")

    def evaluate_teacher(self) -> dict | None:
        """The teacher's (or the ensemble's) test metrics, once before training."""
        d = self.distiller
        return evaluate(Ensemble([Viewed(t, v) for t, v in zip(self.teachers, d.teacher_views)]),
                        self.test_loader, self.amp_ctx) if self.teachers else None

    def evaluate_student(self) -> dict[str, float]:
        return evaluate(self.viewed_student(), self.test_loader, self.amp_ctx)

    def _summary(self, teacher: dict | None, t0: float) -> dict:
        last = self.history[-1] if self.history else {}
        return {"run": self.cfg.run.name, "final_top1": last.get("test_top1"), "final_top5": last.get("test_top5"),
                "best_top1": self.best_top1 if self.history else None, "epochs": self.cfg.optim.epochs,
                "teacher_top1": teacher["top1"] if teacher else None, "world_size": self.world_size,
                "backend": ddp.backend(), "train_seconds": sum(r["seconds"] for r in self.history),
                "session_seconds": time.time() - t0}

    def _fit(self) -> dict:
        self._start()
        cfg, main = self.cfg, self.rank == 0
        teacher = self.evaluate_teacher()
        writer = tensorboard_writer(cfg, self.run_dir) if main else None
        t0 = time.time()
        stop = min(cfg.optim.epochs, cfg.train.stop_after or cfg.optim.epochs)
        for epoch in range(self.start_epoch, stop):
            start = time.time()
            row, before = self._train_epoch(epoch)
            ddp.broadcast_buffers(self.student, self.world_size)
            if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.optim.epochs:
                row.update({f"test_{k}": v for k, v in self.evaluate_student().items()})
            row["seconds"] = before + time.time() - start
            self._end_epoch(epoch, row, writer)
            self._stop_if_signalled(epoch)
        summary = self._summary(teacher, t0)
        if writer:
            writer.close()
        if stop < cfg.optim.epochs:  # paused (train.stop_after): last.pt holds it; nothing is final yet
            return summary | {"paused_after": stop}
        if main:
            record = rundir.student_record(cfg, self.data.num_classes, self.data.channels, summary)
            rundir.write_student(self.run_dir / rundir.STUDENT, self.student.state_dict(), record)
            atomic_write_text(json.dumps(summary, indent=2) + "\n", self.run_dir / rundir.SUMMARY)
        return summary

