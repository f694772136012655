"""`wdistill probe RUN_DIR`: how good is the student's representation (CRD Figure 3, WCoRD 4.2).

Linear probe: the student is frozen; its embedding (the ``embed`` tap, the pooled vector before
the classifier) of every un-augmented training image, on the student's own view, is standardised
with the training mean and std, and a multinomial logistic regression is fitted on it:

    minimise  mean_i CE(W x_i + b, y_i) + (l2 / 2) ||W||^2        (the bias is not penalised)

by full-batch L-BFGS in float64 (strong-Wolfe line search) from W = 0, b = 0: convex, so the
result does not depend on the seed, and deterministic. This is scikit-learn's
``LogisticRegression(C=1 / (l2 * n_train))`` objective. The probe is scored on the test split.

``--finetune N``: full fine-tuning, CRD's other transfer measure: a new run in
``RUN_DIR/finetune`` starts from the run's student weights and trains every parameter by
cross-entropy for N epochs (the run's data, view and augmentation; SGD at ``--lr``, cosine
schedule); it resumes like any run. Results go to ``RUN_DIR/probe.json`` (written atomically,
one key per measure, an existing file's other keys kept).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from wdistill.engine.checkpoint import atomic_write_text
from wdistill.config.schema import ConfigError, RunConfig


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-4,
                 max_iter: int = 500, tol: float = 1e-9, progress: bool | None = None):
    """(W, b) of the L2-penalised multinomial logistic regression above (x already standardised)."""
    x = x.double()
    n, d = x.shape
    W = torch.zeros(num_classes, d, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=tol * 1e-3,
                            history_size=20, line_search_fn="strong_wolfe")
    bar = tqdm(total=max_iter, desc="linear probe (L-BFGS)", leave=False,
               disable=None if progress is None else not progress)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ W.T + b, y) + 0.5 * l2 * (W * W).sum()
        loss.backward()
        bar.update(1)
        return loss

    opt.step(closure)
    bar.close()
    return W.detach(), b.detach()


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Every tensor standardised with the training features' mean and std (constant columns: std 1)."""
    mean, std = train.mean(0), train.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return [(t - mean) / std for t in (train, *others)]


@torch.no_grad()
def embeddings(model, view, taps, batches, desc: str, total: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding rows, labels) of every batch, the model in eval mode on its own view."""
    from wdistill.models import FeatureTap

    model.eval()
    tap = FeatureTap(model, taps)
    xs, ys = [], []
    try:
        for batch in tqdm(batches, desc=desc, total=total, leave=False, disable=None):
            out = tap(view(batch["image"]))
            try:
                e = out["embed"]
            except ValueError as err:
                raise ConfigError(f"the student has no embedding tap ({err}): set student.taps.embed in the run's "
                                  "config, e.g. embed: 'fc:in' (the input of the classifier; `wdistill inspect "
                                  "MODEL` lists the module paths)") from None
            xs.append(e.double().cpu())
            ys.append(batch["target"].cpu())
    finally:
        tap.remove()
    return torch.cat(xs), torch.cat(ys)


def run_config(run_dir: Path) -> RunConfig:
    from wdistill.config.schema import load_config

    path = run_dir / "config.yaml"
    if not run_dir.is_dir() or not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml): pass the directory "
                          "`wdistill train/distill` wrote")
    return load_config(path)


def linear_probe(run_dir: str | Path, l2: float = 1e-4, which: str | None = None, device: str = "cpu",
                 max_iter: int = 500) -> dict:
    """Fit and score the linear probe of ``run_dir``'s student; returns the ``linear`` record."""
    from wdistill import models
    from wdistill.cli_front import resolve_checkpoint, student_weights
    from wdistill.data.build import build_loaders
    from wdistill.data.views import View
    from wdistill.engine.build import resolve_device
    from wdistill.engine.checkpoint import load
    from wdistill.models.weights import load_checkpoint

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    path, _ = resolve_checkpoint(run_dir, which)
    sd, _, arch, kwargs = student_weights(load(path, "cpu", what="student checkpoint"))
    dev = resolve_device(device)
    data = build_loaders(cfg.data, seed=cfg.run.seed, device=dev, log=lambda m: None)
    model = models.build(arch or cfg.student.model, data.num_classes, data.channels, kwargs or cfg.student.kwargs)
    load_checkpoint(model, sd, name=arch or cfg.student.model)
    model.to(dev)
    view = View(cfg.student.view).to(dev)
    x_tr, y_tr = embeddings(model, view, cfg.student.taps, data.plain_batches(), "probe: training embeddings")
    x_te, y_te = embeddings(model, view, cfg.student.taps, data.test_loader, "probe: test embeddings")
    x_tr, x_te = standardise(x_tr, x_te)
    W, b = fit_logistic(x_tr, y_tr, data.num_classes, l2, max_iter)
    acc = lambda x, y: 100.0 * float(((x @ W.T + b).argmax(1) == y).double().mean())  # noqa: E731
    return {"top1": acc(x_te, y_te), "train_top1": acc(x_tr, y_tr), "l2": l2, "solver": "lbfgs",
            "features": int(x_tr.shape[1]), "train_images": len(y_tr), "test_images": len(y_te),
            "checkpoint": str(path), "view": None if cfg.student.view is None else cfg.student.view.name}


