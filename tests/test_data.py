"""Data pipelines: files in their genuine on-disk formats are generated in tmp_path, never fetched."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from benchtools.genuine import cifar10_members, cifar100_members, py2_pickle, write_idx, write_tree
from wdistill.data import cifar, folder
from wdistill.data import download as dl
from wdistill.data.augment import (
    Augment,
    center_crop,
    draw_resized_crop_boxes,
    random_crop,
    random_flip,
    resized_crop_flip,
)
from wdistill.data.benchmark_splits import fmnist_kd_v1
from wdistill.data.dataset import ImageDataset
from wdistill.data.idx import DEBIAN_FMNIST, fashion_mnist, fashion_mnist_root, read_idx
from wdistill.data.loader import BatchLoader
from wdistill.data.registry import load_dataset
from wdistill.data.sample import bundled_sample

HAVE_DEBIAN_FMNIST = Path(DEBIAN_FMNIST, "train-images-idx3-ubyte.gz").is_file()


# ---------------------------------------------------------------- writers of the genuine formats
def write_fmnist(root: Path, n_train: int, n_test: int) -> None:
    """Images of 2x2 pixels whose first two pixels encode the image's position in its file."""
    root.mkdir(exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        i = np.arange(n)
        images = np.zeros((n, 2, 2), np.uint8)
        images[:, 0, 0], images[:, 0, 1] = i % 256, i // 256
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", (i % 10).astype(np.uint8))


def encoded_index(ds: ImageDataset) -> np.ndarray:
    px = ds.images[:, 0].numpy().astype(np.int64)
    return px[:, 0, 0] + 256 * px[:, 0, 1]


# ---------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("as_tar", [False, True])
def test_cifar10_layout_and_labels(tmp_path, as_tar):
    rng = np.random.default_rng(0)
    members, batches = cifar10_members(rng)
    batches["data_batch_3"][b"data"][2, 1 * 1024 + 5 * 32 + 7] = 201  # green, row 5, column 7
    members["cifar-10-batches-py/data_batch_3"] = py2_pickle(batches["data_batch_3"])
    src = write_tree(tmp_path, members, as_tar)
    train, test = load_dataset("cifar10", src)
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.num_classes == 10 and train.classes[3] == "class3"
    assert train.mean == cifar.CIFAR10_MEAN and train.std == cifar.CIFAR10_STD
    assert train.images[2 * 6 + 2, 1, 5, 7] == 201
    data = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    for k, c, r, col in rng.integers(0, [30, 3, 32, 32], (500, 4)):
        assert train.images[k, c, r, col] == data[k, c * 1024 + r * 32 + col]
    labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert train.targets.tolist() == labels and test.targets.tolist() == batches["test_batch"][b"labels"]


@pytest.mark.parametrize("as_tar", [False, True])
def test_cifar100_fine_and_coarse(tmp_path, as_tar):
    members, splits = cifar100_members(np.random.default_rng(1))
    src = write_tree(tmp_path, members, as_tar)
    fine = cifar.cifar100("test", src)
    coarse = cifar.cifar100("test", src, labels="coarse")
    assert fine.num_classes == 100 and coarse.num_classes == 20 and fine.classes[7] == "f7"
    assert fine.targets.tolist() == splits["test"][b"fine_labels"]
    assert coarse.targets.tolist() == splits["test"][b"coarse_labels"]
    assert torch.equal(fine.images.reshape(9, -1), torch.from_numpy(splits["test"][b"data"]))
    assert fine.mean == cifar.CIFAR100_MEAN and fine.std == cifar.CIFAR100_STD
    if not as_tar:  # the extracted folder itself is accepted as root too
        assert torch.equal(cifar.cifar100("test", src / "cifar-100-python").images, fine.images)


def test_cifar_refuses_foreign_pickles(tmp_path):
    members, batches = cifar10_members(np.random.default_rng(2))
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return open, (str(marker), "w")

    members["cifar-10-batches-py/test_batch"] = pickle.dumps({b"data": Evil()}, protocol=2)
    write_tree(tmp_path, members, as_tar=False)
    with pytest.raises(ValueError, match="refusing global"):
        cifar.cifar10("test", tmp_path)
    assert not marker.exists()
    bad = dict(batches["test_batch"])
    del bad[b"labels"]
    (tmp_path / "cifar-10-batches-py/test_batch").write_bytes(py2_pickle(bad))
    with pytest.raises(ValueError, match="missing key b'labels'"):
        cifar.cifar10("test", tmp_path)
    bad[b"labels"], bad[b"data"] = [0] * 6, np.zeros((6, 1024), np.uint8)
    (tmp_path / "cifar-10-batches-py/test_batch").write_bytes(py2_pickle(bad))
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        cifar.cifar10("test", tmp_path)
    bad[b"labels"], bad[b"data"] = [0] * 5 + [10], np.zeros((6, 3072), np.uint8)
    (tmp_path / "cifar-10-batches-py/test_batch").write_bytes(py2_pickle(bad))
    with pytest.raises(ValueError, match="outside 0..9"):
        cifar.cifar10("test", tmp_path)


def test_missing_cifar_names_files_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        cifar.cifar10("train", tmp_path / "nowhere")
    msg = str(e.value)
    for part in (
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py/",
        "data.options.download=true; download=True in Python",  # the fix in YAML and in Python
        "https://www.cs.toronto.edu/",
        str(tmp_path / "nowhere"),
    ):
        assert part in msg
    with pytest.raises(FileNotFoundError, match="cifar-100-python.tar.gz"):
        load_dataset("cifar100", tmp_path)


def test_missing_fmnist_names_files_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        fashion_mnist_root(tmp_path)
    msg = str(e.value)
    for part in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "apt-get install dataset-fashion-mnist",
        "data.options.download=true; download=True in Python",  # the fix in YAML and in Python
        str(tmp_path),
    ):
        assert part in msg


