"""Pre-training stages that terms ask for (FSP and AB initialisation, FT's paraphraser), run by the
Trainer before the main epochs with the run's optimiser settings."""
from __future__ import annotations

import torch
import torch.nn as nn

from wdistill.engine import ddp, rundir
from wdistill.engine.distiller import Distiller
from wdistill.engine.loop import Guard, Meter, Stepper


class StageLoss(nn.Module):
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


def run_stage(trainer, stage, teacher_index: int | None = None) -> None:
    """``stage.epochs`` passes over the training loader minimising ``stage.loss`` over the stage's
    parameters (and the student's, when ``stage.train_student``)."""
    cfg, student = trainer.cfg, trainer.student
    params = list(stage.parameters())
    if stage.train_student:
        params = [p for p in student.parameters() if p.requires_grad] + params
    opt = trainer.make_optimizer(params, stage.lr or cfg.optim.lr)
    module = ddp.wrap(StageLoss(trainer.distiller, stage, teacher_index), trainer.device, find_unused=True)
    for e in range(stage.epochs):
        torch.manual_seed(cfg.run.seed * 1000003 + 7919 * (e + 1))
        trainer.train_loader.set_epoch(-(e + 1))
        student.train(stage.train_student)
        stepper = Stepper(module, lambda b: module(dict(b, epoch=-1, num_epochs=cfg.optim.epochs)), opt,
                          torch.amp.GradScaler(trainer.device.type, enabled=False), trainer.amp_ctx,
                          cfg.train.accumulate, params, Meter(trainer.device), Guard([], {}, trainer.device),
                          clip=cfg.train.clip_grad_norm)
        trainer.run_loop(stepper, f"stage {stage.name} {e + 1}/{stage.epochs}", f"stage {stage.name!r} epoch {e + 1}")
    student.train()


def run_stages(trainer) -> None:
    """Every stage of the run's terms that has not run yet (a resumed run skips the finished ones),
    last.pt written after each."""
    for name, stage, teacher_index, term in trainer.distiller.stages():
        if name in trainer.stages_done:
            continue
        if trainer.rank == 0:
            trainer.log(f"stage {name}: {stage.epochs} epochs")
        run_stage(trainer, stage, teacher_index)
        term.on_stage_end(stage)
        trainer.stages_done.append(name)
        if trainer.rank == 0:
            trainer._save(trainer.start_epoch, rundir.LAST)
