"""Views (cross-modal / privileged-information distillation): each transform against a hand
computation, both views from the same augmented crop, evaluation on the student's own view."""
import json

import pytest
import torch
from builders import random_teacher, small_run

from wdistill import cli
from wdistill.config import load_config
from wdistill.data.views import View, ViewSpec
from wdistill.engine import Distiller, Trainer, evaluate
from wdistill.errors import ConfigError


def _blur_by_hand(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k x k window around each pixel, counting only pixels inside the image."""
    out = torch.empty_like(x)
    H, W = x.shape[-2:]
    r = k // 2
    for i in range(H):
        for j in range(W):
            win = x[..., max(0, i - r):min(H, i + r + 1), max(0, j - r):min(W, j + r + 1)]
            out[..., i, j] = win.mean(dim=(-2, -1))
    return out


def test_each_view_against_a_hand_computation():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    assert torch.equal(View(None)(x), x)
    down = View({"name": "downsample", "factor": 2})(x)
    hand = torch.stack([torch.stack([x[..., 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean((-2, -1)) for j in range(4)], -1)
                        for i in range(3)], -2)
    assert down.shape == (2, 3, 3, 4) and torch.allclose(down, hand)
    low = View({"name": "lowpass", "size": 5})(x)
    assert torch.allclose(low, _blur_by_hand(x, 5))
    assert torch.allclose(View({"name": "highpass", "size": 3})(x), x - _blur_by_hand(x, 3))
    masked = View({"name": "mask", "box": [0.5, 0.25, 0.5, 0.5]})(x)  # rows 3-5, columns 2-5 zeroed
    expected = x.clone()
    expected[..., 3:6, 2:6] = 0
    assert torch.equal(masked, expected)
    ch = View({"name": "channels", "channels": [0, 2]})(x)
    assert torch.equal(ch[:, [0, 2]], x[:, [0, 2]]) and not ch[:, 1].any()


def test_view_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="odd"):
        ViewSpec(name="lowpass", size=4)
    with pytest.raises(ConfigError, match="student.view.*channel"):
        Trainer(load_config(_base(tmp_path, student={"model": "resnet8",
                                                     "view": {"name": "channels", "channels": [1]}})))
    with pytest.raises(ConfigError, match="student.view"):
        load_config(_base(tmp_path, student={"model": "resnet8", "view": {"name": "blur"}}))


def _base(tmp_path, **over):
    return small_run(tmp_path, seed=1, epochs=1, schedule="constant",
                     extra_data={"crop_padding": 4, "flip": True}, extra_train={"max_steps": 3}, **over)


@pytest.fixture
def teacher_ckpt(tmp_path):
    return random_teacher(tmp_path / "teacher.pt", "resnet8")


def test_views_come_from_the_same_augmented_crop(tmp_path, teacher_ckpt, monkeypatch):
    """Per sample, the teacher saw lowpass(crop) and the student highpass(crop) of the same
    augmented crop, and the crop differs from the plain image (augmentation was on)."""
    cfg = load_config(_base(tmp_path, teacher={"model": "resnet8", "checkpoint": teacher_ckpt,
                                               "view": {"name": "lowpass", "size": 5}},
                            student={"model": "resnet8", "view": {"name": "highpass", "size": 5}},
                            loss=[{"name": "ce"}, {"name": "kd"}]))
    tr = Trainer(cfg, log=lambda m: None)
    seen = {"active": False, "batch": [], "teacher": [], "student": []}
    original = Distiller.forward

    def spy_forward(self, batch):
        seen["active"] = True
        seen["batch"].append((batch["image"].clone(), batch["index"].clone()))
        try:
            return original(self, batch)
        finally:
            seen["active"] = False

    monkeypatch.setattr(Distiller, "forward", spy_forward)
    for role, model in (("teacher", tr.teachers[0]), ("student", tr.student)):
        model.register_forward_pre_hook(lambda m, a, r=role: seen[r].append(a[0].clone()) if seen["active"] else None)
    tr.fit()
    assert len(seen["batch"]) == len(seen["teacher"]) == len(seen["student"]) == 3
    plain = {int(i): img for b in tr.data.plain_batches() for img, i in zip(b["image"], b["index"])}
    augmented = 0
    for (img, idx), t_in, s_in in zip(seen["batch"], seen["teacher"], seen["student"]):
        assert torch.allclose(t_in, _blur_by_hand(img, 5), atol=1e-5)
        assert torch.allclose(s_in, img - _blur_by_hand(img, 5), atol=1e-5)
        augmented += sum(not torch.equal(a, plain[int(i)]) for a, i in zip(img, idx))
    assert augmented > 0


def test_privileged_student_is_evaluated_on_its_view(tmp_path, teacher_ckpt, capsys):
    """A student trained on the 2x-downsampled view is scored on that view, in training and by
    `wdistill eval` (read from the run), and the full image would give another score."""
    cfg = load_config(_base(tmp_path, teacher={"model": "resnet8", "checkpoint": teacher_ckpt},
                            student={"model": "resnet8", "view": {"name": "downsample", "factor": 2}},
                            loss=[{"name": "ce"}, {"name": "kd"}]))
    tr = Trainer(cfg, log=lambda m: None)
    seen = []
    tr.student.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-1]))
    summary = tr.fit()
    assert set(seen) == {14}  # every student forward, training and evaluation, saw 14x14
    run = tmp_path / "runs" / "r"
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    on_full = evaluate(tr.student, tr.test_loader)
    assert cli.main(["eval", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["view"]["name"] == "downsample"
    assert out["top1"] == pytest.approx(summary["final_top1"]) and out["loss"] == pytest.approx(
        last["test_loss"], rel=1e-5
    )
    assert on_full["loss"] != pytest.approx(out["loss"], rel=1e-4)
    assert cli.main(["eval", str(run), "--view", "identity"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(on_full["loss"], rel=1e-5)


def test_a_teacher_trained_on_a_view_must_be_given_that_view(tmp_path, teacher_ckpt):
    """`wdistill train` with student.view makes a view teacher; distilling from it with no
    teacher.view is refused (it would see the full image), an explicit view is accepted."""
    lowpass = {"name": "lowpass", "size": 5}
    Trainer(
        load_config(
            _base(
                tmp_path,
                student={"model": "resnet8", "view": lowpass},
                run={"name": "t", "out_dir": str(tmp_path / "runs")},
            )
        ),
        log=lambda m: None,
    ).fit()
    ckpt = str(tmp_path / "runs" / "t" / "student.pt")
    loss = [{"name": "ce"}, {"name": "kd"}]
    with pytest.raises(ConfigError, match="teacher.view is not set"):
        Trainer(load_config(_base(tmp_path, teacher={"model": "resnet8", "checkpoint": ckpt}, loss=loss)))
    tr = Trainer(
        load_config(_base(tmp_path, teacher={"model": "resnet8", "checkpoint": ckpt, "view": lowpass}, loss=loss)),
        log=lambda m: None,
    )
    assert tr.distiller.teacher_views[0].spec.name == "lowpass"
    tr.close()
