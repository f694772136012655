"""Detection: COCO-format data and COCOeval, Faster R-CNN builders, the distillation forward.

Needs torchvision and pycocotools, so it runs in the separate venv of `scripts/tv_venv.sh` with
WDISTILL_REQUIRE_TV=1, where a missing package fails instead of skipping (as in
tests/test_timm_torchvision.py). The canvas generator and the transforms need neither: their tests
(tests/test_fmnist_det.py, tests/test_det_transforms.py) run in the main suite.
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import require_importable
from PIL import Image

tv = require_importable("torchvision")
require_importable("pycocotools")

from wdistill.data import coco as coco_mod  # noqa: E402
from wdistill.data.coco import CocoDetection, coco_evaluate, collate_detection  # noqa: E402
from wdistill.errors import ConfigError  # noqa: E402
from wdistill.models.detection import build_faster_rcnn, detection_step  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = dict(min_size=64, max_size=64, anchor_sizes=((8,), (16,), (32,), (64,), (128,)), rois_per_image=32)


def _randomize_bn(model):
    with torch.no_grad():
        for m in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.3, 0.3), m.running_var.uniform_(0.5, 2.0)
    return model


def _batch():
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 48, 64, generator=g), torch.rand(3, 48, 64, generator=g)]  # resized by 4/3 to 64x85
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [36.0, 2.0, 60.0, 20.0]]),
                "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[10.0, 10.0, 50.0, 44.0]]), "labels": torch.tensor([2])}]
    return images, targets


def test_teacher_logits_on_student_proposals_equal_a_hand_run_of_its_box_head():
    torch.manual_seed(0)
    size = dict(SMALL, max_size=96)  # 48 x 64 images: short side to 64, i.e. scaled by 4/3
    student = build_faster_rcnn("resnet18", 3, **size).train()
    teacher = _randomize_bn(build_faster_rcnn("resnet34", 3, image_mean=[0.3, 0.4, 0.5], image_std=[0.2, 0.25, 0.3],
                                              **size)).train()  # detection_step must put it in eval mode
    stats = {k: v.clone() for k, v in teacher.state_dict().items()}
    images, targets = _batch()
    out = detection_step(student, images, targets, teacher)
    assert not teacher.training and not out["teacher"]["logits"].requires_grad
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, stats[k]), f"the teacher's {k} changed"
    # By hand: the teacher's own normalisation, the student's resize (64 / 48 = 4/3), zeros to 64 x 96 (x 32).
    mean, std = torch.tensor([0.3, 0.4, 0.5])[:, None, None], torch.tensor([0.2, 0.25, 0.3])[:, None, None]
    x = torch.zeros(2, 3, 64, 96)
    for i, img in enumerate(images):
        r = F.interpolate(((img - mean) / std)[None], scale_factor=64 / 48, mode="bilinear", align_corners=False,
                          recompute_scale_factor=True)[0]
        x[i, :, :r.shape[1], :r.shape[2]] = r
    assert out["image_sizes"] == [(64, 85), (64, 85)]
    with torch.no_grad():
        feats = teacher.backbone(x)
        pooled = teacher.roi_heads.box_roi_pool(feats, out["proposals"], out["image_sizes"])
        logits, deltas = teacher.roi_heads.box_predictor(teacher.roi_heads.box_head(pooled))
    for key, want in zip(("roi_feats", "logits", "box_regression"), (pooled, logits, deltas)):
        got = out["teacher"][key]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["teacher"]["fpn"]["0"], feats["0"], atol=1e-4, rtol=1e-4)
    own = student.roi_heads.box_roi_pool(out["student"]["fpn"], out["proposals"], out["image_sizes"])
    torch.testing.assert_close(out["student"]["roi_feats"], own)  # the proposals returned are those both heads read
    assert out["student"]["roi_feats"].shape == out["teacher"]["roi_feats"].shape == (len(logits), 256, 7, 7)
    assert out["student"]["logits"].shape == logits.shape == (len(out["roi_labels"]), 4)
    assert list(out["student"]["fpn"]) == list(out["teacher"]["fpn"]) == ["0", "1", "2", "3", "pool"]


def test_student_losses_and_roi_labels_are_torchvisions():
    torch.manual_seed(0)
    student = build_faster_rcnn("resnet18", 3, **SMALL).train()
    teacher = build_faster_rcnn("resnet18", 3, **SMALL)
    images, targets = _batch()
    torch.manual_seed(5)
    ref = student(images, targets)  # torchvision's own forward
    torch.manual_seed(5)
    out = detection_step(student, images, targets, teacher)  # the teacher draws no random numbers
    assert set(out["losses"]) == set(ref)
    for k in ref:
        torch.testing.assert_close(out["losses"][k], ref[k], rtol=0, atol=0)
    # Matched labels by hand: the label of the ground-truth box of largest IoU when it is >= 0.5, else 0.
    for boxes, t, labels in zip(out["proposals"], out["targets"],
                                out["roi_labels"].split([len(p) for p in out["proposals"]])):
        iou = tv.ops.box_iou(boxes, t["boxes"])
        best, idx = iou.max(dim=1)
        torch.testing.assert_close(labels, torch.where(best >= 0.5, t["labels"][idx], torch.zeros_like(idx)))
        assert (labels > 0).sum() >= len(t["boxes"])  # the ground-truth boxes are among the proposals


def test_a_detection_step_adds_one_host_read_to_torchvisions_own():
    """On a GPU torchvision's Faster R-CNN syncs many times a step (value-sized proposals, NMS, sampling); ours
    adds one: the check of the batch's boxes, read once for the whole batch (it was once per image, plus the
    teacher's statistics copied to the device and compared there every step)."""
    from benchtools.host_sync import recording
    torch.manual_seed(0)
    student, teacher = build_faster_rcnn("resnet18", 3, **SMALL).train(), build_faster_rcnn("resnet18", 3, **SMALL)
    images, targets = _batch()
    with recording() as found:
        detection_step(student, images, targets, teacher)
    ours = [f for f in found if "/wdistill/" in f]
    assert len(ours) == 1 and "_local_scalar_dense" in ours[0] and "detection.py" in ours[0], ours
    assert any("/torchvision/" in f and "nonzero" in f for f in found)  # the record does see torchvision's


