"""The detection task end to end: each term's value on detection outputs against an independent
computation, WKD-L's category cost from the teacher's box features, COCOeval through the engine's
loaders, a two-image run that learns, exact resume, two torchrun ranks, and `wdistill distill` from a COCO
preset.

Needs torchvision and pycocotools, so it runs in the venv of `scripts/tv_venv.sh` with
WDISTILL_REQUIRE_TV=1, where a missing package fails instead of skipping. What needs neither (the
config refusals, the presets' contents) is tests/test_detection_config.py, in the main suite.
"""
import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import FMNIST_DIR, require_importable

tv = require_importable("torchvision")
require_importable("pycocotools")

from wdistill import losses  # noqa: E402
from wdistill.cli import main as cli_main  # noqa: E402
from wdistill.config import load_config  # noqa: E402
from wdistill.data.coco import CocoDetection, collate_detection  # noqa: E402
from wdistill.data.det_loader import DetectionLoader, head, split_paths, with_transforms  # noqa: E402
from wdistill.data.det_transforms import detection_transforms  # noqa: E402
from wdistill.engine import ddp, make_trainer  # noqa: E402
from wdistill.engine.det_distiller import DetectionDistiller, evaluate_detection  # noqa: E402
from wdistill.errors import ConfigError  # noqa: E402
from wdistill.models.det_features import class_box_features  # noqa: E402
from wdistill.models.detection import build_faster_rcnn  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = dict(min_size=64, max_size=64, anchor_sizes=[[8], [16], [32], [64], [128]], rois_per_image=16,
             rpn_post_nms_top_n_test=50)


def make_tiny(out: Path) -> Path:
    """FMNIST-Det canvases of 64 px in ``out``: 32 train (every class at least twice), 4 val, 4 test."""
    root = os.environ.get("WDISTILL_FMNIST", FMNIST_DIR)
    if not os.path.isdir(root):
        pytest.fail(f"Fashion-MNIST is not at {root}: apt-get install dataset-fashion-mnist", pytrace=False)
    spec = importlib.util.spec_from_file_location("gen", Path(__file__).parents[1] / "scripts" / "make_fmnist_det.py")
    spec.loader.exec_module(gen := importlib.util.module_from_spec(spec))
    assert gen.main(["--out", str(out), "--size", "64", "--train", "32", "--val", "4", "--test", "4", "--quiet",
                     "--fmnist-root", root]) == 0
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("fmnist_det"))


def _split(root, split, train=True, transforms=None):
    images, ann = split_paths(root, split)
    return CocoDetection(images, ann, transforms, train=train, progress=False)


def _randomize_bn(model):
    with torch.no_grad():
        for m in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.3, 0.3), m.running_var.uniform_(0.5, 2.0)
    return model


def _pair(seed=0):
    torch.manual_seed(seed)
    return build_faster_rcnn("resnet18", 10, **SMALL), _randomize_bn(build_faster_rcnn("resnet18", 10, **SMALL)).eval()


def every_term():
    """(id, weight, term) of every term that acts on a detector, at settings the checks below recompute."""
    make = losses.create
    return [("det", 1.0, make("det")), ("kd", 0.7, make("kd", T=2.0)),
            ("dkd", 1.3, make("dkd", alpha=1.0, beta=0.25, T=1.0, warmup=0)), ("fitnet", 0.5, make("fitnet")),
            ("wkd_l", 1.0, make("wkd_l", lambda_l=30.0, tau=2.0, cost="cosine_classifier", decay_start_frac=None)),
            ("wkd_f", 2.0, make("wkd_f", lambda_f=0.02, gamma=2.0, projector="conv", decay_start_frac=None))]


def _ctx(train_set):
    plain = with_transforms(train_set, detection_transforms(False))
    return dict(num_classes=11, num_samples=len(train_set), train_targets=None, device=torch.device("cpu"),
                train_batches=lambda: iter(DetectionLoader(plain, 4, False)), cache_dir=None)


# ---- independent computations, from the formulas --------------------------------------------------
def kd_by_hand(zs, zt, T):
    ps = torch.exp(zs / T) / torch.exp(zs / T).sum(1, keepdim=True)
    pt = torch.exp(zt / T) / torch.exp(zt / T).sum(1, keepdim=True)
    return (pt * (pt.log() - ps.log())).sum(1).mean() * T * T