# ---------------------------------------------------------------- downloads (file:// only)
def test_download_file_url_and_md5(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3000))
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    dest = dl.download(src.as_uri(), tmp_path / "out" / "f.bin", md5, progress=False)
    assert dest.read_bytes() == src.read_bytes() and not Path(str(dest) + ".part").exists()
    # a complete file is kept without fetching: the URL no longer exists
    assert dl.download((tmp_path / "gone").as_uri(), dest, md5, progress=False) == dest
    with pytest.raises(ValueError, match="expected 0{32}"):
        dl.download(src.as_uri(), tmp_path / "bad.bin", "0" * 32, progress=False)
    assert not (tmp_path / "bad.bin").exists() and not (tmp_path / "bad.bin.part").exists()
    # junk left by an interrupted run: file:// ignores Range, so the download restarts cleanly
    (tmp_path / "j.bin.part").write_bytes(b"junk" * 1000)
    assert dl.download(src.as_uri(), tmp_path / "j.bin", md5, progress=False).read_bytes() == src.read_bytes()


def test_download_resumes_with_range(tmp_path, monkeypatch):
    payload = os.urandom(5000)
    (tmp_path / "f.bin.part").write_bytes(payload[:1234])
    seen = []

    class Partial(io.BytesIO):
        status = 206
        headers = {"Content-Length": str(len(payload) - 1234)}

    def fake_urlopen(request, timeout):
        seen.append(request.get_header("Range"))
        return Partial(payload[1234:])

    monkeypatch.setattr(dl.urllib.request, "urlopen", fake_urlopen)
    out = dl.download("https://example.invalid/f.bin", tmp_path / "f.bin", hashlib.md5(payload).hexdigest(), False)
    assert seen == ["bytes=1234-"] and out.read_bytes() == payload


