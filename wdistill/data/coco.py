"""COCO-format object detection: a streamed dataset over an image folder + annotation JSON, and COCOeval.

pycocotools is an optional dependency. It is imported at the top inside a try/except, so this module
imports without it; building a dataset or evaluating without it raises one :class:`ConfigError`
saying how to install it. Annotations are read with json and checked here first, so a malformed file
gets a message naming what is wrong instead of a KeyError from inside pycocotools.

Targets follow torchvision's detection format: ``boxes`` float32 (N, 4) as (x1, y1, x2, y2) in
pixels of the returned image, ``labels`` int64 (N,) in 1..K (the file's category ids in ascending
order map to 1..K; 0 is the background), plus ``image_id`` (the file's id, an int) and ``orig_size``
((height, width) of the file's image, for mapping predictions back).

Policy for bad input, all decided when the dataset is built (before any training step):

- a box reaching outside its image is clipped to it; a box empty after clipping (or of zero or
  negative width/height) is dropped. Both are counted in :attr:`CocoDetection.report` (a box
  counts once, as clipped or as dropped) and said in one warning. A bbox that is not four finite
  numbers is an error naming the annotation. An annotation without ``area`` gets its box's area
  (COCOeval sorts boxes into small/medium/large by it).
- an annotation whose ``category_id`` is not among the file's categories is an error naming the
  file, the annotation id and the known ids (guessing a class would train on a wrong label).
- crowd annotations (``iscrowd`` 1) are not training targets (as in torchvision's and detectron2's
  COCO recipes); COCOeval still reads them from the file as regions to ignore.
- an image without usable boxes is kept for evaluation (its false positives count against AP) and
  skipped for training by default (``keep_empty=False``): it has no positive anchor or RoI, so
  in a small batch it only pushes the detector towards background, and the RoI-logit
  distillation terms would see background RoIs only (detectron2's FILTER_EMPTY_ANNOTATIONS and
  torchvision's reference recipe drop them too).
- a missing image file, one Pillow cannot open, or one whose size disagrees with the file's
  width/height: one error listing every such file (headers are read once, up front; an image
  whose pixel data is corrupt past its header fails when it is read, naming the file).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from wdistill.errors import ConfigError

_MISSING = "pycocotools is not installed"
try:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
except ImportError as _e:  # optional: only needed once COCO data is used
    COCO = COCOeval = None
    _MISSING = str(_e)

INSTALL = "pip install pycocotools"


def require_pycocotools() -> None:
    if COCO is None:
        raise ConfigError(f"COCO-format data needs pycocotools, which is not importable ({_MISSING}): {INSTALL}")


def _quiet_coco(dataset: dict) -> "COCO":
    """A pycocotools COCO index over an already validated dict, without its prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_coco(ann_file: str | os.PathLike) -> "COCO":
    """Read and check a COCO annotation file: its structure, unique ids, every annotation's image
    and category. Raises ConfigError naming the file and what is wrong."""
    require_pycocotools()
    ann_file = Path(ann_file)
    try:
        data = json.loads(ann_file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"annotation file {ann_file} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"annotation file {ann_file} is not readable JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or \
            not isinstance(data.get("categories"), list):
        raise ConfigError(f"{ann_file} is not a COCO annotation file: it needs a JSON object with the lists "
                          "'images', 'categories' and (optionally) 'annotations'")
    data.setdefault("annotations", [])
    for key, need in (("images", ("id", "file_name")), ("categories", ("id",)),
                      ("annotations", ("id", "image_id", "category_id", "bbox"))):
        bad = [i for i, e in enumerate(data[key]) if not isinstance(e, dict) or any(k not in e for k in need)
               or any(not isinstance(e[k], int) for k in need if k.endswith("id"))]
        if bad:
            raise ConfigError(f"{ann_file}: {len(bad)} entries of '{key}' lack one of {list(need)} or have an id "
                              f"that is not an integer (first at position {bad[0]})")
        ids = [e["id"] for e in data[key]]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{ann_file}: the ids of '{key}' are not unique")
    _check_references(ann_file, data)
    for a in data["annotations"]:  # COCOeval sorts boxes into small/medium/large by 'area'
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
    return _quiet_coco(data)


def _check_references(ann_file: Path, data: dict) -> None:
    known_cats = sorted(c["id"] for c in data["categories"])
    image_ids = {im["id"] for im in data["images"]}
    cats = set(known_cats)
    unknown = [a for a in data["annotations"] if a["category_id"] not in cats]
    if unknown:
        a = unknown[0]
        raise ConfigError(f"{ann_file}: annotation {a['id']} has category_id {a['category_id']!r}, which is not "
                          f"among the file's categories (known ids: {known_cats}); {len(unknown)} annotation(s) "
                          "in all. Fix their category_id or add the category to 'categories'")
    orphans = [a for a in data["annotations"] if a["image_id"] not in image_ids]
    if orphans:
        raise ConfigError(f"{ann_file}: annotation {orphans[0]['id']} refers to image_id "
                          f"{orphans[0]['image_id']!r}, which is not in 'images' ({len(orphans)} such annotation(s))")
    malformed = [a["id"] for a in data["annotations"] if not _is_xywh(a["bbox"])]
    if malformed:
        raise ConfigError(f"{ann_file}: annotation(s) {malformed[:10]} have a bbox that is not four finite "
                          f"numbers [x, y, width, height] ({len(malformed)} in all)")


def _is_xywh(b) -> bool:
    return (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)
            and all(math.isfinite(v) for v in b))