def dkd_by_hand(zs, zt, y, alpha, beta, T):
    """mdistiller's form: binary [p_target, 1 - p_target] and the non-target softmax with the target masked."""
    gt = F.one_hot(y, zs.shape[1]).bool()
    ps, pt = F.softmax(zs / T, 1), F.softmax(zt / T, 1)
    bs = torch.stack([ps[gt], (ps * ~gt).sum(1)], 1)
    bt = torch.stack([pt[gt], (pt * ~gt).sum(1)], 1)
    tckd = (bt * (bt.log() - bs.log())).sum(1).mean() * T * T
    ns, nt = F.softmax(zs / T - 1000.0 * gt, 1), F.softmax(zt / T - 1000.0 * gt, 1)
    keep = ~gt
    nckd = (nt[keep] * (nt[keep].log() - ns[keep].log())).sum() / len(y) * T * T
    return alpha * tckd + beta * nckd


def wkd_l_by_hand(zs, zt, y, cost, tau, reg=0.05, iters=10):
    """RoI by RoI: target term at T=1, then plain Sinkhorn on the (C-1) x (C-1) non-target problem."""
    pt, log_ps = F.softmax(zt, 1), F.log_softmax(zs, 1)
    target = -torch.stack([pt[i, y[i]] * log_ps[i, y[i]] for i in range(len(y))]).mean()
    wds = []
    for i in range(len(y)):
        nt = [c for c in range(zs.shape[1]) if c != int(y[i])]
        a, b = F.softmax(zs[i, nt] / tau, 0), F.softmax(zt[i, nt] / tau, 0)
        M = cost[nt][:, nt]
        K = torch.exp(-M / reg)
        u = torch.full_like(a, 1.0 / len(nt))
        for _ in range(iters):
            v = b / (K.t() @ u + 1e-8)
            u = a / (K @ v + 1e-8)
        wds.append((u[:, None] * K * v[None, :] * M).sum())
    return target, torch.stack(wds).mean()


def wkd_f_by_hand(fs, ft, lam, gamma, eps=1e-5):
    """One diagonal Gaussian per RoI over its 7 x 7 positions: W2^2 = |mu_s - mu_t|^2 + |sd_s - sd_t|^2."""
    xs, xt = fs.flatten(2), ft.flatten(2)
    mean = (xs.mean(2) - xt.mean(2)).pow(2).sum(1)
    sd = ((xs.var(2, unbiased=True) + eps).sqrt() - (xt.var(2, unbiased=True) + eps).sqrt()).pow(2).sum(1)
    return lam * (gamma * mean + sd).mean()


def test_each_term_on_detection_outputs_equals_an_independent_computation(tiny):
    student, teacher = _pair()
    train = _split(tiny, "train")
    images, targets = collate_detection([train[i] for i in range(4)])
    batch = {"images": images, "targets": targets, "epoch": 0, "num_epochs": 4, "step": 0}
    d = DetectionDistiller(student, [teacher], every_term())
    buffers = {k: v.clone() for k, v in student.named_buffers()}
    d.setup(_ctx(train), batch)
    for k, v in student.named_buffers():  # the probe step leaves the student's BatchNorm statistics alone
        assert torch.equal(v, buffers[k]), k
    assert not any(r.use_relu for r in d.terms["fitnet"].regressor) and not d.terms["wkd_f"].projector.use_relu
    d.train()
    torch.manual_seed(7)
    total, parts, _ = d(batch)
    torch.manual_seed(7)
    s, t, tb = d.step(batch)  # the same draw of proposals and RoIs
    torch.manual_seed(7)
    own = student(images, targets)  # torchvision's own forward and losses
    y, zs, zt = tb["target"], s["logits"].detach(), t["logits"]
    assert zs.shape == (len(y), 11) and (y == 0).any() and (y > 0).any()  # background RoIs are distilled too
    w = {"det": 1.0, "kd": 0.7, "dkd": 1.3, "fitnet": 0.5, "wkd_l": 1.0, "wkd_f": 2.0}
    fitnet = d.terms["fitnet"]
    names = ["0", "1", "2", "3"]  # the FPN levels the RoI pooler reads, finest first (not 'pool')
    fit = sum(F.mse_loss(reg(s["fpn"][n]), t["fpn"][n]) for reg, n in zip(fitnet.regressor, names))
    target, wd = wkd_l_by_hand(zs, zt, y, d.terms["wkd_l"].cost, tau=2.0)
    want = {"det": sum(own.values()), "kd": kd_by_hand(zs, zt, 2.0), "dkd": dkd_by_hand(zs, zt, y, 1.0, 0.25, 1.0),
            "fitnet": fit, "wkd_l": target + 30.0 * wd,
            "wkd_f": wkd_f_by_hand(d.terms["wkd_f"].projector(s["roi_feats"]), t["roi_feats"], 0.02, 2.0)}
    for name, value in want.items():
        torch.testing.assert_close(parts[name].detach(), w[name] * value.detach(), rtol=2e-4, atol=1e-5,
                                   msg=lambda m, n=name: f"{n}: {m}")
    torch.testing.assert_close(total.detach(), sum(parts.values()).detach())
    total.backward()
    assert all(p.grad is not None for p in d.terms["wkd_f"].projector.parameters())  # trained with the student
    assert not any(p.grad is not None for p in teacher.parameters())


