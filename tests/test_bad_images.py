"""Issue 28: bad images do not kill a run blindly.

Real broken files in a real image folder (a JPEG cut in half, a text file named .jpg, an empty
file, a CMYK JPEG): ``wdistill data check`` lists each one in one pass; a streamed run under
``data.on_bad_image: error`` (the default) stops with the files named, no worker traceback, after
writing last.pt, and ``skip`` then resumes it, replacing each bad sample deterministically by the
next readable one, counted in the metrics and named in the log."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.data import Dataset

from wdistill.config import load_config
from wdistill.data.build import build_loaders
from wdistill.data.folder import image_folder
from wdistill.data.samples import MAX_NEIGHBOURS, Keyed
from wdistill.data.synthetic import make_image_folder
from wdistill.engine import Trainer
from wdistill.errors import BadImages, ConfigError
from wdistill.workflows import datacheck

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = dict(os.environ, OMP_NUM_THREADS="1")
CLI = [sys.executable, "-m", "wdistill.cli"]


def _folder(tmp_path, *, empty: bool = False, cmyk: bool = False):
    """A 4-class folder (40 train images per class, 20x20 JPEGs) with a truncated JPEG and a text
    file named .jpg in the training split; optionally an empty val file and a CMYK image."""
    root = make_image_folder(tmp_path / "imgs", 40, classes=4, size=(20, 20))
    cut = root / "train" / "c1" / "00007.jpg"  # a bigger JPEG cut in its pixel data: it opens, then fails to decode
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(cut, quality=90)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 2 // 3])
    with Image.open(cut) as im:
        assert im.size == (64, 64)  # the header is whole: only decoding the pixels finds the cut
    text = root / "train" / "c2" / "00003.jpg"
    text.write_text("not an image: a download that saved an error page")
    if empty:
        (root / "val" / "c0" / "00000.jpg").write_bytes(b"")
    if cmyk:
        Image.fromarray(np.full((20, 20, 4), 60, np.uint8), "CMYK").save(root / "train" / "c3" / "zz_cmyk.jpg")
    return root, str(cut), str(text)


def _cfg(tmp_path, root, name="r", **data) -> dict:
    return {"run": {"name": name, "out_dir": str(tmp_path / "runs"), "seed": 2},
            "data": {"name": "image_folder", "root": str(root), "loader": "stream", "workers": 1, "batch_size": 8,
                     "options": {"size": 16}, "random_resized_crop": 16, **data},
            "student": {"model": "resnet8"}, "optim": {"epochs": 2, "lr": 0.05, "schedule": "cosine"},
            "train": {"progress": False}}


def _yaml(path, cfg) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_data_check_lists_every_bad_file_in_one_pass(tmp_path):
    root, cut, text = _folder(tmp_path, empty=True, cmyk=True)
    path = _yaml(tmp_path / "c.yaml", _cfg(tmp_path, root))
    out = subprocess.run([*CLI, "data", "check", path, "--workers", "2", "-o", str(tmp_path / "bad.txt")], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr + out.stdout, out.stderr
    assert f"unreadable  [train] {cut}: OSError: image file is truncated" in out.stdout
    assert f"unreadable  [train] {text}: UnidentifiedImageError" in out.stdout
    assert f"empty       [val] {root / 'val' / 'c0' / '00000.jpg'}: 0 bytes" in out.stdout
    assert "zz_cmyk.jpg: mode CMYK, converted to RGB" in out.stdout
    assert "2 unreadable, 1 empty, 1 in an unexpected mode" in out.stdout
    assert sorted((tmp_path / "bad.txt").read_text().split()) == sorted([cut, text, str(root / "val/c0/00000.jpg")])


def test_an_interrupted_data_check_resumes_where_it_stopped(tmp_path, monkeypatch):
    root, cut, text = _folder(tmp_path)
    cfg = load_config(_cfg(tmp_path, root))
    whole = datacheck.check_data(cfg, workers=0, progress=False)
    monkeypatch.setattr(datacheck, "SAVE_EVERY", 0.0)  # save after every batch
    real, seen = datacheck.inspect_file, []

    def dies_after_100(p):
        seen.append(p)
        if len(seen) > 100:
            raise KeyboardInterrupt
        return real(p)
    monkeypatch.setattr(datacheck, "inspect_file", dies_after_100)
    with pytest.raises(KeyboardInterrupt):
        datacheck.check_data(cfg, workers=0, progress=False)
    seen.clear()
    monkeypatch.setattr(datacheck, "inspect_file", lambda p: seen.append(p) or real(p))
    resumed = datacheck.check_data(cfg, workers=0, resume=True, progress=False)
    assert resumed["problems"] == whole["problems"] and sorted(resumed["bad"]) == sorted([cut, text])
    assert len(seen) == whole["checked"] - 64  # the batch of 64 the interrupted check had saved: not read again
    with pytest.raises(ConfigError, match="nothing to resume"):  # the finished check left nothing
        datacheck.check_data(cfg, workers=0, resume=True, progress=False)


def test_a_streamed_run_stops_naming_the_files_then_skip_resumes_it(tmp_path):
    """The default (error): the worker reports the truncated JPEG, the main process writes last.pt
    and stops with exit 2 naming it, no traceback. `data.on_bad_image=skip --resume` continues from
    there; the log names each bad file once, the metrics count the replaced samples."""
    root, cut, text = _folder(tmp_path)
    path = _yaml(tmp_path / "c.yaml", _cfg(tmp_path, root))
    first = subprocess.run([*CLI, "train", path], env=ENV, capture_output=True, text=True, timeout=300)
    assert first.returncode == 2 and "Traceback" not in first.stderr and "worker" not in first.stderr, first.stderr
    assert "cannot be read (data.on_bad_image=error)" in first.stderr and "wdistill data check CONFIG" in first.stderr
    assert (cut in first.stderr) or (text in first.stderr)
    assert "run the same command with --resume: the run stopped after writing last.pt" in first.stderr
    state = torch.load(tmp_path / "runs" / "r" / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and len(state["ranks"]) == 1
    again = subprocess.run([*CLI, "train", path, "data.on_bad_image=skip", "--resume"], env=ENV, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    for f in (cut, text):
        assert again.stdout.count(f"data: skipped {f} (") == 1  # named once, though met every epoch
    rows = [json.loads(line) for line in (tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["skipped_images"] == 2  # 160 = 20 batches: all used


def test_skip_replaces_deterministically_and_counts(tmp_path):
    root, cut, text = _folder(tmp_path)
    weights = []
    for name in ("a", "b"):
        trainer = Trainer(load_config(_cfg(tmp_path, root, name, on_bad_image="skip")), log=lambda m: None)
        trainer.fit()
        weights.append(trainer.student.state_dict())
        assert trainer.history[0]["skipped_images"] == trainer.history[1]["skipped_images"] == 2
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_empty_files_stop_a_streamed_run_before_training(tmp_path):
    root, _, _ = _folder(tmp_path, empty=True)
    (root / "train" / "c3" / "00001.jpg").write_bytes(b"")
    cfg = load_config(_cfg(tmp_path, root))
    with pytest.raises(BadImages) as e:
        build_loaders(cfg.data, log=lambda m: None)
    assert str(root / "val/c0/00000.jpg") in str(e.value) and str(root / "train/c3/00001.jpg") in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_the_memory_path_names_every_bad_file_at_once_and_skip_replaces_them(tmp_path):
    root, cut, text = _folder(tmp_path)
    with pytest.raises(BadImages) as e:
        image_folder(root / "train", 16, cache_dir=tmp_path / "cache", progress=False)
    assert cut in str(e.value) and text in str(e.value) and "2 image(s)" in str(e.value)
    logs = []
    ds = image_folder(root / "train", 16, cache_dir=tmp_path / "cache", progress=False, on_bad_image="skip",
                      log=logs.append)
    files = sorted(str(p) for p in (root / "train").rglob("*.jpg"))
    i = files.index(cut)
    assert torch.equal(ds.images[i], ds.images[i + 1]) and ds.targets[i] == ds.targets[i + 1]
    assert len(logs) == 2 and all(m.startswith("data: skipped ") for m in logs)
    with pytest.raises(BadImages):  # the cache written under skip remembers them
        image_folder(root / "train", 16, cache_dir=tmp_path / "cache", progress=False)


class _Flaky(Dataset):
    """Items 0..n-1; item 3 fails once with EIO (a network file system), items >= ``broken_from`` always."""

    def __init__(self, n=40, broken_from=None):
        self.n, self.broken_from, self.calls = n, broken_from, {}

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.calls[i] = self.calls.get(i, 0) + 1
        if i == 3 and self.calls[i] == 1:
            raise OSError(errno.EIO, "Input/output error")
        if self.broken_from is not None and i >= self.broken_from:
            raise ValueError("decoder crashed")
        return torch.full((1, 4, 4), i, dtype=torch.uint8), i % 2


def test_transient_io_errors_are_retried_and_a_run_of_failures_is_not_skipped(monkeypatch):
    from wdistill.data import samples
    monkeypatch.setattr(samples, "RETRY_SECONDS", 0.0)
    keyed = Keyed(_Flaky(), lambda image, seed: image)
    x, target, index, bad = keyed[(3, 0)]
    assert index == 3 and bad == () and int(x[0, 0, 0]) == 3  # read on the second try, nothing reported
    keyed = Keyed(_Flaky(broken_from=10), lambda image, seed: image)
    x, target, index, bad = keyed[(8, 0)]
    assert index == 8 and bad == ()
    x, target, index, bad = keyed[(38, 0)]  # 38, 39 broken: wraps to item 0
    assert index == 0 and [b[0] for b in bad] == [38, 39] and "ValueError: decoder crashed" in bad[0][2]
    x, _, _, bad = keyed[(10, 0)]  # 10..25 broken: MAX_NEIGHBOURS in a row, no replacement
    assert x is None and len(bad) == MAX_NEIGHBOURS


class _Mixed(Dataset):
    """A user Dataset: item 2 raises, item 5 is not an image, the rest are fine."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 2:
            raise OSError("the object store returned 503")
        return ("not an image" if i == 5 else torch.zeros(3, 4, 4, dtype=torch.uint8)), 0


def test_data_check_reads_a_user_dataset_item_by_item():
    items = datacheck._Items([("train", _Mixed())])
    found = [items[k] for k in range(len(items))]
    bad = [(name, problem) for _, name, problem in found if problem]
    assert bad == [("item 2 of _Mixed", ("unreadable", "OSError: the object store returned 503")),
                   ("item 5 of _Mixed", ("unreadable", "TypeError: an image must be a PIL image, a numpy array or "
                                                       "a tensor, got a str"))]