def test_detection_step_errors_are_clear():
    student = build_faster_rcnn("resnet18", 3, **SMALL)
    images, targets = _batch()
    with pytest.raises(ConfigError, match="student.train"):
        detection_step(student.eval(), images, targets)
    targets[1]["boxes"][0, 2] = 5.0  # x2 < x1
    with pytest.raises(ConfigError, match=r"target 1: box \[\d.*\] has no positive width"):
        detection_step(student.train(), images, targets)
    images, targets = _batch()
    with pytest.raises(ConfigError, match="same categories"):
        detection_step(student, images, targets, build_faster_rcnn("resnet18", 5, **SMALL))


def test_builders_class_count_weights_and_trainable_layers(tmp_path):
    r50, mob = build_faster_rcnn("resnet50", 7), build_faster_rcnn("mobilenet_v3_large", 7, anchor_sizes=((16,),) * 3)
    assert r50.roi_heads.box_predictor.cls_score.out_features == mob.roi_heads.box_predictor.cls_score.out_features == 8
    assert isinstance(r50.backbone.body.bn1, torch.nn.BatchNorm2d) and all(p.requires_grad for p in r50.parameters())
    cls = tv.models.resnet18(num_classes=1000)
    torch.save(cls.state_dict(), tmp_path / "r18.pt")
    det = build_faster_rcnn("resnet18", 4, backbone_weights=tmp_path / "r18.pt", min_size=96, max_size=96)
    torch.testing.assert_close(det.backbone.body.layer3[0].conv1.weight, cls.layer3[0].conv1.weight)
    assert isinstance(det.backbone.body.bn1, tv.ops.misc.FrozenBatchNorm2d)  # "auto": pretrained -> frozen
    body = det.backbone.body  # trainable_layers 3 by default when pretrained: layer2..layer4
    assert not body.layer1[0].conv1.weight.requires_grad and body.layer2[0].conv1.weight.requires_grad
    mob = tv.models.mobilenet_v3_large()
    torch.save({"model": mob.state_dict()}, tmp_path / "mob.pt")
    det_m = build_faster_rcnn("mobilenet_v3_large", 4, backbone_weights=tmp_path / "mob.pt", trainable_layers=6)
    torch.testing.assert_close(det_m.backbone.body["16"][0].weight, mob.features[16][0].weight)
    torch.save(det.state_dict(), tmp_path / "det.pt")
    other = build_faster_rcnn("resnet18", 9, weights=tmp_path / "det.pt", min_size=96, max_size=96)
    torch.testing.assert_close(other.roi_heads.box_head.fc6.weight, det.roi_heads.box_head.fc6.weight)
    assert other.roi_heads.box_predictor.cls_score.out_features == 10  # another class count: head left new
    with pytest.raises(ConfigError, match="does not exist"):
        build_faster_rcnn("resnet18", 4, weights=tmp_path / "none.pt")
    with pytest.raises(ConfigError, match="do not fit"):
        build_faster_rcnn("resnet34", 4, weights=tmp_path / "det.pt")
    with pytest.raises(ConfigError, match="one tuple of sizes per FPN level"):
        build_faster_rcnn("resnet18", 4, anchor_sizes=((8,), (16,)))
    with pytest.raises(ConfigError, match="resnet18"):
        build_faster_rcnn("vgg16", 4)