def test_box_features_are_the_teachers_roi_align_maps_by_position_on_ground_truth_and_background_boxes(tiny):
    _, teacher = _pair(1)
    train = _split(tiny, "train")
    images, targets = collate_detection([train[i] for i in range(3)])
    rows, labels, boxes = class_box_features(teacher.train(), images, targets)
    assert teacher.training  # put back as it was
    teacher.eval()
    with torch.no_grad():  # by hand: the teacher's transform, backbone, RoI-Align of the ground truth
        il, tt = teacher.transform(images, [dict(t) for t in targets])
        fpn = teacher.backbone(il.tensors)
        gt_maps = teacher.roi_heads.box_roi_pool(fpn, [x["boxes"] for x in tt], il.image_sizes)  # (N, 256, 7, 7)
    assert rows.shape[1:] == (49, 256)
    start, seen = 0, 0
    for t, b in zip(tt, boxes):
        n = len(t["boxes"])
        for k in range(n):  # row 7 * i + j of a box is its map at position (i, j)
            for i, j in ((0, 0), (3, 5), (6, 6)):
                torch.testing.assert_close(rows[start + k, 7 * i + j], gt_maps[seen + k, :, i, j], rtol=1e-4, atol=1e-5)
        assert labels[start:start + n].tolist() == t["labels"].tolist()
        bg = b[n:]
        assert 0 < len(bg) <= n and (labels[start + n:start + len(b)] == 0).all()
        assert (tv.ops.box_iou(bg, t["boxes"]).max(1).values < 0.5).all()  # background: IoU < 0.5 with every box
        start, seen = start + len(b), seen + n
    assert start == len(rows) == len(labels)
    logits, _, _ = class_box_features(teacher, images, targets, mode="logits")
    with torch.no_grad():
        want = teacher.roi_heads.box_predictor(teacher.roi_heads.box_head(gt_maps[:len(tt[0]["boxes"])]))[0]
    torch.testing.assert_close(logits[:len(tt[0]["boxes"]), 0], want, rtol=1e-4, atol=1e-5)


def _cka(x, y):
    k, m = x - x.mean(0), y - y.mean(0)
    K, L = k @ k.t(), m @ m.t()
    return (K * L).sum() / (K.norm() * L.norm())


def test_wkd_l_detection_cost_is_the_cka_of_the_teachers_roi_features_by_class_position_with_position(tiny):
    student, teacher = _pair(2)
    train = _split(tiny, "train")
    batch = dict(zip(("images", "targets"), collate_detection([train[i] for i in range(2)])))
    d = DetectionDistiller(student, [teacher], [("wkd_l", 1.0, losses.create("wkd_l", kappa=2.0))])
    d.setup(_ctx(train), batch)
    by_class = {k: [] for k in range(11)}  # by hand, in the order of the un-flipped training batches
    plain = with_transforms(train, detection_transforms(False))
    for b in DetectionLoader(plain, 4, False):
        rows, labels, _ = class_box_features(teacher, b["images"], b["targets"])
        for r, k in zip(rows, labels.tolist()):
            by_class[k].append(r)  # (49, 256): one box's positions
    n = min(len(v) for v in by_class.values())
    assert n >= 1 and len(by_class[0]) >= n  # background included, as class 0
    X = [torch.cat(by_class[k][:n]).double() for k in range(11)]  # the k-th box of each class, position by position
    cka = torch.tensor([[float(_cka(X[i], X[j])) for j in range(11)] for i in range(11)])
    want = 1 - torch.exp(-2.0 * (1 - cka) * (1 - torch.eye(11)))
    torch.testing.assert_close(d.terms["wkd_l"].cost.double(), want.double(), rtol=1e-4, atol=1e-5)
    assert d.terms["wkd_l"].cost.shape == (11, 11)


