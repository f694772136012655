"""How the loss terms of finished runs pull on the student: per-term gradient norms and cosines.

Loads each run's final state (last.pt), runs 10 training batches in training mode and takes the
gradient of every weighted term with respect to the student's parameters. Prints, per run, the
mean per-batch gradient norm of each term and the mean cosine between every pair of terms. A term
that fights the labels shows a negative cosine with CE; a term that dominates shows a much larger
norm.

    python benchtools/gradient_probe.py runs/bench/fmnist-kd-v1/crd/seed0 runs/bench/fmnist-kd-v1/kd/seed0

Nothing is written to the run directories (the probe's own scratch run goes to a temporary folder).
"""
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from wdistill.config import load_config
from wdistill.engine import Trainer
from wdistill.io import safe_load

BATCHES = 10


def probe(run_dir: Path, scratch: str) -> tuple[dict, dict]:
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw["run"] = {**raw["run"], "out_dir": scratch, "name": run_dir.parent.name}
    trainer = Trainer(load_config(raw), log=lambda *_: None, overwrite=True)
    trainer.setup_terms()
    state = safe_load(run_dir / "last.pt")  # weights only: nothing in a file runs code
    trainer.distiller.load_state_dict(state["distiller"], strict=False)
    trainer.distiller.train()
    params = [p for p in trainer.student.parameters() if p.requires_grad]
    grads: dict[str, list[torch.Tensor]] = {}
    batches = iter(trainer.train_loader)
    epochs = trainer.cfg.optim.epochs
    for step in range(BATCHES):
        batch = trainer._prepare(next(batches))
        batch.update(epoch=epochs - 1, num_epochs=epochs, step=step)
        _, parts, _ = trainer.distiller(batch)
        for name, value in parts.items():
            g = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            grads.setdefault(name, []).append(torch.cat([(x if x is not None else torch.zeros_like(p)).flatten()
                                                         for x, p in zip(g, params)]))
    stacked = {n: torch.stack(v) for n, v in grads.items()}
    norms = {n: float(g.norm(dim=1).mean()) for n, g in stacked.items()}
    names = list(stacked)
    cosines = {f"{a}~{b}": float(F.cosine_similarity(stacked[a], stacked[b], dim=1).mean())
               for i, a in enumerate(names) for b in names[i + 1:]}
    trainer.close()
    return norms, cosines


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        print("| run | gradient norm per batch | cosine |\n|---|---|---|")
        for arg in sys.argv[1:]:
            norms, cosines = probe(Path(arg), scratch)
            print(f"| {arg} | " + ", ".join(f"{k} {v:.3f}" for k, v in norms.items()) + " | "
                  + ", ".join(f"{k} {v:+.2f}" for k, v in cosines.items()) + " |")


if __name__ == "__main__":
    main()
