"""The GPU-speed settings on a detector: ``train.channels_last``, ``train.compile`` and ``train.sync_bn``.

channels_last must change the memory layout, never the arithmetic: in float64 (where roundoff cannot hide a
difference) a channels_last detector's step, every distillation term included, equals the contiguous one's.
compile must put the student's backbone through dynamo and leave the student file as it was. Runs in the venv of
`scripts/tv_venv.sh` (torchvision, pycocotools) with WDISTILL_REQUIRE_TV=1.
"""
import pytest
import torch
from conftest import convolves, require_importable

require_importable("torchvision")
require_importable("pycocotools")

from test_detection_engine import (  # noqa: E402
    SMALL,
    _config,
    _ctx,
    _pair,
    _randomize_bn,
    _split,
    _two_image_folder,
    every_term,
    make_tiny,
    two_rank_run,
)
from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: E402

from wdistill.data.coco import collate_detection  # noqa: E402
from wdistill.engine import make_trainer  # noqa: E402
from wdistill.engine.ddp import sync_batchnorm  # noqa: E402
from wdistill.engine.det_distiller import DetectionDistiller  # noqa: E402
from wdistill.errors import ConfigError  # noqa: E402
from wdistill.models.detection import build_faster_rcnn  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
CL = torch.channels_last


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("fmnist_det"))


def _distiller(train, batch):
    student, teacher = _pair()
    d = DetectionDistiller(student, [teacher], every_term())
    d.setup(_ctx(train), batch)
    return d.train()


def _layouts(d):
    """Whether each watched activation of ``d``'s last forward was channels_last."""
    seen, hooks = {}, []
    watch = {"student body": d.student.backbone.body.layer2, "student fpn": d.student.backbone.fpn,
             "teacher body": d.teacher.backbone.body.layer3, "student box head": d.student.roi_heads.box_head}
    for name, module in watch.items():
        def hook(m, i, out, name=name):
            outs = out.values() if isinstance(out, dict) else [out]
            seen[name] = all(o.dim() != 4 or o.is_contiguous(memory_format=CL) for o in outs)
        hooks.append(module.register_forward_hook(hook))
    return seen, hooks


def test_a_channels_last_detector_takes_the_same_step_as_a_contiguous_one(tiny):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        train = _split(tiny, "train")
        images, targets = collate_detection([train[i] for i in range(4)])
        batch = {"images": [im.double() for im in images], "targets": targets, "epoch": 0, "num_epochs": 4,
                 "step": 0}
        plain, last = _distiller(train, batch), _distiller(train, batch)
        last.to(memory_format=CL)
        seen, hooks = _layouts(last)
        results = []
        for d in (plain, last):
            torch.manual_seed(7)  # the same proposals and RoIs
            total, parts, _ = d(batch)
            total.backward()
            results.append((parts, torch.cat([p.grad.flatten() for p in d.trainable_parameters()])))
        for h in hooks:
            h.remove()
    finally:
        torch.set_default_dtype(previous)
    # the backbones ran in channels_last; the box head's flat features have no layout
    assert seen == {"student body": True, "student fpn": True, "teacher body": True, "student box head": True}
    assert last.student.backbone.body.conv1.weight.is_contiguous(memory_format=CL)
    (parts0, grad0), (parts1, grad1) = results
    for name in parts0:
        torch.testing.assert_close(parts1[name], parts0[name], rtol=1e-10, atol=0, msg=lambda m, n=name: f"{n}: {m}")
    assert grad0.norm() > 0 and (grad1 - grad0).norm() <= 1e-9 * grad0.norm(), (grad1 - grad0).norm() / grad0.norm()