def _gt_file(tmp_path, images, anns, cats=(1,)):
    data = {"images": [{"id": i, "file_name": f"{i}.png", "width": w, "height": h} for i, w, h in images],
            "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
                             "iscrowd": 0} for k, (i, c, b) in enumerate(anns)],
            "categories": [{"id": c, "name": f"c{c}"} for c in cats]}
    (path := tmp_path / "gt.json").write_text(json.dumps(data))
    return path


def _xyxy(b):
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


def test_cocoeval_perfect_detections_give_ap_one_and_nan_for_empty_size_ranges(tmp_path):
    anns = [(1, 1, [0, 0, 10, 10]), (1, 1, [40, 40, 12, 8]), (2, 1, [5, 5, 20, 25])]
    gt = _gt_file(tmp_path, [(1, 64, 64), (2, 64, 64)], anns)
    dets = [{"image_id": i, "boxes": [_xyxy(b) for j, _, b in anns if j == i],
             "scores": [0.9] * sum(j == i for j, _, _ in anns), "labels": [1] * sum(j == i for j, _, _ in anns)}
            for i in (1, 2)]
    stats = coco_evaluate(gt, dets)
    assert stats["AP"] == stats["AP50"] == stats["AP75"] == stats["APs"] == 1.0
    assert np.isnan(stats["APm"]) and np.isnan(stats["APl"])  # no ground truth of those sizes
    assert coco_evaluate(gt, [])["AP"] == 0.0


