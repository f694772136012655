"""Build FMNIST-Det v1: object-detection canvases composed of real Fashion-MNIST items, in COCO format.

Each canvas is a greyscale ``size`` x ``size`` image, black (0) background as in Fashion-MNIST itself,
holding 1..``max_items`` items. An item is a 28x28 Fashion-MNIST image resized (bilinear, computed here
in numpy so the result does not depend on an image library's version) to a random side in
[``min_side``, ``max_side``] and placed at a random position; items are composited by pixel-wise
maximum, so an item never blacks out another. An item's box is the tight extent of its non-zero pixels
after scaling, in COCO pixel-edge coordinates: a box covering pixel columns c0..c1 has x = c0 and
w = c1 + 1 - c0. A placement whose box overlaps an already placed box by more than ``max_overlap`` of
the smaller box's area is redrawn (50 tries, then the item is left out), so no item is mostly hidden.

Splits: train canvases draw items from Fashion-MNIST's training split, val canvases from a part of the
training split disjoint from the train canvases' part (``VAL_POOL`` items carved out by a seeded
permutation), test canvases from the test split. Canvas ``i`` of a split reads only the seed, the split
and ``i`` (its items are slots ``max_items*i ..`` of the split's permuted pool), so any count gives the
same first canvases; a pool smaller than ``max_items * count`` is reused cyclically (said on stderr).

Writes ``OUT/images/{split}/NNNNNN.png`` and ``OUT/annotations/instances_{split}.json`` (category ids
1..10 with Fashion-MNIST's names; image and annotation ids from 1), every file atomically. The same
arguments give byte-identical JSON files. Besides COCO's fields each annotation records its item's
provenance, so the splits and boxes can be checked from the files alone: ``fmnist_split`` and
``fmnist_index`` (the source image) and ``placement`` ([left, top, side] of the resized patch).

    python scripts/make_fmnist_det.py --out data/fmnist_det --size 128 --train 2000 --val 500 --test 1000
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

VERSION = "FMNIST-Det v1"
SPLITS = ("train", "val", "test")
VAL_POOL = 10_000  # training items reserved for val canvases (as many as the test split has)
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")


def resize_bilinear(img: np.ndarray, side: int) -> np.ndarray:
    """``img`` (h, w uint8) resized to side x side by bilinear interpolation with half-pixel centres
    (the align_corners=False convention), rounded to uint8."""
    h, w = img.shape

    def taps(n_in, n_out):
        pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    y0, y1, fy = taps(h, side)
    x0, x1, fx = taps(w, side)
    f = img.astype(np.float64)
    top = f[y0][:, x0] * (1 - fx) + f[y0][:, x1] * fx
    bottom = f[y1][:, x0] * (1 - fx) + f[y1][:, x1] * fx
    out = top * (1 - fy)[:, None] + bottom * fy[:, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def tight_extent(patch: np.ndarray) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) pixel-edge box of the non-zero pixels of ``patch`` (x2, y2 exclusive)."""
    rows = np.flatnonzero(patch.any(axis=1))
    cols = np.flatnonzero(patch.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def overlap_fraction(a, b) -> float:
    """Intersection area of boxes a and b over the smaller box's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def make_canvas(rng: np.random.Generator, items: list[np.ndarray], size: int, min_side: int, max_side: int,
                max_overlap: float) -> tuple[np.ndarray, list[tuple]]:
    """Compose ``items`` (28x28 uint8) on a black size x size canvas.

    Returns the canvas and, for each placed item, (its index in ``items``, its exact box, its
    placement (left, top, side) of the resized 28x28 patch)."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    placed: list[tuple[int, tuple[int, int, int, int], tuple[int, int, int]]] = []
    for k, item in enumerate(items):
        side = int(rng.integers(min_side, max_side + 1))
        patch = resize_bilinear(item, side)
        ex = tight_extent(patch)
        for _ in range(50):
            top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            box = (left + ex[0], top + ex[1], left + ex[2], top + ex[3])
            if all(overlap_fraction(box, other) <= max_overlap for _, other, _ in placed):
                np.maximum(canvas[top:top + side, left:left + side], patch,
                           out=canvas[top:top + side, left:left + side])
                placed.append((k, box, (left, top, side)))
                break
    return canvas, placed


def split_pools(seed: int) -> dict[str, tuple[str, np.ndarray]]:
    """For each canvas split: (Fashion-MNIST split, permuted item indices it draws from). The val pool
    is carved from the training split, disjoint from the train pool."""
    perm_train = np.random.default_rng(np.random.SeedSequence([seed, 100])).permutation(60_000)
    perm_test = np.random.default_rng(np.random.SeedSequence([seed, 102])).permutation(10_000)
    return {"train": ("train", perm_train[VAL_POOL:]), "val": ("train", perm_train[:VAL_POOL]),
            "test": ("test", perm_test)}


def atomic_write_bytes(data: bytes, path: Path) -> None:
    """Write via a temporary file in the same directory and a rename: never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def png_bytes(canvas: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


def build_split(split: str, count: int, source: str, images: np.ndarray, labels: np.ndarray, pool: np.ndarray,
                args) -> dict:
    """Write ``count`` canvases of ``split`` as PNGs and return its COCO dictionary."""
    if args.max_items * count > len(pool):
        print(f"{split}: {count} canvases x {args.max_items} item slots exceed the {len(pool)} items of its "
              "pool; items are reused cyclically (at other scales and positions)", file=sys.stderr)
    out_dir = Path(args.out) / "images" / split
    coco_images, annotations = [], []
    split_id = SPLITS.index(split)
    for i in tqdm(range(count), desc=f"FMNIST-Det {split}", unit="canvas", disable=args.quiet):
        rng = np.random.default_rng(np.random.SeedSequence([args.seed, split_id, i]))
        n = int(rng.integers(1, args.max_items + 1))
        slots = pool[(args.max_items * i + np.arange(n)) % len(pool)]
        canvas, placed = make_canvas(rng, [images[j] for j in slots], args.size, args.min_side, args.max_side,
                                     args.max_overlap)
        name = f"{i:06d}.png"
        atomic_write_bytes(png_bytes(canvas), out_dir / name)
        coco_images.append({"id": i + 1, "file_name": name, "width": args.size, "height": args.size})
        for k, (x1, y1, x2, y2), placement in placed:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": int(labels[slots[k]]) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0, "fmnist_split": source,
                                "fmnist_index": int(slots[k]), "placement": list(placement)})
    settings = {k: getattr(args, k) for k in ("size", "min_side", "max_side", "max_items", "max_overlap", "seed")}
    return {"info": {"description": f"{VERSION}, {split} split: Fashion-MNIST items on canvases, made by "
                                    "scripts/make_fmnist_det.py", "version": VERSION, "settings": settings},
            "licenses": [], "images": coco_images, "annotations": annotations,
            "categories": [{"id": c + 1, "name": name, "supercategory": "fashion"} for c, name in enumerate(CLASSES)]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory (images/ and annotations/ are made in it)")
    p.add_argument("--size", type=int, default=128, help="canvas side in pixels (default 128)")
    p.add_argument("--train", type=int, default=2000, help="number of train canvases")
    p.add_argument("--val", type=int, default=500, help="number of val canvases")
    p.add_argument("--test", type=int, default=1000, help="number of test canvases")
    p.add_argument("--min-side", type=int, default=None, help="smallest item side (default 0.16 * size)")
    p.add_argument("--max-side", type=int, default=None, help="largest item side (default 0.44 * size)")
    p.add_argument("--max-items", type=int, default=4, help="items per canvas: 1..max-items (default 4)")
    p.add_argument("--max-overlap", type=float, default=0.3,
                   help="largest overlap of two boxes, as a fraction of the smaller box (default 0.3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fmnist-root", default=None, help="directory of the Fashion-MNIST IDX files (default Debian's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    args.min_side = args.min_side or round(0.16 * args.size)
    args.max_side = args.max_side or round(0.44 * args.size)
    problems = [m for bad, m in [
        (args.size < 16, "--size must be at least 16"),
        (not 8 <= args.min_side <= args.max_side <= args.size, "need 8 <= --min-side <= --max-side <= --size"),
        (args.max_items < 1, "--max-items must be at least 1"),
        (not 0 <= args.max_overlap <= 1, "--max-overlap must lie in [0, 1]"),
        (min(args.train, args.val, args.test) < 0, "canvas counts must be >= 0")] if bad]
    if problems:
        p.error("; ".join(problems))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from wdistill.data.idx import fashion_mnist
    try:
        data = {s: fashion_mnist(s, root=args.fmnist_root) for s in ("train", "test")}
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    arrays = {s: (d.images[:, 0].numpy(), d.targets.numpy()) for s, d in data.items()}
    pools = split_pools(args.seed)
    for split in SPLITS:
        source, pool = pools[split]
        coco = build_split(split, getattr(args, split), source, *arrays[source], pool, args)
        text = json.dumps(coco, sort_keys=True, separators=(",", ":")) + "\n"
        atomic_write_bytes(text.encode(), Path(args.out) / "annotations" / f"instances_{split}.json")
        if not args.quiet:
            print(f"{split}: {len(coco['images'])} canvases, {len(coco['annotations'])} boxes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
