"""`wdistill plot RUN_DIR`: training curves from a run's metrics.jsonl."""
from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: RUN_DIR must be a run directory written by "
                                "`wdistill train/distill` (it holds metrics.jsonl after the first epoch)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} holds no epochs yet: plot again after the first epoch ends")
    return rows


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Two panels: every weighted loss term (``train_<term>``) and the total per epoch (log scale),
    and train/test top-1 per epoch. Written to ``output`` (default ``RUN_DIR/curves.png``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    epochs = [r["epoch"] for r in rows]
    loss_keys = [k for k in rows[0] if k.startswith("train_") and k != "train_top1"]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k in loss_keys:
        vals = [r.get(k) for r in rows]
        style = {"lw": 2.0, "color": "black"} if k == "train_loss" else {"lw": 1.2}
        # weighted terms can be exactly 0 (AB/FSP main stage): a log axis cannot show them
        ax_l.plot(epochs, [v if v and v > 0 else float("nan") for v in vals], label=k[len("train_"):], **style)
    ax_l.set_yscale("log")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("weighted loss (train mean)")
    ax_l.legend(fontsize=7)
    for key, label in (("train_top1", "train"), ("test_top1", "test")):
        pts = [(r["epoch"], r[key]) for r in rows if key in r]
        if pts:
            ax_a.plot(*zip(*pts), marker="o", ms=3, label=label)
    ax_a.set_xlabel("epoch")
    ax_a.set_ylabel("top-1 (%)")
    ax_a.legend(fontsize=7)
    fig.suptitle(str(run_dir), fontsize=8)
    fig.tight_layout()
    out = Path(output) if output else Path(run_dir) / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
