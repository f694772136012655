"""How a run diverges, step by step: each loss term's gradient on the student, their cosines and the total.

Trains a run's config (a run directory's config.yaml, into a scratch folder: the run itself is not touched) for
``--steps`` steps through the engine's own training loop, and records at every step the learning rate, each
weighted term's value, the L2 norm of its gradient on the student's parameters, the cosine between every two terms'
gradients, and the total gradient's norm as the loop clips and checks it. A term made of named parts (its
``last_parts``: WKD-L's ``target`` and ``wd``, DKD's ``tckd`` and ``nckd``, the detector's four losses) is split into
them, each with the term's weight. A run whose loss becomes non-finite ends the trace there, with the engine's message.
``--watch`` adds, for each named module of the student, the size of what it computed this step (the mean L2 norm
of its output's rows and their largest entry), the L2 norm of its parameters, and the whole step's gradient on
them (unscaled, before clipping): its norm and its cosine with the parameters. How features, logits and weights
grow before a runaway, and whether the gradient grows the weights along themselves or across them.

    python benchtools/step_trace.py RUN_DIR --steps 110 --out trace.jsonl [--set train.clip_grad_norm=35]
        [--watch roi_heads.box_head roi_heads.box_predictor.cls_score]

It writes the trace (one JSON object per step, then the ending) and prints a summary by windows of steps: each
term's median gradient norm, the total's median and maximum, the median cosines.

Per step it costs one extra backward per term (the graph kept for the step's own). Single-thread runs replay the
same steps as the run they copy: the trace of a run that diverged diverges at the same step.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from wdistill.config import load_config
from wdistill.config.load import apply_overrides
from wdistill.engine import StepWatcher, make_trainer
from wdistill.errors import NonFiniteLoss
from wdistill.io import atomic_write_text


class _Done(Exception):
    """The trace has its steps."""


def _split(trainer, parts: dict) -> dict:
    """``parts`` with each term that kept its named parts this step replaced by them, times the term's weight."""
    out = {}
    for name, value in parts.items():
        term = trainer.distiller.terms[name]
        kept, term.last_parts = term.last_parts, None
        if kept is None:
            out[name] = value
        else:
            out.update({f"{name} {k}": trainer.distiller.weights[name] * v for k, v in kept.items()})
    return out


def _record(terms: dict, params: list[torch.Tensor]) -> dict:
    """Each term's value and gradient norm on ``params``, and the cosine between every two gradients."""
    grads = {}
    for name, value in terms.items():
        g = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True) if value.requires_grad else ()
        flat = [x.flatten() if x is not None else torch.zeros_like(p).flatten() for x, p in zip(g, params)]
        grads[name] = torch.cat(flat) if flat else torch.zeros(1)
    names = list(grads)
    return {"values": {k: float(v.detach()) for k, v in terms.items()},
            "gradnorm": {k: float(g.norm()) for k, g in grads.items()},
            "cosine": {f"{a} ~ {b}": float(F.cosine_similarity(grads[a], grads[b], dim=0))
                       for i, a in enumerate(names) for b in names[i + 1:]}}


class _Sizes:
    """Forward hooks on the named modules of ``model``: the size of each one's last output and of its parameters."""

    def __init__(self, model: torch.nn.Module, paths: list[str]):
        self.modules, self.outputs = {}, {}
        for path in paths:
            try:
                self.modules[path] = model.get_submodule(path)
            except AttributeError:
                names = ", ".join(n for n, _ in model.named_modules() if n) or "(none)"
                raise ValueError(f"--watch {path}: the student has no module of that name; "
                                 f"its modules: {names}") from None
            self.modules[path].register_forward_hook(self._hook(path))

    def _hook(self, path: str):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise ValueError(f"--watch {path}: this module returns a {type(output).__name__}, not a tensor; "
                                 f"watch the submodule that computes the tensor you want")
            self.outputs[path] = output.detach()
        return hook

    def row(self) -> dict:
        out = {}
        for path, module in self.modules.items():
            y = self.outputs.pop(path, None)
            weights = [p.detach().flatten() for p in module.parameters()]
            out[path] = {"out_norm": None if y is None else float(y.flatten(1).norm(dim=1).mean()),
                         "out_absmax": None if y is None else float(y.abs().max()),
                         "param_norm": float(torch.cat(weights).norm()) if weights else None}
        return out

    def grads(self) -> dict:
        """Each module's gradient, as the step's backward left it: its norm and its cosine with the parameters
        (negative: the step, against the gradient, makes the weights larger)."""
        out = {}
        for path, module in self.modules.items():
            pairs = [(p.detach().flatten(), p.grad.flatten()) for p in module.parameters() if p.grad is not None]
            if not pairs:
                out[path] = {"grad_norm": None, "grad_cos_param": None}
                continue
            w, g = torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs])
            out[path] = {"grad_norm": float(g.norm()), "grad_cos_param": float(F.cosine_similarity(g, w, dim=0))}
        return out


