"""One optimisation step, shared by pre-training stages and main epochs, with no host sync.

Loss parts, accuracy and the non-finite check stay on the device: :class:`Meter` sums them and
:class:`Guard` remembers the first step whose total, any weighted term or the gradient was not
finite. Both are read (one host sync) every ``train.log_every`` steps and at the end of a stage
or an epoch, before anything is saved, so a non-finite value never reaches a checkpoint.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from wdistill.engine import ddp
from wdistill.errors import NonFiniteLoss


class Guard:
    """Device-side record of the first non-finite step of a stage or an epoch."""

    def __init__(self, names: list[str], weights: dict[str, float], device: torch.device):
        self.names, self.weights = names, weights
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_values = torch.zeros(len(names) + 2, device=device)  # terms, total, grad norm
        self.peak = torch.zeros(len(names), device=device)  # largest |weighted value| while finite

    def observe(self, step: int, total: torch.Tensor, parts: dict[str, torch.Tensor],
                grad_norm: torch.Tensor | None) -> None:
        terms = torch.stack([parts[n].detach().float().reshape(()) for n in self.names]) if self.names \
            else total.new_zeros(0)
        g = grad_norm.detach().float().reshape(()) if grad_norm is not None else total.new_zeros(())
        values = torch.cat([terms, total.detach().float().reshape(1), g.reshape(1)])
        bad = ~torch.isfinite(values).all()
        first = bad & (self.bad_step < 0)
        self.bad_step = torch.where(first, torch.full_like(self.bad_step, step), self.bad_step)
        self.bad_values = torch.where(first, values, self.bad_values)
        if self.names:
            ok = (self.bad_step < 0)
            self.peak = torch.where(ok & torch.isfinite(terms), torch.maximum(self.peak, terms.abs()), self.peak)

    def check(self, where: str) -> None:
        """Raise :class:`NonFiniteLoss` if any observed step was not finite (one host sync)."""
        step = int(self.bad_step)
        if step < 0:
            return
        vals = self.bad_values.tolist()
        terms = dict(zip(self.names, vals[:len(self.names)]))
        total, gnorm = vals[-2], vals[-1]
        bad_terms = [n for n, v in terms.items() if v != v or abs(v) == float("inf")]
        peak = dict(zip(self.names, self.peak.tolist()))
        described = ", ".join(f"{n} (weight {self.weights[n]:g}) = {terms[n]:.4g}" for n in self.names)
        if bad_terms:
            what = "weighted loss term(s) " + ", ".join(f"{n!r} (weight {self.weights[n]:g})" for n in bad_terms)
        elif total != total or abs(total) == float("inf"):
            what = "the total loss (each term finite, their sum overflowed)"
        else:
            what = "the gradient (every loss value finite)"
        # The likely culprit when every value was finite (a too-large weight blows up the gradient),
        # or when values grew before turning NaN: the one weighted term that grew huge. When every term grew
        # huge, the weights together drove the model itself away: no single weight is to blame.
        sizes = {n: max(peak[n], abs(v) if v == v and abs(v) != float("inf") else 0.0) for n, v in terms.items()}
        huge = [n for n in self.names if sizes[n] > 1e6]
        suspect = max(huge, key=sizes.get) if huge else None
        fix = "Lower the learning rate or that term's weight, or use a log-domain solver"
        hint = ""
        if suspect and len(huge) > 1 and len(huge) == len(self.names):
            hint = (f" Every weighted term grew past 1e6 first (the largest, {suspect!r}, to "
                    f"{sizes[suspect]:.3g}): the model itself ran away, not one term.")
            fix = ("Lower the distillation terms' weights together (halve them) or the learning rate; clipping the "
                   "gradient (train.clip_grad_norm) keeps the numbers finite but can leave the model unable to learn")
        elif suspect:
            hint = (f" The largest weighted term is {suspect!r} (weight {self.weights[suspect]:g}) at "
                    f"{sizes[suspect]:.3g}: its weight is the likely cause.")
        raise NonFiniteLoss(
            f"{what} became non-finite in {where}, step {step}: {described}; total {total:.4g}, gradient norm "
            f"{gnorm:.4g}.{hint} {fix}; nothing non-finite was saved, the last checkpoint is the last good state.")


class Meter:
    """Sums of per-batch values on the device, read once per interval."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, key: str, value: torch.Tensor) -> None:
        v = value.detach().float().reshape(())
        self.sums[key] = self.sums[key] + v if key in self.sums else v.clone()

    def read(self, world_size: int = 1) -> dict[str, float]:
        """{key: sum over steps (and ranks)} with one host sync."""
        if not self.sums:
            return {}
        keys = list(self.sums)
        total = ddp.all_sum(torch.stack([self.sums[k] for k in keys]).double(), world_size)
        return dict(zip(keys, total.tolist()))


