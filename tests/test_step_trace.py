"""benchtools/step_trace.py, the per-step trace behind protocol D's account of WKD-L's divergence: its figures
must be those of the step the engine took. The check that can fail: the total gradient is the sum of the
terms' gradients, so its norm, as the engine's loop measured it, must equal the one the recorded norms and
cosines imply, ||sum g_i||^2 = sum_i ||g_i||^2 + 2 sum_{i<j} cos_ij ||g_i|| ||g_j||; a term left out, a part
weighted wrongly (WKD-L split in two) or a norm from another step breaks it."""
from __future__ import annotations

import math

import pytest
import torch
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


def test_watched_sizes_by_hand():
    """--watch's figures for a module with known weights and input: the mean row norm of its output, its largest
    entry, the norm of its parameters; the last forward of the step counts, and a step without one records None."""
    from benchtools.step_trace import _Sizes
    lin = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        lin.bias.copy_(torch.tensor([0.0, -2.0]))
    model = torch.nn.Sequential(lin)
    sizes = _Sizes(model, ["0"])
    model(torch.ones(1, 2))  # an earlier forward of the same step: replaced by the last
    model(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))  # rows [3, 6] (norm sqrt 45) and [0, 0] (norm 0)
    row = sizes.row()["0"]
    assert row["out_norm"] == pytest.approx(math.sqrt(45) / 2) and row["out_absmax"] == 6.0
    assert row["param_norm"] == pytest.approx(3.0)  # sqrt(1 + 4 + 4)
    assert sizes.row()["0"]["out_norm"] is None  # no forward since
    assert sizes.grads()["0"] == {"grad_norm": None, "grad_cos_param": None}  # no backward yet
    lin.weight.grad = torch.tensor([[-1.0, 0.0], [0.0, 0.0]])  # against the first weight: the step grows it
    lin.bias.grad = torch.tensor([0.0, 1.0])
    g = sizes.grads()["0"]  # |g| = sqrt 2; <g, w> = -1 - 2 = -3; cos = -3 / (sqrt 2 * 3)
    assert g["grad_norm"] == pytest.approx(math.sqrt(2)) and g["grad_cos_param"] == pytest.approx(-1 / math.sqrt(2))


def test_the_sizes_summary_by_hand():
    from benchtools.step_trace import sizes_summary

    def row(step, norm, peak, param, grad, cos):
        return {"step": step, "watch": {"fc": {"out_norm": norm, "out_absmax": peak, "param_norm": param,
                                               "grad_norm": grad, "grad_cos_param": cos}}}
    rows = [row(0, 1.0, 5.0, 2.0, 0.5, -0.1), row(1, 3.0, 2.0, 2.5, 1.5, 0.3), row(2, None, None, 3.0, None, None)]
    table = sizes_summary(rows, window=2).splitlines()
    assert table[0] == "| steps | fc out norm | fc max out | fc param norm | fc grad | fc cos grad~param |"
    assert table[2] == "| 0-1 | 2 | 5 | 2.5 | 1 | +0.10 |"  # medians of two, the largest entry, the last norm
    assert table[3] == "| 2-2 |  |  | 3 |  |  |"  # a step without a forward or backward of the module


def test_the_trace_watches_the_students_modules(tmp_path):
    """The watched module is the student's own: at step 0 (sizes read after the forward, before the update) its
    parameters are the freshly built student's."""
    from wdistill.config import load_config
    from wdistill.engine import make_trainer
    cfg = _cfg(tmp_path, [{"name": "ce"}, {"name": "kd"}])
    res = trace(cfg, steps=2, log=lambda m: None, watch=["fc"])
    fresh = make_trainer(load_config(dict(cfg, run={"out_dir": str(tmp_path / "f"), "name": "f"})),
                         log=lambda *_: None)
    expected = float(torch.cat([p.detach().flatten() for p in fresh.student.fc.parameters()]).norm())
    fresh.close()
    first, second = (r["watch"]["fc"] for r in res["rows"])
    assert first["param_norm"] == pytest.approx(expected, rel=1e-6) and second["param_norm"] != first["param_norm"]
    assert 0 < first["out_norm"] and first["out_absmax"] > 0
    assert all(0 < r["watch"]["fc"]["grad_norm"] < r["total_gradnorm"] for r in res["rows"])  # a share of the step's
    with pytest.raises(ValueError, match="no module of that name"):
        trace(cfg, steps=1, log=lambda m: None, watch=["no.such"])


def test_trace_plot_series_ends_where_the_run_ran_away(tmp_path):
    """benchtools/trace_plot.py reads a watched module's values step by step and leaves out what is not finite or
    above the cap (a runaway), and names the fix when a trace did not watch the module."""
    import json

    from benchtools.trace_plot import main, series
    rows = [{"step": s, "watch": {"fc": {"param_norm": v, "out_absmax": 1.0}}}
            for s, v in enumerate([2.0, 3.0, None, 5e9, float("inf")])]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n" + json.dumps({"ended": "non-finite"}) + "\n")
    assert series(path, "fc", "param_norm", cap=1000.0) == ([0, 1], [2.0, 3.0])
    with pytest.raises(ValueError, match="--watch head"):
        series(path, "head", "param_norm", cap=1000.0)
    assert main(["--module", "fc", "--out", str(tmp_path / "f.png"), f"a={path}"]) == 0
    assert (tmp_path / "f.png").stat().st_size > 0


def test_trace_plot_table_by_hand(tmp_path):
    import json

    from benchtools.trace_plot import table

    def write(name, rows):
        path = tmp_path / name
        path.write_text("\n".join(json.dumps({"step": s, "watch": {"fc": w}}) for s, w in enumerate(rows)) + "\n")
        return path

    def w(norm, grad, cos, out):
        return {"param_norm": norm, "grad_norm": grad, "grad_cos_param": cos, "out_absmax": out}
    calm = write("a.jsonl", [w(1.0, 2.0, 0.1, 5.0), w(1.5, 4.0, 0.3, 7.0), w(2.0, 1.0, -0.2, 3.0)])
    wild = write("b.jsonl", [w(1.0, 2.0, 0.1, 5.0), w(float("nan"), 9.0, 0.0, 1e9)])
    lines = table({"calm": calm, "wild": wild}, "fc", [0, 2, 3], cap=1000.0).splitlines()
    assert lines[0] == ("| trace | param norm at steps 0 / 2 / 3 | steps 0-1: grad, cos grad~param, max out "
                        "| steps 2-2: grad, cos grad~param, max out |")
    assert lines[2] == "| calm | 1.00 / 2.00 / - | 3.00, +0.200, 7 | 1.00, -0.200, 3 |"  # medians of two; no step 3
    assert lines[3] == "| wild | 1.00 / - / - | diverged | - |"


def test_the_command_names_a_bad_module_or_directory_without_a_traceback(tmp_path, capsys):
    import yaml

    from benchtools.step_trace import main
    cfg = _cfg(tmp_path, [{"name": "ce"}])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "t.jsonl"
    assert main([str(run), "--steps", "1", "--out", str(out), "--watch", "no.such"]) == 2
    assert "--watch no.such: the student has no module of that name" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "missing"), "--steps", "1", "--out", str(out)])
    assert e.value.code == 2 and "config.yaml not found" in capsys.readouterr().err
    assert main([str(run), "--steps", "2", "--out", str(out), "--watch", "fc"]) == 0
    assert out.read_text().count('"watch"') == 2
