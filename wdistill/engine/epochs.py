"""One main training epoch, and the step checkpoints inside it.

An epoch sets its learning rate and seeds the global RNG from (seed, epoch), then runs its steps
through ``loop.run_pass`` with a ``preempt.StepControl``: before each step the ranks agree whether
to go on, write a step checkpoint (``train.checkpoint_every``), stop on a signal, or stop for a bad
image. A step checkpoint holds the model and optimiser as an epoch-end one does, plus every rank's
part of the epoch (``state.local_state``); an epoch resumed from it continues at the next batch.

What is exact after a resume inside an epoch: on the in-memory path every batch, crop and flip,
the global RNG, memory banks and the epoch's metric sums, so the weights are bit-identical to an
uninterrupted run. On the streaming path too, because a sample's crop is drawn from a seed of
(seed, epoch, position) and the sampler restarts at the batch (a user Dataset that draws its own
randomness in ``__getitem__`` continues from re-seeded workers: the same samples, other draws).
"""
from __future__ import annotations

import time

import torch

from wdistill.engine import ddp, rundir
from wdistill.engine.distiller import lr_at
from wdistill.engine.helping import grad_share_row
from wdistill.engine.loop import GradShareProbe, Guard, Meter, Stepper
from wdistill.engine.preempt import StepControl
from wdistill.engine.state import apply_local, local_state, save_finite, training_state


def _stepper(trainer, epoch: int) -> Stepper:
    o, module = trainer.cfg.optim, trainer.train_module

    def forward(batch):
        total, parts, s_out = module(dict(batch, epoch=epoch, num_epochs=o.epochs))
        return total, parts, s_out["logits"]

    d, meter = trainer.distiller, Meter(trainer.device)
    guard = Guard(list(d.terms), dict(d.weights), trainer.device)
    # train.grad_share: each term's gradient norm on the student at the epoch's first step (a run
    # resumed inside the epoch has it in the restored metric sums already)
    params = [p for p in trainer.student.parameters() if p.requires_grad]
    probe = [GradShareProbe(epoch * len(trainer.train_loader), params, meter)] if trainer.cfg.train.grad_share else []
    return Stepper(module, forward, trainer.optimizer, trainer.scaler, trainer.amp_ctx, trainer.cfg.train.accumulate,
                   trainer.optimizer_params, meter, guard, d.after_step, watchers=probe + trainer.watchers,
                   clip=trainer.cfg.train.clip_grad_norm)


def _resume_inside(trainer, epoch: int, loader, stepper: Stepper) -> tuple[int, float]:
    """(first step, seconds already spent) of ``epoch``: 0 and 0.0 unless the run resumes inside it."""
    start, ranks = trainer.start_step, trainer.resume_ranks
    trainer.start_step, trainer.resume_ranks = 0, []
    if not start or epoch != trainer.start_epoch:
        return 0, 0.0
    before, exact = apply_local(ranks, trainer.rank, trainer.world_size, start, loader, stepper.meter, trainer.device)
    if trainer.rank == 0:
        trainer.log(f"resuming epoch {epoch + 1} at step {start + 1} of {len(loader)}" + (
            "" if exact else f" (the checkpoint was written by {len(ranks)} process(es), this run has "
            f"{trainer.world_size}: the same samples from here, new random crops)"))
    return start, before


def train_epoch(trainer, epoch: int) -> tuple[dict, float]:
    """Train ``epoch`` (or its remainder after a step checkpoint); returns its metrics row and the
    seconds it took before an interruption."""
    o, tr = trainer.cfg.optim, trainer.cfg.train
    lr = lr_at(epoch, o.lr, o.schedule, o.epochs, o.milestones, o.gamma, o.warmup_epochs)
    for g in trainer.optimizer.param_groups:
        g["lr"] = lr
    torch.manual_seed(trainer.cfg.run.seed * 1000003 + epoch)
    loader = trainer.train_loader
    loader.set_epoch(epoch)
    trainer.distiller.train()
    stepper = _stepper(trainer, epoch)
    start, before = _resume_inside(trainer, epoch, loader, stepper)
    t0, where = time.time(), f"epoch {epoch + 1}"

    def save(position: int) -> None:
        stepper.guard.check(where)  # nothing non-finite is ever saved
        mine = local_state(loader, stepper.meter, before + time.time() - t0, trainer.device)
        ranks = trainer.vote.gather(mine)
        if trainer.rank == 0:
            save_finite(training_state(trainer, epoch, position, ranks), trainer.run_dir, (rundir.LAST,))

    every_steps, every_seconds = tr.interval()
    first = epoch * len(loader)
    control = StepControl(trainer.signals, trainer.vote, loader, trainer.rank, where, first, save, every_steps,
                          every_seconds, trainer.clock)
    sums = trainer.run_loop(stepper, f"epoch {epoch + 1}/{o.epochs}", where, first_step=first, start=start,
                            control=control)
    shares = grad_share_row(sums, trainer.world_size)
    n = sums.pop("n")
    correct = sums.pop("correct", 0.0)
    row = {"epoch": epoch + 1, "lr": lr}
    row.update({f"train_{k}": v / n for k, v in sums.items()})
    row["train_top1"] = 100.0 * correct / n
    if hasattr(loader, "skipped"):  # streamed data under data.on_bad_image=skip
        skipped = ddp.all_sum(torch.tensor(float(loader.skipped), device=trainer.device), trainer.world_size)
        if float(skipped) > 0:
            row["skipped_images"] = int(skipped)
    return row | shares, before
