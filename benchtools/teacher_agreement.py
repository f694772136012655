"""How much do an ensemble's teachers know that one teacher does not? Their test-set agreement.

A diagnosis for the ensemble results (BENCHMARK C): if the teachers are near copies of each
other, their mean adds little to distil. For each teacher run directory: its test top-1; for each
pair, the share of test images on which their top-1 predictions agree; the share on which all
agree; the share that at least one (and that every) teacher gets right; and the top-1 of the first
n teachers' mean logits (what the students' runs report) and mean distribution (what KD and WKD-L
distil) for n = 1, 2, 4, ...

    python benchtools/teacher_agreement.py runs/bench/fmnist-kd-v1/teacher/seed{0,1,2,3}
"""
import argparse
from pathlib import Path

import torch

from wdistill import models
from wdistill.cli_front import resolve_checkpoint, student_weights
from wdistill.data.build import build_loaders
from wdistill.engine.rundir import run_config
from wdistill.io import load_dict
from wdistill.models import load_checkpoint


@torch.no_grad()
def test_logits(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of ``run_dir``'s trained model on its own test split, and the labels."""
    cfg = run_config(run_dir)
    path, _ = resolve_checkpoint(run_dir, None)
    sd, _, arch, kwargs = student_weights(load_dict(path, "cpu", what="teacher checkpoint"))
    data = build_loaders(cfg.data, seed=cfg.run.seed, device=torch.device("cpu"), log=lambda m: None)
    model = models.build(arch or cfg.student.model, data.num_classes, data.channels, kwargs or cfg.student.kwargs)
    load_checkpoint(model, sd, name=arch or cfg.student.model)
    model.eval()
    batches = list(data.test_loader)
    return torch.cat([model(b["image"]) for b in batches]), torch.cat([b["target"] for b in batches])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="teacher run directories (same data)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logits, y = [], None
    for run in args.runs:
        out, target = test_logits(run)
        if y is not None and not torch.equal(target, y):
            raise SystemExit(f"{run} was tested on other data than {args.runs[0]}: pass runs of one data set")
        logits.append(out)
        y = target
        print(f"{run}: test top-1 {100 * (out.argmax(1) == y).double().mean():.2f}")
    preds = torch.stack([x.argmax(1) for x in logits])
    pct = lambda mask: 100 * mask.double().mean()  # noqa: E731
    for i in range(len(preds)):
        for j in range(i + 1, len(preds)):
            print(f"teachers {i} and {j} agree on {pct(preds[i] == preds[j]):.2f}% of the test images")
    right = preds == y
    print(f"all agree on {pct((preds == preds[0]).all(0)):.2f}%; at least one is right on "
          f"{pct(right.any(0)):.2f}%, all are right on {pct(right.all(0)):.2f}%")
    n = 1
    while n <= len(logits):
        mean_logits = torch.stack(logits[:n]).mean(0)
        mean_probs = torch.stack([x.softmax(1) for x in logits[:n]]).mean(0)
        print(f"first {n}: top-1 of the mean logits {pct(mean_logits.argmax(1) == y):.2f}, "
              f"of the mean distribution {pct(mean_probs.argmax(1) == y):.2f}")
        n *= 2


if __name__ == "__main__":
    main()