def test_cocoeval_on_a_hand_worked_case(tmp_path):
    # 3 ground-truth boxes; detections by score: A hits G1, B is a false positive, C hits G2, D overlaps G3
    # with IoU 0.62 (true positive at IoU thresholds 0.50, 0.55, 0.60; false positive at 0.65 ... 0.95).
    g1, g2, g3 = [0, 0, 10, 10], [0, 0, 10, 10], [30, 30, 10, 10]
    gt = _gt_file(tmp_path, [(1, 64, 64), (2, 64, 64)], [(1, 1, g1), (2, 1, g2), (2, 1, g3)])
    dets = [{"image_id": 1, "boxes": [_xyxy(g1), [50, 50, 60, 60]], "scores": [0.9, 0.8], "labels": [1, 1]},
            {"image_id": 2, "boxes": [_xyxy(g2), [30, 30, 40, 36.2]], "scores": [0.7, 0.6], "labels": [1, 1]}]
    # Loose thresholds: TP FP TP TP -> recall 1/3 1/3 2/3 1, precision 1 1/2 2/3 3/4; its right envelope is
    # 1 3/4 3/4 3/4. Of the 101 recall points 0, 0.01, ..., 1, the 34 up to 1/3 read 1, the other 67 read 3/4.
    loose = (34 * 1 + 67 * 0.75) / 101
    # Strict thresholds: TP FP TP FP -> recall 1/3 1/3 2/3 2/3, envelope 1 2/3 2/3 1/2: 34 points read 1, the
    # 33 in (1/3, 2/3] read 2/3, the 34 above recall 2/3 read 0.
    strict = (34 * 1 + 33 * 2 / 3) / 101
    stats = coco_evaluate(gt, dets)
    assert stats["AP50"] == pytest.approx(loose, abs=1e-9)
    assert stats["AP75"] == pytest.approx(strict, abs=1e-9)
    assert stats["AP"] == pytest.approx((3 * loose + 7 * strict) / 10, abs=1e-9)


def test_cocoeval_maps_labels_to_category_ids_and_boxes_to_the_original_scale(tmp_path):
    anns = [(1, 7, [10, 20, 30, 20]), (1, 3, [50, 40, 40, 30])]  # category ids 3 and 7 -> labels 1 and 2
    gt = _gt_file(tmp_path, [(1, 100, 80)], anns, cats=(7, 3))
    seen = [[b[0] / 4, b[1] / 2, (b[0] + b[2]) / 4, (b[1] + b[3]) / 2] for _, _, b in anns]  # it saw 25 x 40
    right = {"image_id": 1, "boxes": seen, "scores": [0.9, 0.8], "labels": [2, 1], "image_size": (40, 25)}
    assert coco_evaluate(gt, [right])["AP"] == pytest.approx(1.0, abs=1e-12)
    assert coco_evaluate(gt, [{**right, "labels": [1, 2]}])["AP"] == 0.0
    assert coco_evaluate(gt, [{**right, "image_size": None}])["AP"] == 0.0
    with pytest.raises(ConfigError, match="1..2"):
        coco_evaluate(gt, [{**right, "labels": [0, 1]}])


def _folder(tmp_path, anns, images=((1, 40, 30), (2, 40, 30)), cats=(1, 2)):
    for i, w, h in images:
        Image.fromarray(np.full((h, w), 80 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    return tmp_path, _gt_file(tmp_path, images, anns, cats)


def test_boxes_outside_the_image_are_clipped_or_dropped_crowds_left_out_and_all_reported(tmp_path):
    root, ann = _folder(tmp_path, [(1, 1, [-5, 2, 15, 10]), (1, 2, [30, 20, 20, 20]), (1, 1, [45, 5, 5, 5]),
                                   (2, 2, [3, 4, 0, 6]), (2, 1, [1, 1, 4, 4])])
    data = json.loads(ann.read_text())
    data["annotations"][4]["iscrowd"] = 1  # image 2 is left with no usable box: skipped for training
    ann.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="1 skipped for training .* 2 boxes clipped to their image, 2 dropped"):
        ds = CocoDetection(root, ann, train=True, progress=False)
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 2.0, 10.0, 12.0], [30.0, 20.0, 40.0, 30.0]]))
    assert target["labels"].tolist() == [1, 2] and target["image_id"] == 1 and target["orig_size"] == (30, 40)
    assert len(ds) == 1 and ds.report == {"images": 2, "skipped_empty": 1, "clipped": 2, "dropped": 2, "crowd": 1}


