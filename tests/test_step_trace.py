"""benchtools/step_trace.py, the per-step trace behind protocol D's account of WKD-L's divergence: its figures
must be those of the step the engine took. The check that can fail: the total gradient is the sum of the
terms' gradients, so its norm, as the engine's loop measured it, must equal the one the recorded norms and
cosines imply, ||sum g_i||^2 = sum_i ||g_i||^2 + 2 sum_{i<j} cos_ij ||g_i|| ||g_j||; a term left out, a part
weighted wrongly (WKD-L split in two) or a norm from another step breaks it."""
from __future__ import annotations

import math

import pytest
import torch.nn.functional as F

from benchtools.step_trace import trace

pytestmark = pytest.mark.usefixtures("one_thread")
SHIPPED = "wdistill/assets/demo_teacher_resnet20.pt"


def _cfg(tmp_path, loss):
    return {"run": {"out_dir": str(tmp_path), "name": "x"},
            "data": {"name": "fmnist_sample", "train_subset": 200, "test_subset": 50, "batch_size": 50},
            "student": {"model": "resnet8"}, "teacher": {"model": "resnet20", "checkpoint": SHIPPED},
            "optim": {"epochs": 2, "lr": 0.05}, "loss": loss, "train": {"progress": False}}


def test_the_trace_is_the_engines_step_and_splits_wkd_l(tmp_path):
    res = trace(_cfg(tmp_path, [{"name": "ce"}, {"name": "wkd_l", "weight": 0.5, "lambda_l": 30.0}]), steps=6,
                log=lambda m: None)
    rows = res["rows"]
    assert res["ended"] is None and [r["step"] for r in rows] == list(range(6))  # across the epoch boundary (4)
    for r in rows:
        assert set(r["gradnorm"]) == {"ce", "wkd_l target", "wkd_l wd"} and r["lr"] == 0.05
        g, names = r["gradnorm"], list(r["gradnorm"])
        implied = sum(g[n] ** 2 for n in names) + 2 * sum(
            r["cosine"][f"{a} ~ {b}"] * g[a] * g[b] for i, a in enumerate(names) for b in names[i + 1:])
        assert math.sqrt(implied) == pytest.approx(r["total_gradnorm"], rel=1e-3)
        assert r["values"]["wkd_l target"] > 0
        # WKD's weight decays to 0 at the last epoch (the official schedule), and so does the traced part
        assert (r["values"]["wkd_l wd"] > 0) == (r["step"] < 4)
    assert not (tmp_path / "x").exists()  # a scratch run: the traced config's directory is not touched


@pytest.fixture
def exploding(plant_term):
    """A planted term: CE, times NaN from step 2 on."""
    def exploding_later(student, batch):
        ce = F.cross_entropy(student["logits"], batch["target"])
        return ce * float("nan") if batch["step"] >= 2 else ce
    return plant_term("exploding_later", exploding_later)


def test_a_diverging_run_ends_the_trace_with_the_engines_message(tmp_path, exploding):
    res = trace(_cfg(tmp_path, [{"name": "ce"}, {"name": "exploding_later"}]), steps=6, log=lambda m: None)
    assert "became non-finite" in res["ended"] and "'exploding_later'" in res["ended"]
    steps = [r["step"] for r in res["rows"]]
    assert steps[:3] == [0, 1, 2] and math.isnan(res["rows"][2]["values"]["exploding_later"])
    assert all(math.isfinite(v) for r in res["rows"][:2] for v in r["gradnorm"].values())


def test_the_summary_by_hand():
    from benchtools.step_trace import summary

    def row(step, a, b, cos, total, loss):
        return {"step": step, "values": {"det": loss, "kd": 0.1}, "gradnorm": {"det": a, "kd": b},
                "cosine": {"det ~ kd": cos}, "total_gradnorm": total}
    rows = [row(0, 1.0, 2.0, 0.5, 3.0, 4.0), row(1, 3.0, 4.0, 0.1, 9.0, 2.0), row(2, 2.0, 6.0, -0.3, 5.0, 1.0),
            row(3, 10.0, 1.0, 0.9, 11.0, 7.0)]
    table = summary(rows, window=3).splitlines()
    assert table[0] == "| steps | det grad | kd grad | total grad (max) | cos det ~ kd | max det |"
    assert table[2] == "| 0-2 | 2 | 4 | 5 (9) | +0.10 | 4 |"  # medians of three, the max of the task loss
    assert table[3] == "| 3-3 | 10 | 1 | 11 (11) | +0.90 | 7 |"


def test_the_summary_reads_the_task_loss_whole_when_it_is_split():
    from benchtools.step_trace import summary
    rows = [{"step": i, "terms": {"det": 3.0 + i, "kd": 0.1}, "values": {"det rpn": 1.0, "det roi": 2.0 + i, "kd": 0.1},
             "gradnorm": {"det rpn": 1.0, "det roi": 2.0, "kd": 1.0}, "cosine": {}, "total_gradnorm": 2.0}
            for i in range(2)]
    table = summary(rows, window=2).splitlines()
    assert table[0].endswith("| max det |") and table[2].endswith("| 4 |")  # det whole (3, 4), not its part
