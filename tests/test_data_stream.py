"""The streaming data path, user datasets, data-set augmentation recipes (issue 11 data, issue 15.1)."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import Dataset

from wdistill import distill, models
from wdistill.config import load_config
from wdistill.data.augment import augment_recipe, resolve
from wdistill.data.build import build_loaders
from wdistill.data.folder import folder_images
from wdistill.data.stream import ImageTransform, ShardedBatchSampler, StreamLoader
from wdistill.data.synthetic import make_image_folder
from wdistill.engine import Trainer, ddp
from wdistill.errors import ConfigError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Blobs(Dataset):
    """(image, label): a bright square whose colour channel is the label, as PIL / uint8 / float."""

    def __init__(self, n=96, classes=3, kind="pil", with_targets=True, with_classes=False, seed=0):
        g = np.random.default_rng(seed)
        self.labels = [int(i % classes) for i in range(n)]
        self.images = []
        for y in self.labels:
            a = g.integers(0, 60, (12, 12, 3)).astype(np.uint8)
            a[2:9, 2:9, y % 3] = 250
            self.images.append(a)
        self.kind = kind
        if with_targets:
            self.targets = list(self.labels)
        if with_classes:
            self.classes = [f"k{c}" for c in range(classes)]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        a = self.images[i]
        if self.kind == "pil":
            return Image.fromarray(a), self.labels[i]
        t = torch.from_numpy(a).permute(2, 0, 1).contiguous()
        return (t if self.kind == "uint8" else t.float() / 255), torch.tensor(self.labels[i])


class TinyNet(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _accuracy(model, ds, scale):
    """Top-1 (%) of ``model`` over ``ds`` computed here, item by item, without any wdistill loader."""
    model.eval()
    hits = 0
    with torch.no_grad():
        for i in range(len(ds)):
            image, y = ds[i]
            x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() if isinstance(image, Image.Image) \
                else image.float()
            hits += int(model((x * scale)[None]).argmax(1).item() == int(y))
    return 100.0 * hits / len(ds)


# ------------------------------------------------------------------ user datasets
def test_user_dataset_from_python_trains_and_evaluates_the_right_data(tmp_path):
    torch.manual_seed(0)
    student = TinyNet()
    logs = []
    train, test = Blobs(96, with_targets=False, with_classes=True), Blobs(30, seed=1, with_targets=False,
                                                                        with_classes=True)
    from wdistill import api
    orig = api.Trainer

    class Logged(orig):
        def __init__(self, *a, **k):
            super().__init__(*a, **{**k, "log": logs.append})
    api.Trainer = Logged
    try:
        s = distill(student, None, train, test, epochs=3, lr=0.1, batch_size=16, out_dir=str(tmp_path), name="py",
                    device="cpu", student_taps={"feats": ["conv"], "embed": "fc:in"}, data={"workers": 0},
                    train={"progress": False})
    finally:
        api.Trainer = orig
    assert any("stream path" in m and "3 classes" in m for m in logs), logs
    assert any(m.startswith("augmentation: no flip") for m in logs), logs  # user data: no augmentation
    # the run's evaluation saw exactly the test images, scaled to [0, 1] (no mean/std given)
    assert s["final_top1"] == pytest.approx(_accuracy(student, test, 1 / 255))
    assert s["final_top1"] > 50  # it learned from the streamed training images (chance: 33%)


def test_user_dataset_from_yaml_factory(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import Dataset

        class Noise(Dataset):
            def __init__(self, n, seed):
                g = torch.Generator().manual_seed(seed)
                self.x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
                self.targets = [i % 5 for i in range(n)]
            def __len__(self):
                return len(self.targets)
            def __getitem__(self, i):
                return self.x[i], self.targets[i]

        def make(n=40):
            return Noise(n, 0), Noise(n // 2, 1)
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = {"run": {"name": "yaml", "out_dir": str(tmp_path / "runs"), "device": "cpu"},
           "data": {"name": "python", "factory": "mydata:make", "kwargs": {"n": 40}, "batch_size": 8,
                    "eval_batch_size": 7, "workers": 0, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
           "student": {"model": "resnet8"}, "optim": {"epochs": 1}, "train": {"progress": False}}
    logs = []
    t = Trainer(load_config(raw), log=logs.append)
    assert t.data.num_classes == 5 and t.data.path == "stream"  # inferred from .targets
    batch = next(iter(t.test_loader))
    import mydata
    _, test = mydata.make(40)
    expect = (test.x[:7].float() / 255 - 0.5) / 0.25  # data.mean / data.std applied to uint8 images
    assert torch.allclose(batch["image"], expect, atol=1e-5)
    assert batch["target"].tolist() == test.targets[:7] and batch["index"].tolist() == list(range(7))
    summary = t.fit()
    assert json.loads((tmp_path / "runs" / "yaml" / "summary.json").read_text())["final_top1"] == summary["final_top1"]
    with pytest.raises(ConfigError, match="cannot import module 'nope'"):
        Trainer(load_config({**raw, "run": {**raw["run"], "name": "bad1"},
                             "data": {**raw["data"], "factory": "nope:make"}}))
    with pytest.raises(ConfigError, match="rejected data.kwargs"):
        Trainer(
            load_config({**raw, "run": {**raw["run"], "name": "bad2"}, "data": {**raw["data"], "kwargs": {"size": 3}}})
        )


def test_num_classes_inference_and_error():
    from wdistill.data.user import infer_num_classes

    assert infer_num_classes(Blobs(12, classes=3, with_targets=False, with_classes=True), None) == 3
    assert infer_num_classes(Blobs(12, classes=4, with_targets=True), None) == 4  # max(targets) + 1
    assert infer_num_classes(Blobs(12, with_targets=False), 7) == 7
    cfg = load_config({"student": {"model": "resnet8"}, "data": {"name": "python", "workers": 0}})
    bare = Blobs(12, with_targets=False)
    with pytest.raises(ConfigError, match=r"neither a `classes` nor a `targets`.*data: \{num_classes: N\}"):
        build_loaders(cfg.data, data=(bare, bare), log=lambda m: None)
    cfg = load_config({"student": {"model": "resnet8"}, "data": {"name": "python", "workers": 0, "num_classes": 2}})
    with pytest.raises(ConfigError, match=r"labels span \[0, 2\] but num_classes=2"):
        build_loaders(cfg.data, data=(bare, bare), need_targets=True, log=lambda m: None)


# ------------------------------------------------------------------ streaming folder loader
def test_resized_crop_geometry_hand_computed():
    img = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))  # pixel value = 8 * row + col
    t = ImageTransform(True, resized_crop=4, scale=(0.25, 0.25), ratio=(1.0, 1.0))  # a 4x4 box, no resize
    seen = set()
    for seed in range(200):
        out = t(img, seed)[0]
        top, left = divmod(int(out[0, 0]), 8)
        assert torch.equal(out, torch.arange(64, dtype=torch.uint8).view(8, 8)[top : top + 4, left : left + 4])
        seen.add((top, left))
    assert seen == {(r, c) for r in range(5) for c in range(5)}  # every position of the box occurs
    # the whole image (area 1, its own ratio) resized 20x10 -> 5x5 equals Pillow's own resize
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 20, 3), dtype=np.uint8))
    full = ImageTransform(True, resized_crop=5, scale=(1, 1), ratio=(2, 2), flip=True)
    outs = {
        bool(
            torch.equal(full(wide, s), torch.from_numpy(np.array(wide.resize((5, 5), Image.BILINEAR))).permute(2, 0, 1))
        )
        for s in range(20)
    }
    assert outs == {True, False}  # flipped half of the time, otherwise exactly the resize
    for s in range(20):
        out = full(wide, s)
        ref = torch.from_numpy(np.array(wide.resize((5, 5), Image.BILINEAR))).permute(2, 0, 1)
        assert torch.equal(out, ref) or torch.equal(out, ref.flip(2))


def test_per_image_box_has_the_batched_boxes_distribution():
    import random

    from scipy.stats import chi2_contingency

    from wdistill.data.augment import draw_resized_crop_boxes
    from wdistill.data.stream import draw_box

    rng = random.Random(0)
    ours = torch.tensor([draw_box(rng, 10, 13) for _ in range(20000)])
    ref = draw_resized_crop_boxes(20000, 10, 13, generator=torch.Generator().manual_seed(0))
    for cols in ([2, 3], [0, 1]):  # box sizes (h, w), then positions (top, left)
        codes = [(x[:, cols[0]] * 100 + x[:, cols[1]]).numpy() for x in (ours, ref)]
        keys = np.unique(np.concatenate(codes))
        table = np.array([[(c == k).sum() for k in keys] for c in codes])
        table = table[:, table.sum(0) >= 10]
        assert chi2_contingency(table)[1] > 1e-3  # the same distribution (fails at p < 0.001)
    # no try fits: the centred box clamped to the ratio range, as the batched version
    fallback = draw_box(random.Random(1), 10, 10, scale=(1, 1), ratio=(2, 2))
    assert fallback == (2, 0, 5, 10) == tuple(draw_resized_crop_boxes(1, 10, 10, (1, 1), (2, 2))[0].tolist())


def test_eval_centre_crop_and_normalisation(tmp_path):
    root = tmp_path / "f"
    for split in ("train", "val"):
        for c, colour in enumerate([(255, 0, 128), (10, 200, 30)]):
            (root / split / f"c{c}").mkdir(parents=True)
            Image.new("RGB", (30, 20), colour).save(root / split / f"c{c}" / "a.png")
            arr = np.random.default_rng(c).integers(0, 255, (20, 30, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / split / f"c{c}" / "b.png")
    cfg = load_config(
        {
            "student": {"model": "resnet8"},
            "data": {
                "name": "image_folder",
                "root": str(root),
                "loader": "stream",
                "workers": 0,
                "random_resized_crop": 12,
                "options": {"size": 16},
                "batch_size": 2,
                "eval_batch_size": 4,
            },
        }
    )
    rd = build_loaders(cfg.data, log=lambda m: None)
    batch = next(iter(rd.test_loader))
    assert batch["target"].tolist() == [0, 0, 1, 1]
    x = batch["image"]
    solid = (torch.tensor([255, 0, 128]) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(x[0], solid.view(3, 1, 1).expand(3, 12, 12), atol=1e-5)
    # a 30x20 picture: shorter side to 16 -> 24x16, centre 12x12 at (left 6, top 2)
    pic = Image.open(root / "val" / "c1" / "b.png").resize((24, 16), Image.BILINEAR).crop((6, 2, 18, 14))
    ref = (
        torch.from_numpy(np.array(pic)).permute(2, 0, 1).float() / 255 - torch.tensor(MEAN).view(3, 1, 1)
    ) / torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(x[3], ref, atol=1e-5)


def _images(loader, epoch):
    loader.set_epoch(epoch)
    return [(b["image"], b["index"]) for b in loader]


def test_streaming_determinism_workers_and_sharding(tmp_path):
    make_image_folder(tmp_path, 6, classes=4, size=(24, 20))  # 24 training images
    ds = folder_images(tmp_path / "train")
    t = ImageTransform(True, flip=True, resized_crop=8, rgb=True)

    def mk(**k):
        return StreamLoader(ds, k.pop("bs", 8), True, transform=t, mean=MEAN, std=STD, seed=5, **k)

    a, b = _images(mk(), 3), _images(mk(workers=2), 3)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))  # workers don't matter
    c = _images(mk(), 4)
    assert not torch.equal(torch.cat([x[1] for x in a]), torch.cat([x[1] for x in c]))  # a new epoch, a new order
    assert sorted(torch.cat([x[1] for x in a]).tolist()) == list(range(24))
    ranks = [_images(mk(bs=4, rank=r, world_size=2), 3) for r in range(2)]
    assert len(mk(bs=4, rank=0, world_size=2)) == len(a) == 3
    for step, (img, idx) in enumerate(a):  # rank r holds its slice of every global batch, pixels included
        assert torch.equal(torch.cat([ranks[0][step][1], ranks[1][step][1]]), idx)
        assert torch.equal(torch.cat([ranks[0][step][0], ranks[1][step][0]]), img)


def test_sampler_matches_batch_loader_order():
    from wdistill.data import BatchLoader, ImageDataset

    ds = ImageDataset(torch.zeros(50, 1, 2, 2, dtype=torch.uint8), torch.arange(50) % 5, 5, (0.0,), (1.0,))
    bl = BatchLoader(ds, 8, True, seed=9, drop_last=True, rank=1, world_size=2)
    sampler = ShardedBatchSampler(50, 8, True, seed=9, drop_last=True, rank=1, world_size=2)
    for e in (0, 7):
        bl.set_epoch(e)
        sampler.set_epoch(e)
        assert [b["index"].tolist() for b in bl] == [[i for i, _ in batch] for batch in sampler]
    assert len(sampler) == len(bl) == 3
    # evaluation, 5 samples over 2 ranks x 2: rank 1 holds sample 3 then nothing (no empty batch)
    shards = [list(ShardedBatchSampler(5, 2, False, rank=r, world_size=2)) for r in range(2)]
    assert [[i for i, _ in b] for b in shards[0]] == [[0, 1], [4]]
    assert [[i for i, _ in b] for b in shards[1]] == [[2, 3]]


# ------------------------------------------------------------------ CRD / resume on the streaming path
def test_crd_on_the_streaming_path_draws_other_class_negatives(tmp_path):
    make_image_folder(tmp_path, 10, classes=4, size=(20, 20))
    labels = {str(p): int(p.parent.name[1:]) for p in (tmp_path / "train").rglob("*.jpg")}

    class NoTargets(Dataset):  # hides .targets: the run must read the labels once itself
        def __init__(self, ds):
            self.ds, self.classes = ds, ds.classes

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            return self.ds[i]

    train = NoTargets(folder_images(tmp_path / "train"))
    test = folder_images(tmp_path / "val", train.classes)
    torch.manual_seed(0)
    teacher = models.create("resnet8", num_classes=4, in_channels=3)
    raw = {
        "run": {"name": "crd", "out_dir": str(tmp_path / "runs"), "device": "cpu"},
        "data": {"name": "python", "batch_size": 8, "workers": 0, "random_resized_crop": 16},
        "student": {"model": "resnet8"},
        "teacher": {"model": "resnet8"},
        "loss": [{"name": "ce"}, {"name": "crd", "weight": 0.8, "num_negatives": 12, "feat_dim": 16}],
        "optim": {"epochs": 1},
        "train": {"progress": False},
    }
    tr = Trainer(load_config(raw), teachers=[teacher], data=(train, test), log=lambda m: None)
    assert tr.data.path == "stream"
    expect = torch.tensor([labels[p] for p in train.ds.files])
    assert torch.equal(tr.data.train_targets, expect)
    tr.setup_terms()
    crd = tr.distiller.terms["crd"]
    for batch in tr.train_loader:
        idx = crd.sample_contrast(batch["index"])
        anchor = expect[batch["index"]]
        assert torch.equal(expect[idx[:, 0]], anchor)
        assert (expect[idx[:, 1:]] != anchor[:, None]).all()
    assert tr.fit()["final_top1"] is not None


class _Stop(Exception):
    pass


@pytest.mark.parametrize("loader", ["stream", "memory"])
def test_resume_is_exact_on_both_paths(tmp_path, loader):
    train, test = Blobs(32, kind="uint8"), Blobs(12, kind="uint8", seed=1)

    def cfg(name):
        return load_config(
            {
                "run": {"name": name, "out_dir": str(tmp_path), "device": "cpu", "seed": 2},
                "data": {
                    "name": "python",
                    "batch_size": 8,
                    "workers": 0,
                    "loader": loader,
                    "crop_padding": 2,
                    "flip": True,
                },
                "student": {"model": "resnet8"},
                "optim": {"epochs": 2, "schedule": "cosine"},
                "train": {"progress": False},
            }
        )

    def stop_after_one(msg):
        if msg.startswith("epoch 1/2"):
            raise _Stop

    torch.manual_seed(1)
    full = Trainer(cfg("a"), data=(train, test), log=lambda m: None).fit()
    torch.manual_seed(1)
    with pytest.raises(_Stop):
        Trainer(cfg("b"), data=(train, test), log=stop_after_one).fit()
    resumed = Trainer(cfg("b"), data=(train, test), resume=True, log=lambda m: None).fit()
    assert resumed["final_top1"] == full["final_top1"]
    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True)["distiller"] for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ augmentation recipes (issue 15.1)
def test_augmentation_defaults_come_from_the_data_set():
    def aug(name, side=28, stored=None, **data):
        d = load_config({"student": {"model": "resnet8"}, "data": {"name": name, **data}}).data
        a = resolve(d, augment_recipe(name), side, stored)
        return a.crop_padding, a.flip, a.resized_crop

    assert aug("cifar100", 32) == aug("cifar10", 32) == (4, True, None)
    assert aug("fashion_mnist") == aug("fmnist_sample") == (2, True, None)
    assert aug("mnist") == (2, False, None) and aug("mnist", 8) == (1, False, None)  # digits: no mirror
    assert aug("image_folder", stored=64) == (0, True, 64)
    assert aug("image_folder", stored=256, random_resized_crop=224) == (0, True, 224)
    assert aug("python", 8) == (0, False, None)
    assert aug("mnist", crop_padding=3, flip=True) == (3, True, None)  # explicit settings win
    # the FMNIST-KD v1 benchmark, its presets and the demo keep pad 2 + flip
    from benchtools.protocol import _data

    for raw in [_data(False, "test", None)] + [
        load_config(p).data.model_dump() for p in ("configs/fmnist/kd.yaml", "configs/fmnist/crd.yaml")
    ]:
        d = load_config({"student": {"model": "resnet8"}, "data": raw}).data
        a = resolve(d, augment_recipe(d.name), 28)
        assert (a.crop_padding, a.flip) == (2, True)


def test_run_log_states_path_and_augmentation():
    logs = []
    cfg = load_config({"student": {"model": "resnet8"}, "data": {"name": "fmnist_sample", "train_subset": 64}})
    rd = build_loaders(cfg.data, log=logs.append)
    assert rd.path == "memory" and "memory path" in logs[0]
    assert logs[1].startswith("augmentation: pad 2 + random crop, horizontal flip [recipe: FMNIST-KD v1")


# ------------------------------------------------------------------ two ranks on the streaming path
def _stream_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    cfg = load_config(
        {
            "run": {"name": "ddp", "out_dir": out_dir, "seed": 0, "device": "cpu"},
            "data": {"name": "python", "batch_size": 8, "workers": 0, "flip": True, "crop_padding": 1},
            "student": {"model": "resnet8"},
            "optim": {"epochs": 2},
            "train": {"progress": False},
        }
    )
    trainer = Trainer(cfg, data=(Blobs(64, kind="uint8"), Blobs(20, kind="uint8", seed=1)), log=lambda m: None)
    summary = trainer.fit()
    # data.batch_size is the global batch: 8 steps per epoch on any number of processes
    assert trainer.data.path == "stream" and len(trainer.train_loader) == 64 // 8
    torch.save({"student": trainer.student.state_dict(), "summary": summary}, f"{out_dir}/rank{rank}.pt")
    del trainer  # its DDP wrap and vote group hold process groups: released after the destroy, gloo can abort
    ddp.leave()


@pytest.mark.slow
def test_two_ranks_stream_in_lockstep(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_stream_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(v, r1["student"][k]) for k, v in r0["student"].items() if v.is_floating_point())
    assert r0["summary"]["final_top1"] == r1["summary"]["final_top1"]  # test set summed over both shards