def test_channels_last_and_compile_train_the_same_detector_through_the_engine(tiny, tmp_path, dynamo_graphs):
    """Three runs of two steps with WKD-L+WKD-F: plain, channels_last, channels_last + compile. torch.compile's
    backend is swapped for one that records the graphs dynamo hands it (conftest's ``dynamo_graphs``; inductor
    takes about a minute a graph on this CPU)."""
    root = _two_image_folder(tiny, tmp_path / "two", copies=2)
    torch.manual_seed(5)
    torch.save({"model": _randomize_bn(build_faster_rcnn("resnet18", 10, **SMALL)).state_dict()}, tmp_path / "t.pt")
    teacher = {"model": "detection:resnet18", "checkpoint": str(tmp_path / "t.pt"), "kwargs": dict(SMALL)}
    loss = [{"name": "det"}, {"name": "wkd_l", "weight": 0.5, "cost": "cosine_classifier"},
            {"name": "wkd_f", "weight": 0.5, "projector": "conv"}]
    runs = {}
    for name, train in {"plain": {}, "cl": {"channels_last": True},
                        "cl_compiled": {"channels_last": True, "compile": True}}.items():
        cfg = _config(root, tmp_path / "runs", name, teacher=teacher, loss=loss, train=train, data={"flip": False},
                      optim={"epochs": 1, "milestones": [1]})
        trainer = make_trainer(cfg, log=lambda *_: None)
        seen, hooks = _layouts(trainer.distiller) if name == "cl" else ({}, [])
        trainer.fit()
        for h in hooks:
            h.remove()
        runs[name] = (trainer, seen)
    assert runs["cl"][1] == {"student body": True, "student fpn": True, "teacher body": True,
                             "student box head": True}
    assert runs["cl_compiled"][0].student.backbone.body.conv1.weight.is_contiguous(memory_format=CL)
    # the student's backbone alone was compiled (not the teacher's), and dynamo traced its convolutions in training
    # and in evaluation
    compiled = runs["cl_compiled"][0]
    assert dynamo_graphs.modules == [compiled.student.backbone]
    assert len(dynamo_graphs) >= 2 and all(convolves(gm) for gm in dynamo_graphs)
    for name in ("cl", "cl_compiled"):
        for row, want in zip(runs[name][0].history, runs["plain"][0].history):
            for k in ("train_loss", "train_det", "train_wkd_l", "train_wkd_f"):
                assert row[k] == pytest.approx(want[k], rel=1e-4), (name, k)
    record = torch.load(tmp_path / "runs" / "cl_compiled" / "student.pt", weights_only=True)
    fresh = build_faster_rcnn("resnet18", 10, **SMALL)
    assert list(record["model"]) == list(fresh.state_dict())  # no compile wrapper in the keys
    fresh.load_state_dict(record["model"])


def test_two_ranks_keep_one_compiled_channels_last_detector(tiny, tmp_path):
    """DDP over a student whose backbone is compiled in place and in channels_last (AOTAutograd's eager backend,
    so the backward is the compiled graph's): the two ranks train on different images, so only gradients that DDP
    averaged, the compiled backbone's included, keep their students bit-identical."""
    r0, r1 = two_rank_run(tiny, tmp_path, train={"channels_last": True, "compile": True}, backend="aot_eager")
    assert not set(r0["seen"]) & set(r1["seen"])
    backbone = [k for k in r0["student"] if k.startswith("backbone.") and "running" not in k and "num_batches" not in k]
    assert backbone and any(not torch.equal(r0["student"][k], r0["start"][k]) for k in backbone)  # it trained
    for k, v in r0["student"].items():
        assert torch.equal(v, r1["student"][k]), k
    assert r0["summary"]["world_size"] == 2 and r0["oracle_AP"] == r1["oracle_AP"] == pytest.approx(1.0)


def test_sync_bn_on_a_detector_converts_its_batchnorm_and_leaves_frozen_statistics(tmp_path):
    torch.manual_seed(0)
    scratch = build_faster_rcnn("resnet18", 10, **SMALL)  # BatchNorm2d: trained from scratch
    frozen = build_faster_rcnn("resnet18", 10, norm="frozen", **SMALL)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in scratch.modules())
    keys = list(scratch.state_dict())
    assert n_bn > 0 and sync_batchnorm(scratch, torch.device("cpu"), 1) is scratch  # one process: nothing to sync
    with pytest.raises(ConfigError, match="train.sync_bn=false"):
        sync_batchnorm(scratch, torch.device("cpu"), 2)
    converted = sync_batchnorm(scratch, torch.device("cuda"), 2)  # the conversion itself needs no GPU
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules()) == n_bn
    assert list(converted.state_dict()) == keys
    n_frozen = sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    assert n_frozen > 0 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    again = sync_batchnorm(frozen, torch.device("cuda"), 2)
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in again.modules()) == n_frozen
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in again.modules())