class _Trace(StepWatcher):
    """Records each step (a row of :func:`_record`, with the step, the learning rate, the total gradient's
    norm and the watched modules' sizes) until ``steps`` steps are done."""

    def __init__(self, trainer, steps: int, watch: list[str] = ()):
        self.trainer, self.steps, self.rows = trainer, steps, []
        self.params = [p for p in trainer.student.parameters() if p.requires_grad]
        self.sizes = _Sizes(trainer.student, list(watch)) if watch else None

    def before_backward(self, step: int, batch: dict, parts: dict) -> None:
        if step >= self.steps:
            raise _Done
        row = {"step": step, "lr": self.trainer.optimizer.param_groups[0]["lr"],
               "terms": {k: float(v.detach()) for k, v in parts.items()}}  # each term whole, weighted
        if self.sizes:
            row["watch"] = self.sizes.row()
        self.rows.append(row | _record(_split(self.trainer, parts), self.params))

    def after_backward(self, step: int, grad_norm) -> None:
        self.rows[-1]["total_gradnorm"] = None if grad_norm is None else float(grad_norm)
        if self.sizes:
            for path, g in self.sizes.grads().items():
                self.rows[-1]["watch"][path].update(g)


def trace(cfg_dict: dict, steps: int, log=print, watch: list[str] = (), watcher=None) -> dict:
    """The first ``steps`` steps of ``cfg_dict`` (trained in a scratch folder): {"rows": [per step], "ended": None
    or the NonFiniteLoss message}. ``watch``: module paths of the student whose sizes each row records.
    ``watcher(trainer, steps)``: another StepWatcher that fills ``.rows`` (and raises ``_Done`` when it has
    enough) instead of the default record."""
    ended = None
    if (cfg_dict.get("train") or {}).get("accumulate", 1) != 1:
        raise ValueError("step_trace records one forward per step: trace with train.accumulate=1")
    with tempfile.TemporaryDirectory() as scratch:
        cfg = dict(cfg_dict, run={**cfg_dict["run"], "out_dir": scratch, "name": "trace"})
        trainer = make_trainer(load_config(cfg), overwrite=True, log=lambda *_: None)
        for term in trainer.distiller.terms.values():
            term.keep_parts = True
        watcher = _Trace(trainer, steps, watch) if watcher is None else watcher(trainer, steps)
        trainer.watchers.append(watcher)
        try:
            trainer.fit()
        except _Done:
            pass
        except NonFiniteLoss as e:
            ended = str(e)
        finally:
            trainer.close()
    rows = watcher.rows
    log(f"{len(rows)} steps traced" + (f"; the run diverged: {ended}" if ended else ""))
    return {"rows": rows, "ended": ended}


def write(res: dict, path) -> None:
    """A trace of :func:`trace` to ``path`` (atomically): one JSON object per step, then ``{"ended": ...}``."""
    lines = [json.dumps(r) for r in res["rows"]] + [json.dumps({"ended": res["ended"]})]
    atomic_write_text("\n".join(lines) + "\n", Path(path))