def test_loader_layouts_subsets_and_cocoeval_on_the_evaluated_images_only(tiny, tmp_path):
    with pytest.raises(ConfigError, match=r"annotations/instances_<split>.json.*Its annotations name the splits "
                                          r"test, train, val$"):  # the default 'train' on COCO 2017's folder
        split_paths(tiny, "train2017")
    (tmp_path / "annotations").mkdir()  # COCO 2017's own layout: <root>/val2017/ beside annotations/
    (tmp_path / "annotations/instances_val2017.json").write_text((tiny / "annotations/instances_val.json").read_text())
    (tmp_path / "val2017").symlink_to(tiny / "images" / "val")
    assert split_paths(tmp_path, "val2017") == (tmp_path / "val2017", tmp_path / "annotations/instances_val2017.json")
    test = _split(tiny, "test", train=False)

    class Oracle(torch.nn.Module):  # "detects" the ground truth of the loader's one batch
        def forward(self, images):
            return [{"boxes": boxes[k], "scores": torch.ones(len(boxes[k])), "labels": labels[k]}
                    for k in range(len(images))]
    loader = DetectionLoader(head(test, 2), 2, False)
    batch = next(iter(loader))
    boxes, labels = [t["boxes"] for t in batch["targets"]], [t["labels"] for t in batch["targets"]]
    ids = [item[0] for item in head(test, 2).items]
    assert evaluate_detection(Oracle(), loader, test.coco, ids)["AP"] == pytest.approx(1.0)
    assert evaluate_detection(Oracle(), loader, test.coco)["AP"] < 0.9  # the other two images' boxes are missed
    train = head(_split(tiny, "train", transforms=detection_transforms(True, flip=0.5)), 8)
    a, b = DetectionLoader(train, 4, True, seed=3), DetectionLoader(train, 4, True, seed=3, workers=2)
    a.set_epoch(1)
    b.set_epoch(1)
    for x, y in zip(a, b):  # the same images and flips whatever the number of workers
        assert all(torch.equal(p, q) for p, q in zip(x["images"], y["images"]))
        assert all(torch.equal(p["boxes"], q["boxes"]) for p, q in zip(x["targets"], y["targets"]))
    assert len(a) == 2 and len(DetectionLoader(train, 3, True)) == 2  # training drops the last partial batch


def test_the_learning_rate_warms_up_over_the_first_steps(tiny, tmp_path):
    root = _two_image_folder(tiny, tmp_path / "two", copies=2)
    trainer = make_trainer(_config(root, tmp_path / "runs", "warm", detection={"warmup_steps": 4}), log=lambda *_: None)
    trainer.optimizer = torch.optim.SGD(trainer.student.parameters(), lr=0.1)
    seen = []

    class Recorder:  # stands in for the loop's Stepper: records the rate of every step
        guard = type("G", (), {"check": lambda self, where: None})()
        meter = type("M", (), {"read": lambda self, world_size=1: {}})()

        def step(self, batch, i):
            seen.append((i, trainer.optimizer.param_groups[0]["lr"]))
    trainer.run_loop(Recorder(), "epoch 1", "epoch 1", first_step=2)  # a resumed epoch: global steps 2 and 3
    want = [(i, 0.1 * (0.001 * (1 - i / 4) + i / 4)) for i in (2, 3)]
    assert [i for i, _ in seen] == [2, 3] and all(lr == pytest.approx(w) for (_, lr), (_, w) in zip(seen, want))
    trainer.close()


