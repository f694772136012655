"""``train.compile`` on a classifier: the student goes through dynamo, the feature taps that the feature terms read
still see every step (their hooks are traced into the graph), the run trains as the eager one does, and the
student file keeps its keys.

torch.compile's backend is swapped for one that records the graphs dynamo hands it (conftest's ``dynamo_graphs``);
the GPU benchmark compiles with inductor.
"""
import pytest
import torch
from builders import random_teacher, small_run
from conftest import convolves

from wdistill.config import load_config
from wdistill.engine import Trainer


@pytest.fixture
def teacher_ckpt(tmp_path):
    return random_teacher(tmp_path / "teacher.pt", "resnet14")


def test_a_compiled_student_trains_as_the_eager_one_with_its_feature_terms(tmp_path, teacher_ckpt, dynamo_graphs):
    teacher = {"model": "resnet14", "checkpoint": teacher_ckpt}
    # KD on the logits, WKD-F and FitNet on tapped feature maps
    loss = [{"name": "ce", "weight": 1.0}, {"name": "kd", "weight": 0.9}, {"name": "wkd_f", "weight": 1.0},
            {"name": "fitnet", "weight": 1.0}]
    runs = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        cfg = load_config(small_run(tmp_path, seed=3, name=name, teacher=teacher, loss=loss, epochs=2,
                                    extra_train={"compile": compiled, "grad_share": False}))
        runs[name] = Trainer(cfg, log=lambda *_: None)
        runs[name].fit()
    assert dynamo_graphs and all(convolves(gm) for gm in dynamo_graphs)
    eager, compiled = runs["eager"].history, runs["compiled"].history
    assert len(eager) == len(compiled) == 2
    for a, b in zip(eager, compiled):
        for k in ("train_loss", "train_ce", "train_kd", "train_wkd_f", "train_fitnet", "test_top1"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (k, a[k], b[k])
    saved = torch.load(tmp_path / "runs" / "compiled" / "student.pt", weights_only=True)["model"]
    assert list(saved) == list(runs["eager"].student.state_dict())  # no '_orig_mod.' from the compiled wrapper
