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

from wdistill import models
from wdistill.config import RunConfig
from wdistill.data.build import build_loaders
from wdistill.data.views import View
from wdistill.engine import Trainer, rundir
from wdistill.engine.build import check_buildable, resolve_device
from wdistill.errors import ConfigError
from wdistill.io import atomic_write_text, load_dict
from wdistill.models import FeatureTap


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


def linear_probe(run_dir: str | Path, l2: float = 1e-4, which: str | None = None, device: str = "cpu",
                 max_iter: int = 500) -> dict:
    """Fit and score the linear probe of ``run_dir``'s student; returns the ``linear`` record."""
    run_dir = Path(run_dir)
    cfg = rundir.run_config(run_dir)
    path, _ = rundir.resolve_checkpoint(run_dir, which)
    sd, _, arch, kwargs = rundir.student_weights(load_dict(path, "cpu", what="student checkpoint"))
    check_buildable(arch or cfg.student.model, path)
    dev = resolve_device(device)
    data = build_loaders(cfg.data, seed=cfg.run.seed, device=dev, log=lambda m: None)
    model = models.create(arch or cfg.student.model, data.num_classes, data.channels,
                          **(kwargs or cfg.student.kwargs))
    models.load_checkpoint(model, sd, name=arch or cfg.student.model)
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
    run_dir = Path(run_dir)
    cfg = rundir.run_config(run_dir)
    student = run_dir / rundir.STUDENT
    if not student.is_file():
        raise ConfigError(f"{run_dir} has no student.pt (the run has not finished): finish it with --resume first")
    data = cfg.model_dump(mode="json")
    data["run"].update(out_dir=str(run_dir), name="finetune")
    data["student"]["checkpoint"] = str(student)
    data.update(teacher=None, teachers=None, loss=[{"name": "ce"}])
    data["optim"].update(epochs=epochs, lr=lr, schedule="cosine", warmup_epochs=0)
    ft_cfg = RunConfig.model_validate(data)
    again = resume and (run_dir / "finetune" / rundir.LAST).is_file()
    summary = Trainer(ft_cfg, resume=again, log=log).fit()
    return {"top1": summary["final_top1"], "epochs": epochs, "lr": lr, "run": str(run_dir / "finetune")}


def record(run_dir: str | Path, key: str, result: dict) -> dict:
    """Merge ``{key: result}`` into ``run_dir/probe.json`` (atomic write)."""
    path = Path(run_dir) / "probe.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = result
    atomic_write_text(json.dumps(data, indent=2) + "\n", path)
    return data


def probe_run(run_dir: str | Path, l2: float = 1e-4, which: str | None = None, device: str = "cpu",
              linear: bool = True, finetune_epochs: int | None = None, lr: float = 0.01,
              resume: bool = False) -> dict:
    """``wdistill probe``: the linear probe and/or the fine-tuning of a run, each recorded in
    ``RUN_DIR/probe.json``; returns that file's content."""
    if l2 <= 0:
        raise ConfigError(f"--l2 must be > 0, got {l2}")
    out = {}
    if linear:
        out = record(run_dir, "linear", linear_probe(run_dir, l2, which, device))
    if finetune_epochs:
        out = record(run_dir, "finetune", finetune(run_dir, finetune_epochs, lr, resume))
    return out