def category_ids(coco: "COCO") -> list[int]:
    """The file's category ids in ascending order: label ``k`` (1..K) is ``category_ids[k - 1]``."""
    return sorted(coco.cats)


def check_image_files(image_dir: Path, coco: "COCO", progress: bool = True) -> dict[int, tuple[int, int]]:
    """(height, width) of every image, read from its header; one ConfigError listing every missing,
    unreadable or wrongly sized file."""
    sizes, bad = {}, []
    for img_id, im in tqdm(coco.imgs.items(), desc="checking images", unit="img", disable=not progress,
                           leave=False):
        path = image_dir / im["file_name"]
        try:
            with Image.open(path) as f:
                w, h = f.size
        except FileNotFoundError:
            bad.append(f"{path}: missing")
            continue
        except (OSError, ValueError) as e:  # UnidentifiedImageError is an OSError
            bad.append(f"{path}: unreadable ({e})")
            continue
        if ("width" in im and im["width"] != w) or ("height" in im and im["height"] != h):
            bad.append(f"{path}: is {w}x{h} but the annotation file says {im.get('width')}x{im.get('height')}")
            continue
        sizes[img_id] = (h, w)
    if bad:
        raise ConfigError(f"{len(bad)} of {len(coco.imgs)} images under {image_dir} cannot be used (fix or remove "
                          "them, with their entries in the annotation file):\n  " + "\n  ".join(bad))
    return sizes