def test_cifar_download_end_to_end_and_failure(tmp_path, monkeypatch):
    members, _ = cifar10_members(np.random.default_rng(3))
    (tmp_path / "mirror").mkdir()
    archive = write_tree(tmp_path / "mirror", members, as_tar=True)
    good = dl.Resource(archive.name, dl.file_md5(archive), ((tmp_path / "x").as_uri(), archive.as_uri()))
    monkeypatch.setitem(dl.RESOURCES, "cifar10", (good,))
    test = cifar.cifar10("test", tmp_path / "data", download=True)  # first mirror fails, second works
    assert len(test) == 6 and (tmp_path / "data" / archive.name).is_file()
    monkeypatch.setitem(dl.RESOURCES, "cifar10", (dl.Resource(archive.name, good.md5, ((tmp_path / "x").as_uri(),)),))
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz.*Fetch it by hand"):
        cifar.cifar10("test", tmp_path / "other", download=True)


# ---------------------------------------------------------------- IDX
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_roundtrip_and_errors(tmp_path, suffix):
    imgs = np.random.default_rng(4).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / f"i{suffix}", imgs)), imgs)
    ints = np.array([[-7, 70000], [1, 2]], dtype=np.int64)
    assert np.array_equal(read_idx(write_idx(tmp_path / f"l{suffix}", ints, 0x0C)), ints)
    raw = bytes([0, 0, 0x08, 3]) + struct.pack(">III", 5, 3, 4) + imgs.tobytes()
    cases = {"bad magic": b"\x08\x03" + raw[2:], "header says": raw[:-1], "truncated IDX header": raw[:9]}
    for match, blob in cases.items():
        p = tmp_path / f"bad{suffix}"
        p.write_bytes(gzip.compress(blob) if suffix else blob)
        with pytest.raises(ValueError, match=match):
            read_idx(p)
    if suffix:
        p.write_bytes(gzip.compress(raw)[:-12])
        with pytest.raises(ValueError, match="gzip"):
            read_idx(p)


