"""`wdistill probe`: the torch logistic regression against scikit-learn on the same features, and
the command end to end (linear probe on the student's view, fine-tuning, probe.json, errors)."""
import json

import pytest
import torch

from wdistill import cli
from wdistill.config import load_config
from wdistill.engine import Trainer
from wdistill.errors import ConfigError
from wdistill.workflows.probe import fit_logistic, standardise


def test_logistic_regression_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(0)
    n, d, c = 300, 12, 4
    centres = torch.randn(c, d, generator=g, dtype=torch.float64) * 1.5
    y = torch.randint(0, c, (n,), generator=g)
    x = centres[y] + torch.randn(n, d, generator=g, dtype=torch.float64) * 2
    x_test = centres[y[:100]] + torch.randn(100, d, generator=g, dtype=torch.float64) * 2
    x, x_test = standardise(x, x_test)
    for l2 in (1e-2, 1e-4):
        W, b = fit_logistic(x, y, c, l2=l2, progress=False)
        ref = sklearn.LogisticRegression(C=1.0 / (l2 * n), tol=1e-12, max_iter=10000).fit(x.numpy(), y.numpy())
        assert torch.allclose(W, torch.as_tensor(ref.coef_), atol=2e-4), (W - torch.as_tensor(ref.coef_)).abs().max()
        # scikit-learn's multinomial intercepts are fixed only up to a common shift
        shift = torch.as_tensor(ref.intercept_) - b
        assert torch.allclose(shift, shift.mean().expand(c), atol=2e-4)
        pred = (x_test @ W.T + b).argmax(1).numpy()
        assert (pred == ref.predict(x_test.numpy())).all()


def test_logistic_regression_on_a_hand_case():
    """Two points, one feature, no penalty to speak of: the optimum separates them, so both are
    classified correctly and the weight grows with 1/l2 (a hand check of sign and scale)."""
    x = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    W1, b1 = fit_logistic(x, y, 2, l2=1e-1, progress=False)
    W2, _ = fit_logistic(x, y, 2, l2=1e-3, progress=False)
    # symmetric optimum W = [[-w], [w]], b = 0; the loss is -log sigmoid(2w) + l2 w^2, whose
    # derivative vanishes where l2 w = 1 - sigmoid(2w)
    w = W1[1, 0]
    assert torch.allclose(W1[0, 0], -w) and torch.allclose(b1, torch.zeros(2, dtype=torch.float64), atol=1e-8)
    assert abs(1e-1 * w - (1 - torch.sigmoid(2 * w))) < 1e-7
    assert W2[1, 0] > w > 0


def _run(tmp_path, **over):
    cfg = {"run": {"name": "r", "out_dir": str(tmp_path / "runs"), "seed": 0},
           "data": {"name": "fmnist_sample", "train_subset": 256, "test_subset": 128, "batch_size": 64},
           "student": {"model": "resnet8", "view": {"name": "downsample", "factor": 2}},
           "optim": {"epochs": 1, "lr": 0.05, "schedule": "constant"},
           "train": {"progress": False, "max_steps": 4}}
    cfg.update(over)
    Trainer(load_config(cfg), log=lambda m: None).fit()
    return tmp_path / "runs" / "r"


def test_probe_command_writes_probe_json(tmp_path, capsys, monkeypatch):
    run = _run(tmp_path)
    sizes = []
    import wdistill.workflows.probe as probe
    original = probe.embeddings

    def spy(model, view, *a, **k):
        model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[-1]))
        return original(model, view, *a, **k)

    monkeypatch.setattr(probe, "embeddings", spy)
    assert cli.main(["probe", str(run), "--finetune", "1", "--lr", "0.01"]) == 0
    capsys.readouterr()
    result = json.loads((run / "probe.json").read_text())
    lin, ft = result["linear"], result["finetune"]
    assert set(sizes) == {14}  # the probe reads the student on its own (downsampled) view
    assert lin["train_images"] == 256 and lin["test_images"] == 128 and lin["features"] == 64
    assert 10.0 < lin["top1"] <= 100.0 and lin["train_top1"] >= lin["top1"] - 20
    assert (run / "finetune" / "summary.json").is_file()
    assert ft["top1"] == json.loads((run / "finetune" / "summary.json").read_text())["final_top1"]
    ft_cfg = load_config(run / "finetune" / "config.yaml")
    assert ft_cfg.student.checkpoint == str(run / "student.pt") and ft_cfg.student.view.name == "downsample"
    # the probe is deterministic: a second fit gives the same numbers
    assert cli.main(["probe", str(run)]) == 0
    assert json.loads((run / "probe.json").read_text())["linear"] == lin


def test_probe_errors_are_clear(tmp_path, capsys):
    assert cli.main(["probe", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    run = _run(tmp_path, student={"model": "tests.test_probe:flat_model"}, data={
        "name": "fmnist_sample", "train_subset": 64, "test_subset": 32, "batch_size": 32})
    with pytest.raises(ConfigError, match="embedding tap.*student.taps.embed"):
        from wdistill.workflows.probe import linear_probe
        linear_probe(run)


def flat_model(num_classes=10, in_channels=1):
    """A model without a classifier whose input could be the embedding (convolution, pooling)."""
    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, num_classes, 3), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten())
