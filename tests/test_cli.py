"""CLI commands beyond train/eval/export (those are in test_engine.py)."""
import re
import subprocess
import sys

import torch
import yaml

from wdistill import cli, losses, models
from wdistill.cli import main


def test_cost_matrix_command_builds_a_cost_the_wkd_term_loads(tmp_path, capsys):
    torch.manual_seed(0)
    teacher = models.create("resnet8", num_classes=10, in_channels=1)
    torch.save({"model": teacher.state_dict()}, tmp_path / "t.pt")
    cfg = {"run": {"out_dir": str(tmp_path)}, "data": {"name": "fmnist_sample", "train_subset": 400},
           "student": {"model": "resnet8"}, "teacher": {"model": "resnet8", "checkpoint": str(tmp_path / "t.pt")},
           "loss": [{"name": "wkd_l"}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cost.pt"
    assert cli.main(["cost-matrix", str(tmp_path / "c.yaml"), "--kappa", "2", "-o", str(out)]) == 0
    cost = torch.load(out)
    assert cost.shape == (10, 10)
    assert torch.allclose(cost, cost.T, atol=1e-5)
    assert cost.diagonal().abs().max() < 1e-5
    # c = 1 - exp(-kappa (1 - CKA)) with CKA in [0, 1] bounds the off-diagonal entries
    assert cost.min() >= -1e-6 and cost.max() <= 1 - torch.exp(torch.tensor(-2.0)) + 1e-6
    term = losses.create("wkd_l", cost=str(out))
    assert torch.equal(term._build_cost(None), cost)
    assert "use it with `cost:" in capsys.readouterr().out


def test_cost_matrix_without_teacher_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"student": {"model": "resnet8"}}))
    assert cli.main(["cost-matrix", str(tmp_path / "c.yaml")]) == 2
    assert "needs exactly one 'teacher:' section" in capsys.readouterr().err


def test_cost_matrix_checks_the_teacher_before_the_data_loads(tmp_path, capsys, monkeypatch):
    """A missing teacher checkpoint or a typo'd teacher name is refused before the data loads."""
    def no_data(*args, **kwargs):
        raise AssertionError("the data loaded before the teacher was checked")

    monkeypatch.setattr("wdistill.workflows.cost_matrix.build_loaders", no_data)
    for teacher, message in (({"model": "resnet8", "checkpoint": str(tmp_path / "none.pt")},
                              "teacher.checkpoint .*none.pt.* does not exist"),
                             ({"model": "resnet9", "checkpoint": str(tmp_path / "none.pt")},
                              "teacher.model: unknown model 'resnet9'")):
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({"student": {"model": "resnet8"}, "teacher": teacher}))
        assert cli.main(["cost-matrix", str(tmp_path / "c.yaml")]) == 2
        assert re.search(message, capsys.readouterr().err)


def test_bench_says_where_the_benchmarks_went(capsys):
    assert main(["bench", "accuracy", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "python -m benchtools accuracy --quick" in err and "docs/benchmarks.md" in err


def test_python_dash_m_wdistill_is_the_command(tmp_path):
    """`python -m wdistill` (and so `torchrun -m wdistill`) runs the command line, as `python -m wdistill.cli`."""
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"student": {"model": "resnet9"}}))
    for module in ("wdistill", "wdistill.cli"):
        done = subprocess.run([sys.executable, "-m", module, "config", "check", str(tmp_path / "c.yaml")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "unknown model 'resnet9'" in done.stderr, (module, done.stderr)