def finetune(run_dir: str | Path, epochs: int, lr: float = 0.01, resume: bool = False, log=print) -> dict:
    """Fine-tune every parameter of the run's student by CE for ``epochs`` in ``run_dir/finetune``."""
    from wdistill.engine import Trainer

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    student = run_dir / "student.pt"
    if not student.is_file():
        raise ConfigError(f"{run_dir} has no student.pt (the run has not finished): finish it with --resume first")
    data = cfg.model_dump(mode="json")
    data["run"].update(out_dir=str(run_dir), name="finetune")
    data["student"]["checkpoint"] = str(student)
    data.update(teacher=None, teachers=None, loss=[{"name": "ce"}])
    data["optim"].update(epochs=epochs, lr=lr, schedule="cosine", warmup_epochs=0)
    ft_cfg = RunConfig.model_validate(data)
    again = resume and (run_dir / "finetune" / "last.pt").is_file()
    summary = Trainer(ft_cfg, resume=again, log=log).fit()
    return {"top1": summary["final_top1"], "epochs": epochs, "lr": lr, "run": str(run_dir / "finetune")}


def record(run_dir: str | Path, key: str, result: dict) -> dict:
    """Merge ``{key: result}`` into ``run_dir/probe.json`` (atomic write)."""
    path = Path(run_dir) / "probe.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = result
    atomic_write_text(json.dumps(data, indent=2) + "\n", path)
    return data


def cmd_probe(args) -> int:
    if args.l2 <= 0:
        raise ConfigError(f"--l2 must be > 0, got {args.l2}")
    out = {}
    if not args.no_linear:
        out = record(args.run_dir, "linear", linear_probe(args.run_dir, args.l2, args.which, args.device))
    if args.finetune:
        out = record(args.run_dir, "finetune", finetune(args.run_dir, args.finetune, args.lr, args.resume))
    print(json.dumps(out, indent=2))
    return 0


def add_probe_parser(sub) -> None:
    from wdistill.cli import positive_int

    s = sub.add_parser("probe", help="linear probe (and --finetune) of a run's student embedding, "
                                     "written to RUN_DIR/probe.json",
                       description=__doc__.split("\n", 1)[1].strip(),
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    s.add_argument("run_dir", help="a run directory written by `wdistill train/distill`")
    s.add_argument("--l2", type=float, default=1e-4, help="L2 penalty of the probe's weights (default 1e-4)")
    s.add_argument("--which", choices=["student", "best", "last"], default=None,
                   help="which weights of the run (default student.pt, the final epoch)")
    s.add_argument("--finetune", type=positive_int, default=None, metavar="N",
                   help="also fine-tune the whole student by cross-entropy for N epochs (RUN_DIR/finetune)")
    s.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (cosine schedule)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted fine-tuning run")
    s.add_argument("--no-linear", action="store_true", help="skip the linear probe (with --finetune)")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_probe)