def summary(rows: list[dict], window: int) -> str:
    """A markdown table of the trace by windows of ``window`` steps: each term's median gradient norm, the total's
    median and maximum, each pair's median cosine, the largest value of the first term (the task's own loss), whole
    when it is split into parts."""
    if not rows:
        return "(no steps traced)"
    terms, pairs = list(rows[0]["gradnorm"]), list(rows[0]["cosine"])
    whole = "terms" if "terms" in rows[0] else "values"  # traces written before parts were split keep no "terms"
    first = next(iter(rows[0][whole]))
    lines = ["| steps | " + " | ".join(f"{t} grad" for t in terms) + " | total grad (max) | "
             + " | ".join(f"cos {p}" for p in pairs) + f" | max {first} |",
             "|---|" + "---:|" * (len(terms) + 2 + len(pairs))]
    for lo in range(rows[0]["step"], rows[-1]["step"] + 1, window):
        part = [r for r in rows if lo <= r["step"] < lo + window]
        totals = [r["total_gradnorm"] for r in part if r.get("total_gradnorm") is not None]
        cells = [f"{statistics.median(r['gradnorm'][t] for r in part):.3g}" for t in terms]
        cells.append(f"{statistics.median(totals):.3g} ({max(totals):.3g})" if totals else "")
        cells += [f"{statistics.median(r['cosine'][p] for r in part):+.2f}" for p in pairs]
        cells.append(f"{max(r[whole][first] for r in part):.3g}")
        lines.append(f"| {part[0]['step']}-{part[-1]['step']} | " + " | ".join(cells) + " |")
    if "watch" in rows[0]:
        lines += ["", sizes_summary(rows, window)]
    return "\n".join(lines)


def sizes_summary(rows: list[dict], window: int) -> str:
    """A markdown table of the watched modules by windows of ``window`` steps: the median norm of an output row,
    the largest output entry, the parameters' norm at the window's last step, the median gradient norm and the
    median cosine of gradient and parameters."""
    paths = list(rows[0]["watch"])
    cols = ("out norm", "max out", "param norm", "grad", "cos grad~param")
    lines = ["| steps | " + " | ".join(f"{p} {c}" for p in paths for c in cols) + " |",
             "|---|" + "---:|" * (len(cols) * len(paths))]

    def median(part, p, key, form):
        xs = [r["watch"][p].get(key) for r in part]
        xs = [x for x in xs if x is not None]
        return format(statistics.median(xs), form) if xs else ""

    for lo in range(rows[0]["step"], rows[-1]["step"] + 1, window):
        part = [r for r in rows if lo <= r["step"] < lo + window]
        cells = []
        for p in paths:
            peaks = [r["watch"][p]["out_absmax"] for r in part if r["watch"][p]["out_absmax"] is not None]
            last = part[-1]["watch"][p]["param_norm"]
            cells += [median(part, p, "out_norm", ".3g"), f"{max(peaks):.3g}" if peaks else "",
                      "" if last is None else f"{last:.3g}", median(part, p, "grad_norm", ".3g"),
                      median(part, p, "grad_cos_param", "+.2f")]
        lines.append(f"| {part[0]['step']}-{part[-1]['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a run directory (its config.yaml is traced)")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--out", required=True, help="the trace, one JSON object per step, then the ending")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, key=value")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--window", type=int, default=25, help="steps per line of the printed summary")
    ap.add_argument("--watch", nargs="*", default=[], metavar="MODULE",
                    help="module paths of the student whose output and parameter sizes each step records")
    args = ap.parse_args(argv)
    config = Path(args.run_dir) / "config.yaml"
    if not config.is_file():
        ap.error(f"{config} not found: give a run directory (one that `wdistill train` or `distill` wrote)")
    torch.set_num_threads(args.threads)
    try:
        res = trace(apply_overrides(yaml.safe_load(config.read_text()), args.set), args.steps, watch=args.watch)
    except ValueError as e:  # ConfigError and FileLoadError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    write(res, args.out)
    print(summary(res["rows"], args.window))
    return 0


if __name__ == "__main__":
    sys.exit(main())