def _two_image_folder(tiny, out, copies, ids=(1, 2)):
    """The first two training canvases (or those of ``ids``), each listed ``copies`` times for training, once
    for evaluation."""
    data = json.loads((tiny / "annotations/instances_train.json").read_text())
    (out / "annotations").mkdir(parents=True)
    (out / "images").mkdir()
    (out / "images/train").symlink_to(tiny / "images/train")
    (out / "images/val").symlink_to(tiny / "images/train")
    two = [im for im in data["images"] if im["id"] in ids]
    anns = [a for a in data["annotations"] if a["image_id"] in ids]
    images, annotations = [], []
    for c in range(copies):
        for im in two:
            images.append(dict(im, id=im["id"] + 10 * c))
            for a in (a for a in anns if a["image_id"] == im["id"]):
                annotations.append(dict(a, id=len(annotations) + 1, image_id=a["image_id"] + 10 * c))
    for split, (ims, anns_) in {"train": (images, annotations), "val": (two, anns)}.items():
        (out / f"annotations/instances_{split}.json").write_text(json.dumps(dict(data, images=ims, annotations=anns_)))
    return out


def _config(root, out_dir, name, **extra):
    cfg = {"task": "detection", "run": {"name": name, "out_dir": str(out_dir), "seed": 0, "device": "cpu"},
           "data": {"name": "coco", "root": str(root), "batch_size": 2, "eval_batch_size": 2, "workers": 0},
           "student": {"model": "detection:resnet18", "kwargs": dict(SMALL)}, "loss": [{"name": "det"}],
           "optim": {"epochs": 4, "lr": 0.02, "weight_decay": 1e-4, "milestones": [4]},
           "detection": {"warmup_steps": 2, "eval_teacher": False},
           "train": {"progress": False, "grad_share": False}}
    for key, value in extra.items():
        cfg[key] = value if not isinstance(value, dict) else {**cfg.get(key, {}), **value}
    return load_config(cfg)