def split_batch(batch: dict, parts: int) -> list[dict]:
    """``parts`` micro-batches of equal size: the entries with one row per sample (tensors on dim 0,
    and lists: a detection batch's images and targets) are split, the others shared."""
    if parts == 1:
        return [batch]
    n = len(batch["target"])
    size = n // parts

    def per_sample(v) -> bool:
        return (isinstance(v, list) or isinstance(v, torch.Tensor) and v.dim() > 0) and len(v) == n
    return [{k: v[i * size:(i + 1) * size] if per_sample(v) else v for k, v in batch.items()} for i in range(parts)]


class StepWatcher:
    """Sees every step of a run's main epochs: append one to ``Trainer.watchers`` before ``fit()`` and override
    what you need. ``step`` counts from the run's first step (its epoch is ``step // len(trainer.train_loader)``).

    ``before_backward(step, batch, parts)``: the step's (first micro-) batch and its weighted terms
    ``{name: value}``, their graph still alive, so ``torch.autograd.grad(value, params, retain_graph=True)`` may
    take one term's gradient (it costs a backward). ``after_backward(step, grad_norm)``: the norm of the whole
    gradient on the trained parameters, as the loop checks it for non-finite values and before
    ``train.clip_grad_norm`` clips it (None without gradients). Both run on every rank, with no host sync of
    their own: a watcher that reads a value (``float(...)``) adds one."""

    def before_backward(self, step: int, batch: dict, parts: dict[str, torch.Tensor]) -> None:
        pass

    def after_backward(self, step: int, grad_norm: torch.Tensor | None) -> None:
        pass


class GradShareProbe(StepWatcher):
    """``train.grad_share``: at ``step``, each weighted term's gradient norm on ``params`` (the student's) into
    ``meter`` as ``gradnorm_<term>``."""

    def __init__(self, step: int, params: list[torch.Tensor], meter: Meter):
        self.step, self.params, self.meter = step, params, meter

    def before_backward(self, step: int, batch: dict, parts: dict[str, torch.Tensor]) -> None:
        if step == self.step:
            for name, norm in term_grad_norms(parts, self.params).items():
                self.meter.add(f"gradnorm_{name}", norm)


