"""scripts/make_fmnist_det.py, the FMNIST-Det v1 canvas generator: exact boxes, split provenance and
byte-identical output. It needs only numpy, Pillow, torch and Fashion-MNIST, so these tests run in the
main suite (detection models and COCO data: tests/test_detection_data_models.py, in the tv venv)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wdistill.data.idx import fashion_mnist


def _generator():
    spec = importlib.util.spec_from_file_location("make_fmnist_det",
                                                  Path(__file__).parents[1] / "scripts" / "make_fmnist_det.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_resize_is_bilinear_with_half_pixel_centres():
    gen = _generator()
    img = np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.uint8)
    for side in (13, 28, 41, 56):
        want = F.interpolate(torch.from_numpy(img).double()[None, None], size=(side, side), mode="bilinear",
                             align_corners=False)[0, 0].round().numpy()
        assert np.abs(gen.resize_bilinear(img, side).astype(float) - want).max() <= 1  # rounding of exact halves


@pytest.fixture
def made(tmp_path, fmnist_dir):
    out = tmp_path / "made"
    args = ["--size", "64", "--train", "12", "--val", "4", "--test", "6", "--quiet", "--fmnist-root", fmnist_dir]
    gen = _generator()
    assert gen.main(["--out", str(out / "a"), *args]) == 0
    assert gen.main(["--out", str(out / "b"), *args]) == 0
    return gen, out


def test_same_arguments_give_byte_identical_files(made):
    _, out = made
    for split in ("train", "val", "test"):
        name = f"annotations/instances_{split}.json"
        assert (out / "a" / name).read_bytes() == (out / "b" / name).read_bytes()
        for png in sorted((out / "a" / "images" / split).iterdir()):
            assert png.read_bytes() == (out / "b" / "images" / split / png.name).read_bytes()


def test_boxes_are_the_exact_extent_of_each_item_and_nothing_lies_outside_them(made, fmnist_dir):
    gen, out = made
    items = {s: fashion_mnist(s, root=fmnist_dir) for s in ("train", "test")}
    for split in ("train", "val", "test"):
        data = json.loads((out / "a" / "annotations" / f"instances_{split}.json").read_text())
        assert [c["id"] for c in data["categories"]] == list(range(1, 11))
        assert data["categories"][9]["name"] == "Ankle boot"
        for im in data["images"]:
            canvas = np.asarray(Image.open(out / "a" / "images" / split / im["file_name"]))
            assert canvas.shape == (64, 64) and canvas.dtype == np.uint8
            rebuilt, covered = np.zeros_like(canvas), np.zeros(canvas.shape, dtype=bool)
            for a in (a for a in data["annotations"] if a["image_id"] == im["id"]):
                src = items[a["fmnist_split"]]
                assert a["category_id"] == int(src.targets[a["fmnist_index"]]) + 1
                left, top, side = a["placement"]
                layer = np.zeros_like(canvas)  # this item alone, where the generator put it
                patch = gen.resize_bilinear(src.images[a["fmnist_index"], 0].numpy(), side)
                layer[top:top + side, left:left + side] = patch
                rows, cols = layer.nonzero()
                x, y, w, h = a["bbox"]
                assert [x, y, x + w, y + h] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
                rebuilt = np.maximum(rebuilt, layer)
                covered[y:y + h, x:x + w] = True
            assert np.array_equal(rebuilt, canvas), "the canvas is not the maximum of its recorded items"
            assert not canvas[~covered].any(), "non-zero pixels outside every box"


def test_splits_draw_from_their_own_items(made):
    _, out = made
    drawn = {}
    for split in ("train", "val", "test"):
        anns = json.loads((out / "a" / "annotations" / f"instances_{split}.json").read_text())["annotations"]
        assert {a["fmnist_split"] for a in anns} == ({"test"} if split == "test" else {"train"})
        drawn[split] = {a["fmnist_index"] for a in anns}
    assert not drawn["train"] & drawn["val"]
    pools = made[0].split_pools(0)
    assert not set(pools["train"][1].tolist()) & set(pools["val"][1].tolist())
    assert len(pools["train"][1]) + len(pools["val"][1]) == 60_000 and len(pools["test"][1]) == 10_000


def test_canvas_i_depends_only_on_seed_split_and_i(made, tmp_path, fmnist_dir):
    gen, out = made
    gen.main(["--out", str(tmp_path), "--size", "64", "--train", "3", "--val", "0", "--test", "0", "--quiet",
              "--fmnist-root", fmnist_dir])
    for i in range(3):
        name = f"images/train/{i:06d}.png"
        assert (tmp_path / name).read_bytes() == (out / "a" / name).read_bytes()


def test_bad_arguments_are_refused_with_a_message(capsys):
    with pytest.raises(SystemExit):
        _generator().main(["--out", "x", "--size", "64", "--min-side", "40", "--max-side", "30"])
    assert "--min-side <= --max-side" in capsys.readouterr().err