@pytest.mark.skipif(
    not HAVE_DEBIAN_FMNIST and not os.environ.get("CI"),  # CI must have it: fail there, never skip
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_debian_fashion_mnist():
    train, test = fashion_mnist("train"), fashion_mnist("test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert (
        torch.bincount(train.targets).tolist() == [6000] * 10 and torch.bincount(test.targets).tolist() == [1000] * 10
    )
    assert abs(train.images.double().mean().item() / 255 - 0.2860) < 5e-4
    # the bundled sample is drawn from these files: every sample image is an official one
    official = {bytes(row) for row in train.images.reshape(60000, -1).numpy()}
    assert all(bytes(row) in official for row in bundled_sample("train").images.reshape(6000, -1).numpy())


def test_fmnist_kd_v1_split(tmp_path):
    write_fmnist(tmp_path, n_train=15300, n_test=700)
    train, val, test = fmnist_kd_v1(tmp_path)
    assert np.array_equal(encoded_index(train), np.arange(10000))
    assert np.array_equal(encoded_index(val), np.arange(10000, 15000))
    assert np.array_equal(encoded_index(test), np.arange(700))
    assert not set(encoded_index(train)) & set(encoded_index(val))
    quick, quick_val, _ = fmnist_kd_v1(tmp_path, quick=True)
    assert np.array_equal(encoded_index(quick), np.arange(5000)) and torch.equal(quick_val.images, val.images)
    assert train.targets.tolist() == [i % 10 for i in range(10000)]
    tr, ev = load_dataset("fashion_mnist", tmp_path, protocol="kd_v1", eval_split="val")
    assert torch.equal(ev.images, val.images) and len(tr) == 10000
    write_fmnist(tmp_path / "small", n_train=14999, n_test=10)
    with pytest.raises(ValueError, match="at least 15000"):
        fmnist_kd_v1(tmp_path / "small")


def test_registry_options(tmp_path):
    write_fmnist(tmp_path, n_train=40, n_test=10)
    train, test = load_dataset("fashion_mnist", tmp_path, train_subset=25)
    assert np.array_equal(encoded_index(train), np.arange(25)) and len(test) == 10
    with pytest.raises(ValueError, match="no option colour.*protocol"):
        load_dataset("fashion_mnist", tmp_path, colour=True)
    with pytest.raises(ValueError, match="train_subset must be in 1..40"):
        load_dataset("fashion_mnist", tmp_path, train_subset=41)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet22k")


# ---------------------------------------------------------------- image folders
def test_image_folder_decode_cache_and_errors(tmp_path, monkeypatch):
    from PIL import Image

    rng = np.random.default_rng(5)
    root = tmp_path / "train"
    wide = rng.integers(0, 256, (32, 43, 3), dtype=np.uint8)  # no resize; crop columns 5..36
    gray = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    big = np.zeros((64, 80, 3), np.uint8) + np.array([10, 200, 30], np.uint8)
    for cls, name, arr in (
        ("dog", "a.png", wide),
        ("cat", "b.PNG", gray),
        ("cat", "c.npy", wide[:, :32]),
        ("ant", "d.bmp", big),
    ):
        (root / cls).mkdir(parents=True, exist_ok=True)
        np.save(root / cls / name, arr) if name.endswith(".npy") else Image.fromarray(arr).save(root / cls / name)
    (root / "dog" / "notes.txt").write_text("not an image")
    calls = []
    real = folder._decode
    monkeypatch.setattr(folder, "_decode", lambda p, s: calls.append(p) or real(p, s))
    ds = folder.image_folder(root, size=32, progress=False)
    assert ds.classes == ("ant", "cat", "dog") and ds.targets.tolist() == [0, 1, 1, 2]
    assert ds.images.shape == (4, 3, 32, 32) and ds.mean == folder.IMAGENET_MEAN and len(calls) == 4
    assert (ds.images[0].permute(1, 2, 0) == torch.tensor([10, 200, 30], dtype=torch.uint8)).all()
    assert np.array_equal(ds.images[1].numpy(), np.stack([gray] * 3))
    assert np.array_equal(ds.images[2].numpy(), wide[:, :32].transpose(2, 0, 1))
    assert np.array_equal(ds.images[3].numpy(), wide[:, 5:37].transpose(2, 0, 1))
    again = folder.image_folder(root, size=32, progress=False)
    assert len(calls) == 4 and torch.equal(again.images, ds.images)  # served from the cache
    os.utime(root / "ant" / "d.bmp", ns=(1, 1))
    folder.image_folder(root, size=32, progress=False)
    assert len(calls) == 8  # a changed file invalidates the cache
    with pytest.raises(FileNotFoundError, match="does not exist"):
        folder.image_folder(tmp_path / "nope")
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="empty holds no images"):
        folder.image_folder(root)
    (root / "empty").rmdir()
    (root / "ant" / "e.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="e.jpg"):
        folder.image_folder(root, progress=False)
    with pytest.raises(FileNotFoundError, match="no class folders"):
        folder.image_folder(root / "ant")


def test_image_folder_registry_val_follows_train_classes(tmp_path):
    from PIL import Image

    for split, classes in (("train", "abc"), ("val", "ac")):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8), (ord(c), 0, 0)).save(tmp_path / split / c / "x.png")
    train, val = load_dataset("image_folder", tmp_path, size=8)
    assert train.classes == val.classes == ("a", "b", "c") and val.targets.tolist() == [0, 2]
    assert val.images[:, 0, 0, 0].tolist() == [ord("a"), ord("c")]


# ---------------------------------------------------------------- augmentation
def padded_windows(x: np.ndarray, p: int) -> np.ndarray:
    """(N, 2p+1, 2p+1, C, H, W): every crop of the zero-padded images, by slicing."""
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    return np.stack(
        [np.stack([padded[:, :, dy : dy + h, dx : dx + w] for dx in range(2 * p + 1)], 1) for dy in range(2 * p + 1)], 1
    )