def test_a_detectors_model_and_checkpoint_errors_come_before_the_data_loads(tmp_path, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the data loaded before the config's models were checked")

    monkeypatch.setattr("wdistill.engine.det_trainer.build_detection_data", no_data)
    kd = [{"name": "det"}, {"name": "kd"}]
    torch.save({"model": build_faster_rcnn("resnet18", 10, **SMALL).state_dict()}, tmp_path / "r18.pt")
    r18 = str(tmp_path / "r18.pt")
    cases = [({"student": {"model": "detection:resnet19"}}, "student.model 'detection:resnet19': detectors are"),
             ({"teacher": {"model": "detection:resnet18", "checkpoint": str(tmp_path / "none.pt")}, "loss": kd},
              "teacher.checkpoint .*none.pt.* does not exist"),
             ({"teacher": {"model": "detection:resnet50", "checkpoint": r18, "kwargs": dict(SMALL)}, "loss": kd},
              r"teacher.checkpoint: checkpoint does not fit detection:resnet50 \(FasterRCNN\): .*missing keys")]
    for over, message in cases:
        with pytest.raises(ConfigError, match=message):
            make_trainer(_config(tmp_path / "coco", tmp_path / "runs", "refused", **over), log=lambda *_: None)
        assert not (tmp_path / "runs").exists()  # refused before its run directory was made
    # the right backbone, at the class count of its own box predictor (10 categories), passes to the data
    right = {"teacher": {"model": "detection:resnet18", "checkpoint": r18, "kwargs": dict(SMALL)}, "loss": kd}
    with pytest.raises(AssertionError, match="the data loaded"):
        make_trainer(_config(tmp_path / "coco", tmp_path / "runs", "right", **right), log=lambda *_: None)


def test_a_two_image_run_through_the_engine_learns(tiny, tmp_path):
    # 32 entries: 16 steps of 2 per epoch. Three epochs, not two: after 32 steps the AP was still 0.0 in one
    # environment (a Pillow/numpy rebuild moved it from just above 0), after 48 it is ~0.2.
    root = _two_image_folder(tiny, tmp_path / "two", copies=16)
    cfg = _config(root, tmp_path / "runs", "learn", optim={"epochs": 3, "milestones": [3], "lr": 0.01},
                  detection={"warmup_steps": 5}, data={"flip": False})
    trainer = make_trainer(cfg, log=lambda *_: None)
    summary = trainer.fit()
    history = trainer.history
    assert history[-1]["train_det"] < 0.75 * history[0]["train_det"], [r["train_det"] for r in history]
    assert summary["task"] == "detection" and summary["final_AP"] > 0 and summary["final_AP50"] > 0.02, summary
    assert summary["best_AP"] >= summary["final_AP"] and summary["final_APl"] is None  # no box above 96 px
    assert summary["steps_per_epoch"] == 16 and "train_top1" not in history[-1]
    run = tmp_path / "runs" / "learn"
    assert {"config.yaml", "last.pt", "best.pt", "student.pt", "summary.json", "metrics.csv"} <= {
        p.name for p in run.iterdir()}
    record = torch.load(run / "student.pt", weights_only=True)
    assert record["arch"] == "detection:resnet18" and record["num_classes"] == 10
    again = build_faster_rcnn("resnet18", 10, **SMALL)
    again.load_state_dict(record["model"])  # the student file rebuilds the detector
    assert cli_main(["eval", str(run)]) == 2  # `wdistill eval` scores classifiers: a clear refusal, no traceback


def test_resumed_detection_run_equals_an_uninterrupted_one(tiny, tmp_path):
    root = _two_image_folder(tiny, tmp_path / "two", copies=2)  # 2 steps per epoch
    torch.manual_seed(5)
    torch.save({"model": _randomize_bn(build_faster_rcnn("resnet18", 10, **SMALL)).state_dict()}, tmp_path / "t.pt")
    teacher = {"model": "detection:resnet18", "checkpoint": str(tmp_path / "t.pt"), "kwargs": dict(SMALL)}
    loss = [{"name": "det"}, {"name": "kd", "T": 1.0}, {"name": "wkd_f", "lambda_f": 0.001, "projector": "conv",
                                                                 "decay_start_frac": None}]
    kw = dict(teacher=teacher, loss=loss, optim={"epochs": 3, "milestones": [2]})
    whole = make_trainer(_config(root, tmp_path / "runs", "whole", **kw), log=lambda *_: None)
    whole.fit()
    paused = make_trainer(_config(root, tmp_path / "runs", "paused", train={"stop_after": 1}, **kw),
                          log=lambda *_: None)
    assert "paused_after" in paused.fit()
    resumed = make_trainer(_config(root, tmp_path / "runs", "paused", **kw), resume=True, log=lambda *_: None)
    resumed.fit()
    for (k, a), b in zip(whole.distiller.state_dict().items(), resumed.distiller.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")
    assert [r["train_loss"] for r in whole.history] == [r["train_loss"] for r in resumed.history]


class _Crash(Exception):
    pass


def test_a_detection_run_killed_after_a_step_checkpoint_resumes_inside_the_epoch_bit_identically(
        tiny, tmp_path, monkeypatch):
    """train.checkpoint_every on a detector: last.pt every 2 steps; a run killed right after the one
    after step 2 of epoch 2 resumes at the next batch (the
    detection loader restarts at it, every flip from (seed, epoch, position)) and ends equal to an
    uninterrupted run, weights and metrics."""
    from wdistill.engine import epochs as epochs_module
    root = _two_image_folder(tiny, tmp_path / "two", copies=4)  # 4 steps per epoch
    torch.manual_seed(5)
    torch.save({"model": _randomize_bn(build_faster_rcnn("resnet18", 10, **SMALL)).state_dict()}, tmp_path / "t.pt")
    teacher = {"model": "detection:resnet18", "checkpoint": str(tmp_path / "t.pt"), "kwargs": dict(SMALL)}
    kw = dict(teacher=teacher, loss=[{"name": "det"}, {"name": "kd", "T": 1.0}],
              optim={"epochs": 2, "milestones": [2], "lr": 0.002}, train={"checkpoint_every": 2})
    whole = make_trainer(_config(root, tmp_path / "runs", "whole", **kw), log=lambda *_: None)
    whole.fit()
    real = epochs_module.save_finite

    def save_then_die(state, run_dir, names):
        real(state, run_dir, names)
        if (state["epoch"], state["step"]) == (1, 2):
            raise _Crash  # as a SIGKILL right after the write
    monkeypatch.setattr(epochs_module, "save_finite", save_then_die)
    with pytest.raises(_Crash):
        make_trainer(_config(root, tmp_path / "runs", "cut", **kw), log=lambda *_: None).fit()
    monkeypatch.undo()
    logs = []
    resumed = make_trainer(_config(root, tmp_path / "runs", "cut", **kw), resume=True, log=logs.append)
    resumed.fit()
    assert any(m.startswith("resuming epoch 2 at step 3 of 4") for m in logs), logs
    for (k, a), b in zip(whole.distiller.state_dict().items(), resumed.distiller.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")
    assert [r["train_loss"] for r in whole.history] == [r["train_loss"] for r in resumed.history]


def test_accumulated_micro_batches_take_the_step_of_the_whole_batch(tiny, tmp_path):
    """train.accumulate on a detector: each micro-batch holds its share of the images (the lists are split) and
    the step averages the micro-batches' losses. With one canvas listed twice and every anchor and RoI sampled
    (so the samplers' random draws pick the same sets), one step on two micro-batches of one image equals one
    step on the batch of both: an unsplit batch, or micro-batches summed instead of averaged, would not."""
    from wdistill.engine.loop import StepWatcher
    root = _two_image_folder(tiny, tmp_path / "one", copies=2, ids=(1,))  # one step of 2 per epoch
    every = dict(SMALL, rois_per_image=100_000, rpn_batch_size_per_image=100_000)
    runs = {}
    for parts in (1, 2):
        cfg = _config(root, tmp_path / "runs", f"acc{parts}", student={"kwargs": every}, data={"flip": False},
                      train={"accumulate": parts}, optim={"epochs": 1, "milestones": [1], "lr": 0.02},
                      detection={"warmup_steps": 0})
        trainer = make_trainer(cfg, log=lambda *_: None)
        seen = []

        class Sizes(StepWatcher):
            def before_backward(self, step, batch, parts):
                seen.append(len(batch["images"]))
        trainer.watchers.append(Sizes())
        start = torch.cat([p.detach().flatten().clone() for p in trainer.student.parameters()])
        trainer.fit()
        runs[parts] = (seen, start, torch.cat([p.detach().flatten() for p in trainer.student.parameters()]))
    (seen1, start1, end1), (seen2, start2, end2) = runs[1], runs[2]
    assert seen1 == [2] and seen2 == [1]
    assert torch.equal(start1, start2) and (end1 - start1).norm() > 0
    assert (end2 - end1).norm() <= 1e-3 * (end1 - start1).norm(), ((end2 - end1).norm(), (end1 - start1).norm())


def _ddp_worker(rank: int, world: int, port: int, root: str, out_dir: str, teacher: dict, train: dict | None = None,
                backend: str | None = None) -> None:
    """One rank of a torchrun-like job (gloo): record the images it trains on in epoch 1, train, then
    score an oracle that "detects" each evaluation image's ground truth. ``train``: settings of the train section;
    ``backend``: the torch.compile backend of ``train.compile``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    if backend:
        compile_ = torch.nn.Module.compile
        torch.nn.Module.compile = lambda self, **kw: compile_(self, backend=backend)
    cfg = _config(root, out_dir, "ddp", teacher=teacher, loss=[{"name": "det"}, {"name": "kd", "T": 1.0}],
                  optim={"epochs": 2, "milestones": [2], "lr": 0.002}, train=train or {})
    trainer = make_trainer(cfg, log=lambda *_: None)
    trainer.train_loader.set_epoch(0)
    seen = [int(t["image_id"]) for b in trainer.train_loader for t in b["targets"]]
    start = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    summary = trainer.fit()
    truth = {}
    for b in DetectionLoader(trainer.test_set, 1, False):  # the whole evaluation split, on every rank
        truth.update({float(x.sum()): t for x, t in zip(b["images"], b["targets"])})
    asked = []

    class Oracle(torch.nn.Module):
        def forward(self, images):
            asked.extend(truth[float(x.sum())]["image_id"] for x in images)
            return [{"boxes": truth[float(x.sum())]["boxes"], "labels": truth[float(x.sum())]["labels"],
                     "scores": torch.ones(len(truth[float(x.sum())]["boxes"]))} for x in images]
    oracle = trainer.evaluate(Oracle())
    torch.save({"seen": seen, "steps": len(trainer.train_loader), "summary": summary, "oracle_AP": oracle["AP"],
                "asked": [int(i) for i in asked], "start": start, "student": trainer.student.state_dict()},
               os.path.join(out_dir, f"rank{rank}.pt"))
    del trainer  # its DDP wrap and vote group hold process groups: released after the destroy, gloo can abort
    ddp.leave()


def two_rank_run(tiny, tmp_path, train: dict | None = None, backend: str | None = None) -> tuple[dict, dict]:
    """Two gloo ranks (:func:`_ddp_worker`) on 8 training entries and 2 evaluation images, with a KD teacher;
    what each rank recorded."""
    import socket

    import torch.multiprocessing as mp
    root = _two_image_folder(tiny, tmp_path / "two", copies=4)
    torch.manual_seed(5)
    torch.save({"model": _randomize_bn(build_faster_rcnn("resnet18", 10, **SMALL)).state_dict()}, tmp_path / "t.pt")
    teacher = {"model": "detection:resnet18", "checkpoint": str(tmp_path / "t.pt"), "kwargs": dict(SMALL)}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(2, port, str(root), str(tmp_path / "runs"), teacher, train, backend),
                       nprocs=2, join=True, start_method="spawn")
    return tuple(torch.load(tmp_path / "runs" / f"rank{r}.pt", weights_only=True) for r in (0, 1))


def test_two_ranks_train_one_detector_on_the_global_batch_and_score_every_evaluation_image(tiny, tmp_path):
    """torchrun semantics for detectors (gloo, 2 ranks): the global batch of 2 is one image per rank,
    disjoint and together the whole split; DDP keeps the students bit-identical (and they trained);
    each rank detects on its own evaluation images and rank 0 scores them all: an oracle scores AP 1
    on both ranks (half of the images would miss, each image twice would add false positives);
    rank 0 alone writes the run directory."""
    r0, r1 = two_rank_run(tiny, tmp_path)
    assert r0["steps"] == r1["steps"] == 4 and len(r0["seen"]) == len(r1["seen"]) == 4
    assert not set(r0["seen"]) & set(r1["seen"]) and set(r0["seen"]) | set(r1["seen"]) == {
        1, 2, 11, 12, 21, 22, 31, 32}
    for k, v in r0["student"].items():
        assert torch.equal(v, r1["student"][k]), k
    assert any(not torch.equal(v, r0["start"][k]) for k, v in r0["student"].items())
    assert r0["oracle_AP"] == r1["oracle_AP"] == pytest.approx(1.0)
    assert len(r0["asked"]) == len(r1["asked"]) == 1 and {*r0["asked"], *r1["asked"]} == {1, 2}
    summary = json.loads((tmp_path / "runs/ddp/summary.json").read_text())
    assert summary["world_size"] == 2 and summary["final_AP"] == r0["summary"]["final_AP"] == r1["summary"]["final_AP"]
    assert len((tmp_path / "runs/ddp/metrics.csv").read_text().splitlines()) == 3  # a header and two epochs


@pytest.mark.parametrize("preset", ["coco/resnet101-resnet18/dkd", "coco/resnet50-mobilenet_v3_large/fitnet"])
def test_distill_from_a_coco_preset_on_a_tiny_coco_folder(preset, tiny, tmp_path, capsys):
    teacher_arch = preset.split("/")[1].split("-")[0]
    torch.manual_seed(0)
    small = yaml.safe_dump(SMALL, default_flow_style=True).strip()
    torch.save({"model": build_faster_rcnn(teacher_arch, 10, **SMALL).state_dict()}, tmp_path / "teacher.pt")
    mob = "mobilenet" in preset
    student_kw = dict(SMALL, anchor_sizes=[[8, 16, 32, 64, 128]] * 3) if mob else SMALL
    code = cli_main(["distill", preset, f"run.out_dir={tmp_path}", "run.device=cpu", f"data.root={tiny}",
                     "data.options.train_split=train", "data.options.eval_split=val", "data.workers=0",
                     "data.batch_size=2", "data.eval_batch_size=2", "student.pretrained=null",
                     f"student.kwargs={yaml.safe_dump(student_kw, default_flow_style=True).strip()}",
                     f"teacher.kwargs={small}", f"teacher.checkpoint={tmp_path / 'teacher.pt'}", "optim.epochs=1",
                     "optim.milestones=[1]", "train.max_steps=2", "train.progress=false", "detection.warmup_steps=1"])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    summary = json.loads((tmp_path / preset / "summary.json").read_text())
    assert summary["task"] == "detection" and 0 <= summary["final_AP"] <= 1
    assert summary["teacher_AP"] is not None and math.isfinite(summary["teacher_AP"])
    assert load_config(tmp_path / preset / "config.yaml").task == "detection"
