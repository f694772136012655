"""Issue 15 points 2-3: `wdistill eval` reads every file a run writes and scores it on the run's
own data; without recorded data it asks for --data; a class-count mismatch is an error."""
import json

import pytest
import torch
import yaml

from wdistill import cli, models
from wdistill.config import load_config
from wdistill.engine import Trainer

TEST_N = 40  # the run's own test subset: the bundled sample's full test split has 1,000 images


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    cfg = {"run": {"name": "r", "out_dir": str(out)},
           "data": {"name": "fmnist_sample", "train_subset": 128, "test_subset": TEST_N, "batch_size": 32},
           "student": {"model": "resnet8"}, "optim": {"epochs": 3, "lr": 0.05, "schedule": "cosine"},
           "train": {"progress": False}}
    Trainer(load_config(cfg), log=lambda m: None).fit()
    return out / "r"


def _eval(capsys, *argv):
    capsys.readouterr()
    rc = cli.main(["eval", *map(str, argv)])
    captured = capsys.readouterr()
    return rc, (json.loads(captured.out) if rc == 0 else captured.err)


def test_every_run_file_scores_its_own_epoch_on_the_run_data(run, capsys):
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = history[-1]["test_top1"]
    best = max(r["test_top1"] for r in history)
    assert cli.main(["export", str(run), "--which", "best"]) == 0
    for target, expected in ((run, final), (run / "student.pt", final), (run / "last.pt", final),
                             (run / "best.pt", best), (run / "student_best.pt", best)):
        rc, out = _eval(capsys, target)
        assert rc == 0, out
        assert out["images"] == TEST_N and out["data"]["name"] == "fmnist_sample", target
        assert out["top1"] == pytest.approx(expected), target
    rc, out = _eval(capsys, run, "--which", "best")
    assert rc == 0 and out["checkpoint"].endswith("best.pt") and out["top1"] == pytest.approx(best)


def test_unfinished_run_falls_back_to_best_and_says_so(run, tmp_path, capsys):
    part = tmp_path / "part"
    part.mkdir()
    for f in ("best.pt", "last.pt", "config.yaml"):
        (part / f).write_bytes((run / f).read_bytes())
    rc, out = _eval(capsys, part)
    assert rc == 0 and out["checkpoint"].endswith("best.pt") and "no student.pt" in out["note"]


def test_student_file_without_recorded_data_uses_the_run_config_beside_it(run, tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    state = torch.load(run / "student.pt", weights_only=True)
    state.pop("data")  # written before student.pt recorded its data
    torch.save(state, old / "student.pt")
    (old / "config.yaml").write_text((run / "config.yaml").read_text())
    rc, out = _eval(capsys, old / "student.pt")
    assert rc == 0 and out["images"] == TEST_N and out["data"]["from"].endswith("config.yaml")
    (old / "config.yaml").unlink()
    rc, err = _eval(capsys, old / "student.pt")
    assert rc == 2 and "does not record the data" in err and "--data" in err


def test_bare_state_dict_needs_data_and_model(run, tmp_path, capsys):
    sd = torch.load(run / "student.pt", weights_only=True)["model"]
    torch.save(sd, tmp_path / "bare.pt")
    rc, err = _eval(capsys, tmp_path / "bare.pt", "--model", "resnet8")
    assert rc == 2 and "does not record the data" in err
    rc, err = _eval(capsys, tmp_path / "bare.pt", "--data", "fmnist_sample")
    assert rc == 2 and "--model" in err
    rc, out = _eval(capsys, tmp_path / "bare.pt", "--model", "resnet8", "--data", "fmnist_sample")
    assert rc == 0 and out["images"] == 1000 and out["data"]["from"] == "--data"


def test_class_count_mismatch_is_refused(tmp_path, capsys):
    m = models.create("resnet8", num_classes=100, in_channels=1)
    torch.save({"model": m.state_dict(), "arch": "resnet8"}, tmp_path / "c100.pt")
    rc, err = _eval(capsys, tmp_path / "c100.pt", "--data", "fmnist_sample")
    assert rc == 2 and "100-class model" in err and "10 classes" in err


def test_recorded_data_is_yaml_plain(run):
    # weights_only loading: the recorded data section must be plain Python data
    state = torch.load(run / "student.pt", weights_only=True)
    assert yaml.safe_load(yaml.safe_dump(state["data"])) == state["data"]
    assert state["data"]["test_subset"] == TEST_N


FACTORY = """import torch.nn as nn
def make(num_classes):
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
"""


def test_a_student_built_in_python_is_refused_with_the_fix_and_the_fix_works(tmp_path, capsys, monkeypatch):
    """A model handed to wdistill.distill() records only its class name: eval and probe say how to score it
    (before any data loads), and the fix they name, a factory given with --model, scores it."""
    import wdistill
    from wdistill.data import bundled_sample

    (tmp_path / "usernet.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import usernet

    torch.manual_seed(0)
    train, test = bundled_sample("train").subset(slice(0, 64)), bundled_sample("test").subset(slice(0, TEST_N))
    summary = wdistill.distill(usernet.make(10), None, train, test, epochs=1, out_dir=str(tmp_path), name="user",
                               train={"progress": False})
    for command in (["eval", tmp_path / "user"], ["probe", tmp_path / "user"]):
        capsys.readouterr()
        assert cli.main([*map(str, command)]) == 2
        err = capsys.readouterr().err
        assert "records the student model 'Sequential'" in err and "--model pkg.module:factory" in err, err
        assert f"wdistill.models.load_checkpoint(model, '{tmp_path / 'user' / 'student.pt'}')" in err, err
    rc, scored = _eval(capsys, tmp_path / "user", "--model", "usernet:make", "--subset", TEST_N)  # the run's images
    assert rc == 0 and scored["top1"] == pytest.approx(summary["final_top1"]), scored