def test_unknown_category_id_names_file_annotation_and_known_ids(tmp_path):
    root, ann = _folder(tmp_path, [(1, 1, [0, 0, 5, 5]), (2, 9, [0, 0, 5, 5])], cats=(1, 2))
    with pytest.raises(ConfigError) as e:
        CocoDetection(root, ann, progress=False)
    assert all(part in str(e.value) for part in (str(ann), "annotation 2", "category_id 9", "known ids: [1, 2]"))


def test_images_without_annotations_are_kept_for_eval_and_skipped_for_training(tmp_path):
    root, ann = _folder(tmp_path, [(1, 1, [0, 0, 5, 5])])
    assert len(CocoDetection(root, ann, train=False, progress=False)) == 2
    ds = CocoDetection(root, ann, train=True, progress=False)
    assert len(ds) == 1 and ds.report["skipped_empty"] == 1 and "1 skipped for training" in ds.summary()
    keep = CocoDetection(root, ann, train=True, keep_empty=True, progress=False)
    assert len(keep) == 2 and keep[1][1]["boxes"].shape == (0, 4) and keep[1][1]["labels"].shape == (0,)


def test_missing_and_unreadable_images_are_all_listed_before_training(tmp_path):
    root, ann = _folder(tmp_path, [(1, 1, [0, 0, 5, 5])], images=((1, 40, 30), (2, 40, 30), (3, 40, 30)))
    (root / "2.png").write_bytes(b"not an image")
    (root / "3.png").unlink()
    with pytest.raises(ConfigError) as e:
        CocoDetection(root, ann, progress=False)
    assert "2 of 3 images" in str(e.value) and f"{root / '2.png'}: unreadable" in str(e.value)
    assert f"{root / '3.png'}: missing" in str(e.value)


def test_malformed_annotation_files_get_a_message(tmp_path, monkeypatch):
    root, ann = _folder(tmp_path, [(1, 1, [0, 0, "5", 5])])
    with pytest.raises(ConfigError, match=r"annotation\(s\) \[1\] have a bbox that is not four finite numbers"):
        CocoDetection(root, ann, progress=False)
    (root / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        CocoDetection(root, root / "bad.json", progress=False)
    monkeypatch.setattr(coco_mod, "COCO", None)
    with pytest.raises(ConfigError, match="pip install pycocotools"):
        CocoDetection(root, ann, progress=False)


def _generator():  # scripts/make_fmnist_det.py as a module (its own tests: tests/test_fmnist_det.py)
    spec = importlib.util.spec_from_file_location("gen", Path(__file__).parents[1] / "scripts" / "make_fmnist_det.py")
    spec.loader.exec_module(mod := importlib.util.module_from_spec(spec))
    return mod

def test_a_two_image_student_learns_from_the_detector_losses(tmp_path, fmnist_dir):
    _generator().main(["--out", str(tmp_path), "--size", "64", "--train", "2", "--val", "0", "--test", "0",
                       "--quiet", "--fmnist-root", fmnist_dir])
    ds = CocoDetection(tmp_path / "images" / "train", tmp_path / "annotations" / "instances_train.json", train=True,
                       progress=False)
    images, targets = collate_detection([ds[0], ds[1]])
    torch.manual_seed(0)
    student = build_faster_rcnn("resnet18", 10, **SMALL).train()
    opt = torch.optim.SGD(student.parameters(), lr=0.02, momentum=0.9)

    def fixed_draw_loss():  # the same proposal and RoI samples before and after training
        torch.manual_seed(123)
        with torch.no_grad():
            return sum(detection_step(student, images, targets)["losses"].values()).item()

    before = fixed_draw_loss()
    for _ in range(30):
        loss = sum(detection_step(student, images, targets)["losses"].values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_draw_loss() < 0.5 * before
    with torch.no_grad():
        predictions = student.eval()(images)
    stats = coco_evaluate(ds.coco, [{"image_id": t["image_id"], **p} for t, p in zip(targets, predictions)])
    assert stats["AP50"] > 0.1, stats
