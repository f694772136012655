"""Measure the CPU cost of detection training on FMNIST-Det canvases, to size the benchmark.

Times one SGD step (``detection_step`` + backward + update, batch ``--batch``) of Faster R-CNN
detectors at each canvas size and thread count, the extra time of the teacher's backbone and box
head on the student's proposals, one evaluation forward, and COCOeval over the test canvases.
Every number is the median of ``--steps`` timed steps after two warm-up steps; the 1-minute load
average is recorded before and after each measurement (the machine may be shared).

    python scripts/make_fmnist_det.py --out /tmp/fd128 --size 128 --train 64 --val 0 --test 1000
    OMP_NUM_THREADS=1 python scripts/det_cost.py --data 128=/tmp/fd128 --out cost.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchtools.measure import median_time  # noqa: E402
from wdistill.data.coco import CocoDetection, coco_evaluate, collate_detection  # noqa: E402
from wdistill.models.detection import build_faster_rcnn, detection_step  # noqa: E402

ARCHS = {  # name -> build_faster_rcnn arguments besides the size (anchors scaled to 16..256 px objects)
    "r50": dict(backbone="resnet50", anchor_sizes=((16,), (32,), (64,), (128,), (256,))),
    "r18": dict(backbone="resnet18", anchor_sizes=((16,), (32,), (64,), (128,), (256,))),
    "mbv3": dict(backbone="mobilenet_v3_large", anchor_sizes=((16, 32, 64, 128, 256),) * 3),
    "mbv3s8": dict(backbone="mobilenet_v3_large", returned_layers=[2, 3, 4, 5],
                   anchor_sizes=((16,), (32,), (64,), (128,), (256,))),
}


def build(arch: str, size: int, rois: int, post_nms_test: int = 1000):
    return build_faster_rcnn(num_classes=10, min_size=size, max_size=size, rois_per_image=rois,
                             rpn_post_nms_top_n_test=post_nms_test, **ARCHS[arch])


def timed(fn, steps: int) -> dict:
    load0 = os.getloadavg()[0]
    median, times = median_time(fn, steps, warmup=2)
    return {"median_s": median, "min_s": min(times), "load_before": load0, "load_after": os.getloadavg()[0]}


def train_step_fn(student, teacher, images, targets):
    # lr 0: the update's arithmetic is done but the weights stay put, so every timed step sees the same
    # proposals (an untrained detector stepped at a real lr may diverge, and NaN boxes make steps cheap).
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.0, momentum=0.9)
    student.train()

    def step():
        out = detection_step(student, images, targets, teacher)
        loss = sum(out["losses"].values())
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss.item()}: the timing would not be representative")
        if teacher is not None:  # a stand-in term so the backward covers what a distillation term adds
            loss = loss + (out["student"]["logits"] - out["teacher"]["logits"]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def measure(args) -> list[dict]:
    rows = []
    for spec in args.data:
        size, root = int(spec.split("=")[0]), Path(spec.split("=")[1])
        ds = CocoDetection(root / "images/train", root / "annotations/instances_train.json", train=True,
                           progress=False)
        images, targets = collate_detection([ds[i] for i in range(args.batch)])
        for threads in args.threads:
            torch.set_num_threads(threads)
            for arch in args.archs:
                for rois in args.rois:
                    torch.manual_seed(0)
                    student = build(arch, size, rois)
                    r = timed(train_step_fn(student, None, images, targets), args.steps)
                    rows.append({"what": "train_step", "arch": arch, "size": size, "threads": threads, "rois": rois,
                                 **r})
                    print(json.dumps(rows[-1]), flush=True)
                    if arch != args.teacher and threads == 1:
                        teacher = build(args.teacher, size, rois)
                        r = timed(train_step_fn(student, teacher, images, targets), args.steps)
                        rows.append({"what": "train_step+teacher", "arch": arch, "teacher": args.teacher,
                                     "size": size, "threads": threads, "rois": rois, **r})
                        print(json.dumps(rows[-1]), flush=True)
                    for post_nms in (args.post_nms_test if rois == args.rois[0] else []):
                        model = build(arch, size, rois, post_nms).eval()
                        with torch.no_grad():
                            r = timed(lambda m=model, x=images: m(x), args.steps)
                        rows.append({"what": "eval_forward", "arch": arch, "size": size, "threads": threads,
                                     "rpn_post_nms_top_n_test": post_nms, **r})
                        print(json.dumps(rows[-1]), flush=True)
    return rows


def cocoeval_cost(root: Path, per_image: int) -> dict:
    """COCOeval time over the test canvases for ``per_image`` detections per image: the ground truth
    slightly shifted (true positives) plus random boxes (false positives), random scores."""
    gt = CocoDetection(root / "images/test", root / "annotations/instances_test.json", progress=False).coco
    g = torch.Generator().manual_seed(0)
    size = next(iter(gt.imgs.values()))["width"]
    dets = []
    for img_id in gt.imgs:
        anns = gt.imgToAnns[img_id]
        true = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                             for a in anns], dtype=torch.float32) + torch.randn(len(anns), 4, generator=g)
        xy = torch.rand(per_image - len(anns), 2, generator=g) * size * 0.7
        fake = torch.cat([xy, xy + 8 + torch.rand(per_image - len(anns), 2, generator=g) * size * 0.3], 1)
        labels = [a["category_id"] for a in anns] + torch.randint(1, 11, (len(fake),), generator=g).tolist()
        dets.append({"image_id": img_id, "boxes": torch.cat([true, fake]), "labels": labels,
                     "scores": torch.rand(per_image, generator=g)})
    t0 = time.perf_counter()
    stats = coco_evaluate(gt, dets)
    return {"what": "cocoeval", "images": len(gt.imgs), "detections_per_image": per_image,
            "seconds": time.perf_counter() - t0, "AP": stats["AP"], "load": os.getloadavg()[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", required=True, help="SIZE=DIR of FMNIST-Det data made at that size")
    p.add_argument("--archs", nargs="*", default=["r50", "r18", "mbv3"], choices=sorted(ARCHS))
    p.add_argument("--teacher", default="r50", choices=sorted(ARCHS))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rois", nargs="+", type=int, default=[128], help="RoIs sampled per image")
    p.add_argument("--post-nms-test", nargs="*", type=int, default=[100],
                   help="RPN proposals kept per image at evaluation (torchvision's default is 1000)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--cocoeval", nargs="*", type=int, default=[], help="detections per image to time COCOeval at")
    p.add_argument("--out", default=None, help="JSON file for the measurements")
    args = p.parse_args(argv)
    rows = measure(args) if args.archs else []
    for n in args.cocoeval:
        rows.append(cocoeval_cost(Path(args.data[-1].split("=")[1]), n))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