class Stepper:
    """Forward (under autocast), backward with DDP's gradient averaging (``no_sync`` on all but the
    last micro-batch), the gradient's norm clipped to ``clip`` if given, optimiser step, then
    ``after_step()`` (the terms' hooks: memory banks) once. ``watchers`` (:class:`StepWatcher`) see the first
    micro-batch's terms before its backward and the gradient's norm.
    ``forward(batch) -> (total, {name: weighted value}, logits or None)``."""

    def __init__(self, module: nn.Module, forward: Callable, optimizer: torch.optim.Optimizer, scaler,
                 amp_ctx: Callable, accumulate: int, params: list[torch.Tensor], meter: Meter, guard: Guard,
                 after_step: Callable[[], None] | None = None, watchers: Sequence[StepWatcher] = (),
                 clip: float | None = None):
        self.module, self.forward, self.optimizer, self.scaler = module, forward, optimizer, scaler
        self.clip = clip  # train.clip_grad_norm
        self.amp_ctx, self.accumulate, self.params = amp_ctx, accumulate, params
        self.meter, self.guard, self.after_step = meter, guard, after_step
        self.watchers = list(watchers)

    def step(self, batch: dict, step: int) -> None:
        micro = split_batch(batch, self.accumulate)
        for i, mb in enumerate(micro):
            last = i == len(micro) - 1
            sync = nullcontext() if last or not hasattr(self.module, "no_sync") else self.module.no_sync()
            with sync:
                with self.amp_ctx():
                    total, parts, logits = self.forward(mb)
                if i == 0:
                    for w in self.watchers:
                        w.before_backward(step, mb, parts)
                self.scaler.scale(total / self.accumulate).backward()
            b = torch.full((), float(len(mb["target"])), device=total.device)  # a fill: torch.tensor would copy, a sync
            self.meter.add("n", b)
            self.meter.add("loss", total * b)
            for k, v in parts.items():
                self.meter.add(k, v * b)
            if logits is not None:
                self.meter.add("correct", (logits.argmax(1) == mb["target"]).sum())
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        gnorm = torch.nn.utils.get_total_norm(grads) if grads else None
        self.guard.observe(step, total, parts, gnorm)
        for w in self.watchers:
            w.after_backward(step, gnorm)
        if self.clip is not None and gnorm is not None:  # with the norm already taken: no second pass, no sync
            torch.nn.utils.clip_grads_with_norm_(self.params, self.clip, gnorm)  # scales each p.grad
            self.meter.add("clipped", (gnorm > self.clip).float() * len(batch["target"]))  # a share of n
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.after_step is not None:
            self.after_step()


def term_grad_norms(parts: dict[str, torch.Tensor], params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each weighted term's gradient norm on ``params`` (one backward per term, the graph kept for the
    step's own backward); a term without a path to ``params`` gets 0."""
    out = {}
    for name, value in parts.items():
        grads = (torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
                 if value.requires_grad else [])
        grads = [g for g in grads if g is not None]
        out[name] = torch.nn.utils.get_total_norm(grads) if grads else value.new_zeros(())
    return out


def run_pass(loader, stepper: Stepper, *, steps: int, log_every: int, progress: bool, prepare: Callable,
             world_size: int, desc: str, where: str, first_step: int = 0, start: int = 0, control=None) -> dict:
    """Batches ``start`` to ``steps - 1`` of ``loader`` through ``stepper`` with a progress bar; the
    guard and the running loss are read (a host sync) every ``log_every`` steps and at the end.
    Returns the meter's sums over the pass (and the ranks).

    The loader must begin at batch ``start`` (``loader.start_at``). Batch k + 1 is fetched before
    step k trains, so ``control`` (a ``preempt.StepControl``) gets its vote on batch k + 1 started
    (``control.send()``) a whole step before it decides (``control.decide(k + 1)``), which may write
    a checkpoint or stop the run."""
    bar = tqdm(total=steps, initial=start, desc=desc, leave=False, disable=None if progress else True)
    try:
        batches = iter(loader) if start < steps else iter(())
        nxt = next(batches, None)
        if control is not None and nxt is not None:
            control.send()
        for step in range(start, steps):
            if nxt is None:
                break
            if control is not None:
                control.decide(step)
            batch = nxt
            nxt = next(batches, None) if step + 1 < steps else None
            if control is not None and nxt is not None:
                control.send()
            batch = prepare(batch)
            batch["step"] = first_step + step
            stepper.step(batch, first_step + step)
            bar.update(1)
            if (step + 1) % log_every == 0 and step + 1 < steps:
                _report(stepper, bar, where, progress)
    finally:
        bar.close()
    stepper.guard.check(where)
    return stepper.meter.read(world_size)


def _report(stepper: Stepper, bar, where: str, progress: bool) -> None:
    """Every ``log_every`` steps: the non-finite check and the running loss (one host sync)."""
    stepper.guard.check(where)
    if progress:
        s = stepper.meter.read()
        post = {"loss": f"{s['loss'] / s['n']:.4f}"}
        if "correct" in s:
            post["acc"] = f"{100 * s['correct'] / s['n']:.1f}"
        bar.set_postfix(post)