def image_targets(coco: "COCO", img_id: int, size: tuple[int, int], label_of: dict[int, int],
                  report: dict) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (N, 4) x1y1x2y2 clipped to ``size`` = (h, w), labels ``label_of[category_id]``) of one
    image; crowd annotations and empty boxes are left out and counted in ``report``."""
    h, w = size
    boxes, labels = [], []
    for a in coco.imgToAnns.get(img_id, []):
        if a.get("iscrowd", 0):
            report["crowd"] += 1
            continue
        x, y, bw, bh = (float(v) for v in a["bbox"])
        box = [min(max(x, 0.0), w), min(max(y, 0.0), h), min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)]
        if box[2] <= box[0] or box[3] <= box[1]:
            report["dropped"] += 1
            continue
        if box != [x, y, x + bw, y + bh]:
            report["clipped"] += 1
        boxes.append(box)
        labels.append(label_of[a["category_id"]])
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


class CocoDetection(torch.utils.data.Dataset):
    """Images of ``image_dir`` named by ``ann_file`` (COCO format), read from disk one by one.

    ``transforms(image, target) -> (image, target)``: e.g. :mod:`wdistill.data.det_transforms`.
    ``train``: skip images without usable boxes unless ``keep_empty`` (see the module policy).
    ``check_files``: read every image header up front (the sizes also clip the boxes); without it
    every image entry needs ``width`` and ``height``. Returns (float image (3, H, W) in [0, 1],
    target dict); :attr:`report` counts clipped/dropped/crowd boxes and skipped images.
    """

    def __init__(self, image_dir: str | os.PathLike, ann_file: str | os.PathLike, transforms=None,
                 train: bool = False, keep_empty: bool = False, check_files: bool = True, progress: bool = True):
        self.image_dir, self.ann_file, self.transforms = Path(image_dir), Path(ann_file), transforms
        self.coco = load_coco(ann_file)
        self.category_ids = category_ids(self.coco)
        self.num_classes = len(self.category_ids)
        self.classes = tuple(self.coco.cats[c].get("name", str(c)) for c in self.category_ids)
        if check_files:
            sizes = check_image_files(self.image_dir, self.coco, progress)
            for img_id, (h, w) in sizes.items():  # COCOeval's rescaling reads them
                self.coco.imgs[img_id].setdefault("height", h)
                self.coco.imgs[img_id].setdefault("width", w)
        else:
            no_size = [i for i, im in self.coco.imgs.items() if "width" not in im or "height" not in im]
            if no_size:
                raise ConfigError(f"{ann_file}: {len(no_size)} images lack width/height (e.g. id {no_size[0]}); "
                                  "add them or build the dataset with check_files=True to read them from the files")
            sizes = {i: (im["height"], im["width"]) for i, im in self.coco.imgs.items()}
        label_of = {c: k + 1 for k, c in enumerate(self.category_ids)}
        self.report = {"images": len(sizes), "skipped_empty": 0, "clipped": 0, "dropped": 0, "crowd": 0}
        self.items = []
        for img_id in sorted(sizes):
            boxes, labels = image_targets(self.coco, img_id, sizes[img_id], label_of, self.report)
            if train and not keep_empty and len(boxes) == 0:
                self.report["skipped_empty"] += 1
                continue
            self.items.append((img_id, sizes[img_id], boxes, labels))
        if not self.items:
            raise ConfigError(f"{ann_file}: no usable image ({self.summary()})")
        if self.report["clipped"] or self.report["dropped"]:
            warnings.warn(f"{ann_file}: {self.summary()}", stacklevel=2)

    def summary(self) -> str:
        r = self.report
        return (f"{r['images']} images, {r['skipped_empty']} skipped for training as they have no usable box; "
                f"{r['clipped']} boxes clipped to their image, {r['dropped']} dropped as empty, "
                f"{r['crowd']} crowd annotations not used as targets")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        img_id, size, boxes, labels = self.items[i]
        path = self.image_dir / self.coco.imgs[img_id]["file_name"]
        try:
            with Image.open(path) as f:
                pixels = np.asarray(f.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError) as e:
            raise ConfigError(f"image {path} cannot be decoded ({e}); fix or remove it and its annotations") from None
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255)
        target = {"boxes": torch.from_numpy(boxes.copy()), "labels": torch.from_numpy(labels.copy()),
                  "image_id": img_id, "orig_size": size}
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def collate_detection(batch):
    """A detection batch: (list of images, list of targets); images may differ in size."""
    return [b[0] for b in batch], [b[1] for b in batch]


STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_evaluate(coco_gt, detections: list[dict], image_ids: list[int] | None = None) -> dict[str, float]:
    """COCO box AP of ``detections`` against ``coco_gt`` (a COCO object or an annotation file).

    Each detection dict holds ``image_id``, ``boxes`` (x1y1x2y2 in pixels of the image the model
    saw), ``scores``, ``labels`` (1..K, the dataset's contiguous labels) and optionally
    ``image_size`` ((h, w) the model saw; boxes are rescaled to the file's width/height). Labels
    are mapped back to the file's category ids. ``image_ids``: evaluate on these images only
    (default: every image of the file). Returns COCOeval's stats[0:6] as
    {AP, AP50, AP75, APs, APm, APl} in [0, 1]; NaN where the file has no box of that size range.
    """
    gt = coco_gt if COCO is not None and isinstance(coco_gt, COCO) else load_coco(coco_gt)
    cat_of = category_ids(gt)
    anns = []
    for det in detections:
        img_id = int(det["image_id"])
        if img_id not in gt.imgs:
            raise ConfigError(f"detections name image_id {img_id}, which is not in the ground truth")
        boxes = torch.as_tensor(det["boxes"], dtype=torch.float64).reshape(-1, 4).clone()
        if det.get("image_size") is not None:
            h, w = (int(v) for v in det["image_size"])
            im = gt.imgs[img_id]
            boxes *= torch.tensor([im["width"] / w, im["height"] / h] * 2, dtype=torch.float64)
        labels = torch.as_tensor(det["labels"]).reshape(-1).tolist()
        if labels and not 1 <= min(labels) <= max(labels) <= len(cat_of):
            raise ConfigError(f"detection labels must lie in 1..{len(cat_of)} (0 is the background), got "
                              f"{min(labels)}..{max(labels)} for image {img_id}")
        for (x1, y1, x2, y2), s, k in zip(boxes.tolist(), torch.as_tensor(det["scores"]).tolist(), labels):
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat_of[k - 1],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "score": s,
                         "iscrowd": 0})
    res = _quiet_coco({"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": anns})
    ev = COCOeval(gt, res, iouType="bbox")
    if image_ids is not None:
        ev.params.imgIds = sorted(int(i) for i in image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (float("nan") if v < 0 else float(v)) for k, v in zip(STAT_NAMES, ev.stats[:6])}