def distinct_images(n, c=2, h=6, w=6, seed=6):
    """Images whose pixels are a permutation of 1..c*h*w, so every crop/flip is distinguishable."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(c * h * w).reshape(c, h, w) + 1 for _ in range(n)]).astype(np.uint8)


def test_random_crop_offsets_uniform_and_exact():
    p, n = 2, 5000
    x = distinct_images(n)
    out = random_crop(torch.from_numpy(x), p, torch.Generator().manual_seed(0)).numpy()
    match = (padded_windows(x, p) == out[:, None, None]).all(axis=(3, 4, 5))  # (N, 5, 5)
    assert (match.sum(axis=(1, 2)) == 1).all()  # every crop is exactly one padded slice
    counts = match.sum(axis=0).flatten()
    expected = n / counts.size
    assert ((counts - expected) ** 2 / expected).sum() < chi2.ppf(0.999, counts.size - 1)


def test_flip_rate_and_combined_crop_flip():
    n = 4000
    x = distinct_images(n)
    out = random_flip(torch.from_numpy(x), torch.Generator().manual_seed(1)).numpy()
    flipped, same = (out == x[..., ::-1]).all(axis=(1, 2, 3)), (out == x).all(axis=(1, 2, 3))
    assert (flipped ^ same).all()
    assert abs(flipped.mean() - 0.5) < 4 * np.sqrt(0.25 / n)
    aug = Augment(mean=(0.0, 0.0), std=(1 / 255, 1 / 255), crop_padding=1, flip=True)  # normalise = identity
    got = aug(torch.from_numpy(x), torch.Generator().manual_seed(2)).numpy()
    windows = padded_windows(x, 1).astype(np.float32)
    plain = (windows == got[:, None, None]).all(axis=(3, 4, 5))
    mirrored = (windows[..., ::-1] == got[:, None, None]).all(axis=(3, 4, 5))
    assert (plain.sum(axis=(1, 2)) + mirrored.sum(axis=(1, 2)) == 1).all()
    assert abs(mirrored.any(axis=(1, 2)).mean() - 0.5) < 4 * np.sqrt(0.25 / n)


def test_normalise_and_determinism():
    rng = np.random.default_rng(7)
    x = np.stack([rng.normal(60, 10, (500, 8, 8)), rng.normal(180, 30, (500, 8, 8))], 1).clip(0, 255).astype(np.uint8)
    mean, std = x.mean(axis=(0, 2, 3)) / 255, x.std(axis=(0, 2, 3)) / 255
    y = Augment(tuple(mean), tuple(std))(torch.from_numpy(x)).double()
    assert y.mean(dim=(0, 2, 3)).abs().max() < 1e-4 and (y.std(dim=(0, 2, 3), correction=0) - 1).abs().max() < 1e-4
    ref = (x / 255.0 - mean[None, :, None, None]) / std[None, :, None, None]
    assert np.allclose(y.numpy(), ref, atol=1e-4)
    aug = Augment(tuple(mean), tuple(std), crop_padding=4, flip=True)
    xt = torch.from_numpy(x)
    a, b = (aug(xt, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, aug(xt, torch.Generator().manual_seed(4)))
    f = torch.rand(2, 2, 4, 4) * 255
    before = f.clone()
    Augment((0.5, 0.5), (0.2, 0.2))(f)
    assert torch.equal(f, before)  # a float input is not scaled in place
    with pytest.raises(ValueError, match="std must be positive"):
        Augment((0.5,), (0.0,))
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        aug(torch.zeros(3, 1, 4, 4, dtype=torch.uint8))


# ---------------------------------------------------------------- RandomResizedCrop (ImageNet recipe)
def reference_boxes(n, height, width, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params written out one image at a time (numpy RNG)."""
    out = []
    for _ in range(n):
        for _ in range(10):
            area = height * width * rng.uniform(*scale)
            aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
            w, h = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                out.append((rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w))
                break
        else:
            r = width / height
            w, h = (
                (width, int(round(width / ratio[0])))
                if r < ratio[0]
                else ((int(round(height * ratio[1])), height) if r > ratio[1] else (width, height))
            )
            out.append(((height - h) // 2, (width - w) // 2, h, w))
    return np.array(out)


def test_resized_crop_boxes_have_torchvisions_distribution():
    from scipy.stats import ks_2samp

    n, height, width = 20000, 24, 40  # wide images: some draws do not fit and are tried again
    ours = draw_resized_crop_boxes(n, height, width, generator=torch.Generator().manual_seed(0)).numpy()
    ref = reference_boxes(n, height, width, np.random.default_rng(0))
    top, left, h, w = ours.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    assert (h >= 1).all() and (w >= 1).all()
    for name, a, b in [
        ("area", h * w, ref[:, 2] * ref[:, 3]),
        ("aspect", w / h, ref[:, 3] / ref[:, 2]),
        ("top", top, ref[:, 0]),
        ("left", left, ref[:, 1]),
    ]:
        assert ks_2samp(a, b).pvalue > 1e-3, name
    # A shifted recipe is told apart by the same test (it can fail).
    other = reference_boxes(n, height, width, np.random.default_rng(1), scale=(0.2, 1.0))
    assert ks_2samp(h * w, other[:, 2] * other[:, 3]).pvalue < 1e-6


def test_resized_crop_positions_are_uniform_and_fallback_is_centred():
    boxes = draw_resized_crop_boxes(
        5000, 8, 8, scale=(0.25, 0.25), ratio=(1, 1), generator=torch.Generator().manual_seed(1)
    ).numpy()
    assert (boxes[:, 2:] == 4).all()  # area 16 of 64, square
    counts = np.bincount(boxes[:, 0] * 5 + boxes[:, 1], minlength=25)
    expected = 5000 / 25
    assert ((counts - expected) ** 2 / expected).sum() < chi2.ppf(0.999, 24)
    # No try fits (a 2:1 box of the whole area cannot lie in a square): the largest centred 2:1 box.
    fallback = draw_resized_crop_boxes(3, 10, 10, scale=(1, 1), ratio=(2, 2))
    assert fallback.tolist() == [[2, 0, 5, 10]] * 3
    with pytest.raises(ValueError, match="scale"):
        draw_resized_crop_boxes(1, 8, 8, scale=(0.5, 0.1))


def test_resized_crop_equals_crop_then_interpolate():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(12, 3, 20, 24, generator=g, dtype=torch.float64) * 255
    boxes = draw_resized_crop_boxes(12, 20, 24, generator=g)
    flips = torch.arange(12) % 2 == 0
    got = resized_crop_flip(x, boxes, 9, flips)
    for i, (t, l, h, w) in enumerate(boxes.tolist()):
        want = torch.nn.functional.interpolate(
            x[i : i + 1, :, t : t + h, l : l + w], size=(9, 9), mode="bilinear", align_corners=False
        )[0]
        want = want.flip(-1) if flips[i] else want
        assert torch.allclose(got[i], want, atol=1e-9), (i, (t, l, h, w))
    whole = torch.tensor([[0, 0, 20, 24]])
    assert torch.allclose(
        resized_crop_flip(x[:1, :, :, :20].contiguous(), torch.tensor([[0, 0, 20, 20]]), 20, None), x[:1, :, :, :20]
    )  # the whole image at its own size is the image
    assert resized_crop_flip(x[:1], whole, 7, None).shape == (1, 3, 7, 7)


def test_center_crop_and_resized_crop_loaders():
    x = torch.arange(2 * 7 * 9, dtype=torch.float64).view(2, 1, 7, 9)
    assert torch.equal(center_crop(x, 4), x[..., 1:5, 2:6])
    with pytest.raises(ValueError, match="larger than the 7x9"):
        center_crop(x, 8)
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (40, 3, 12, 12), dtype=torch.uint8, generator=g)
    ds = ImageDataset(images, torch.arange(40) % 4, 4, (0.0,) * 3, (1 / 255,) * 3)
    evaluation = torch.cat([b["image"] for b in BatchLoader(ds, 16, train=False, resized_crop=8)])
    assert torch.equal(evaluation, images[..., 2:10, 2:10].float())
    train = [b["image"] for b in BatchLoader(ds, 16, train=True, resized_crop=8, flip=True, seed=4)]
    again = [b["image"] for b in BatchLoader(ds, 16, train=True, resized_crop=8, flip=True, seed=4)]
    assert all(b.shape == (16, 3, 8, 8) for b in train) and all(torch.equal(a, b) for a, b in zip(train, again))
    assert not torch.equal(train[0], evaluation[:16])
    with pytest.raises(ValueError, match="both crop"):
        BatchLoader(ds, 16, train=True, crop_padding=4, resized_crop=8)


def test_config_rejects_two_crops():
    from wdistill.config import load_config
    from wdistill.errors import ConfigError

    base = {"student": {"model": "resnet8"}, "data": {"random_resized_crop": 224}}
    with pytest.raises(ConfigError, match="crop_padding: 0"):
        load_config({**base, "data": {"random_resized_crop": 224, "crop_padding": 4}})
    # crop_padding unset = the data set's recipe, which never pads under a resized crop
    assert load_config(base).data.crop_padding is None
    cfg = load_config({**base, "data": {"random_resized_crop": 224, "crop_padding": 0}})
    assert cfg.data.crop_kwargs()["resized_crop"] == 224


# ---------------------------------------------------------------- loader and sample
def toy_dataset(n=103):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return ImageDataset(
        images, torch.randint(0, 7, (n,), generator=torch.Generator().manual_seed(0)), 7, (0.0,), (1 / 255,)
    )


def epoch_of(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def test_batch_loader_epochs_and_batches():
    ds = toy_dataset()
    loader = BatchLoader(ds, 10, train=True, drop_last=False, seed=5)
    batches = epoch_of(loader, 0)
    assert len(batches) == len(loader) == 11 and [len(b["index"]) for b in batches] == [10] * 10 + [3]
    idx = torch.cat([b["index"] for b in batches])
    assert sorted(idx.tolist()) == list(range(103)) and idx.tolist() != list(range(103))
    for b in batches:
        assert torch.equal(b["target"], ds.targets[b["index"]])
        assert torch.equal(b["image"][:, 0, 0, 0], b["index"].float())  # identity normalisation
    again = BatchLoader(ds, 10, train=True, drop_last=False, seed=5)
    assert torch.equal(torch.cat([b["index"] for b in epoch_of(again, 0)]), idx)
    assert not torch.equal(torch.cat([b["index"] for b in epoch_of(again, 1)]), idx)
    other_seed = BatchLoader(ds, 10, train=True, drop_last=False, seed=6)
    assert not torch.equal(torch.cat([b["index"] for b in epoch_of(other_seed, 0)]), idx)
    dropped = epoch_of(BatchLoader(ds, 10, train=True), 0)  # drop_last defaults to True in training
    kept = torch.cat([b["index"] for b in dropped])
    assert len(dropped) == 10 and len(set(kept.tolist())) == 100
    evaluation = epoch_of(BatchLoader(ds, 10, train=False, crop_padding=4, flip=True), 0)
    assert torch.cat([b["index"] for b in evaluation]).tolist() == list(range(103))
    assert torch.equal(torch.cat([b["image"] for b in evaluation]), ds.images.float())  # no augmentation
    with pytest.raises(ValueError, match="fewer than batch_size"):
        BatchLoader(ds, 200, train=True)


def test_bundled_sample():
    train, test = bundled_sample("train"), bundled_sample("test")
    assert train.images.shape == (6000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and test.images.dtype == torch.uint8
    assert torch.bincount(train.targets).tolist() == [600] * 10
    assert torch.bincount(test.targets).tolist() == [100] * 10
    with pytest.raises(ValueError, match="split must be"):
        bundled_sample("val")
