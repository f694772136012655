"""Score any file a run writes on the test split of the data it was trained on (``wdistill eval``).

What is read (``engine.rundir.resolve_checkpoint``):
- a run directory: its ``student.pt`` (the final epoch, what the run exports); ``which="best"`` or
  ``"last"`` picks ``best.pt`` / ``last.pt`` instead. An interrupted run without ``student.pt``
  falls back to ``best.pt``, then ``last.pt`` (said in the result's ``note``);
- ``best.pt`` / ``last.pt``: the trainer's state; the ``student.`` weights are taken;
- ``student.pt`` and files written by ``wdistill export``: student weights + architecture;
- a bare state_dict or a published checkpoint (``model=NAME`` names the architecture).

The data: ``data`` when given; otherwise the data section the checkpoint records (trainer states
and ``student.pt`` do), or the ``config.yaml`` of the run directory it sits in. A file that
records neither needs ``data``: nothing is guessed.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from wdistill import models
from wdistill.config import load_config
from wdistill.data import BatchLoader, ImageDataset, load_dataset
from wdistill.data.build import open_datasets, to_memory
from wdistill.data.registry import DETECTION_DATASETS
from wdistill.data.samples import FolderImages
from wdistill.data.views import View, Viewed
from wdistill.engine import evaluate, rundir
from wdistill.engine.build import check_buildable, resolve_device
from wdistill.errors import ConfigError
from wdistill.io import load_dict
from wdistill.models.weights import read_checkpoint

VIEWS = ("identity", "downsample", "mask", "channels", "lowpass", "highpass")


def _run_config_beside(path: Path) -> dict | None:
    """The config.yaml the trainer wrote next to ``path`` (a file of a run directory), if any."""
    f = path.parent / rundir.CONFIG
    if not f.is_file():
        return None
    try:
        raw = yaml.safe_load(f.read_text())
    except yaml.YAMLError:
        return None
    return raw if isinstance(raw, dict) and isinstance(raw.get("data"), dict) else None


def _test_data(checkpoint, data: str | None, root: str | None, cfg: dict | None, source: str):
    """(test set, description, eval-loader crop kwargs) per the rules in the module docstring."""
    if data:
        _, test = load_dataset(data, root)
        return test, {"name": data, "root": root, "from": "--data"}, {}
    if cfg and isinstance(cfg.get("data"), dict):
        section = dict(cfg["data"])
        if section.get("name") in DETECTION_DATASETS:
            raise ConfigError(f"{checkpoint} is a detector (task: detection): `wdistill eval` scores classifiers. Its "
                              "COCO AP on the evaluation split is in the run's summary.json (final_AP, AP50, AP75...) "
                              "and metrics.csv")
        if root:
            section["root"] = root
        run_cfg = load_config({"student": {"model": "unused"}, "data": section})
        _, test = open_datasets(run_cfg.data.model_copy(update={"loader": "memory"}))
        if isinstance(test, FolderImages):
            test = to_memory(run_cfg.data, test, "test", len(test.classes))
        if not isinstance(test, ImageDataset):
            raise ConfigError(f"{checkpoint} was trained on streamed data ({run_cfg.data.name}); evaluate it "
                              "with --data NAME --root DIR, or `wdistill train CONFIG optim.epochs=...` reports test "
                              "accuracy every epoch")
        if run_cfg.data.test_subset:
            test = test.subset(slice(0, run_cfg.data.test_subset))
        return test, {"name": run_cfg.data.name, "root": run_cfg.data.root, "from": source}, run_cfg.data.crop_kwargs()
    raise ConfigError(f"{checkpoint} does not record the data it was trained on: pass --data NAME "
                      "(and --root DIR), e.g. --data fashion_mnist; `wdistill list` names the data sets")


def _recorded_view(raw: dict, cfg: dict | None) -> dict | None:
    """The student view a checkpoint records (student.pt/exports: ``view``; trainer states and
    config.yaml: ``student.view``); None for the image itself."""
    if isinstance(raw, dict) and isinstance(raw.get("view"), dict):
        view = raw["view"]
    else:
        view = ((cfg or {}).get("student") or {}).get("view")
    return view if isinstance(view, dict) and view.get("name", "identity") != "identity" else None


def _checked_shape(path, arch, kwargs, sd, raw, test, data_name) -> tuple[int, int]:
    """The model's classes and channels (from the weights or the file's record), checked against the data."""
    try:
        nc, ch = models.io_shape(arch, kwargs, sd)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--model {arch}: {e}") from None
    recorded = {k: raw[k] for k in ("num_classes", "in_channels") if isinstance(raw.get(k), int)}
    nc = nc or recorded.get("num_classes") or test.num_classes
    ch = ch or recorded.get("in_channels") or test.channels
    if nc != test.num_classes:
        raise ConfigError(f"{path} is a {nc}-class model but {data_name} has {test.num_classes} classes: "
                          "evaluate it on the data it was trained on (pass that --data/--root)")
    if ch != test.channels:
        raise ConfigError(f"{path} takes {ch}-channel images but {data_name} has {test.channels} "
                          "channels: evaluate it on the data it was trained on (pass that --data/--root)")
    return nc, ch


def score(checkpoint: str | Path, which: str | None = None, data: str | None = None, root: str | None = None,
          model: str | None = None, subset: int | None = None, batch_size: int = 256, center_crop: int | None = None,
          view: str | None = None, device: str = "cpu") -> dict:
    """Top-1/top-5 (%) and loss of a run's student or any checkpoint; see the module docstring.
    ``view``: score on this view (default parameters) instead of the one the run recorded."""
    path, note = rundir.resolve_checkpoint(checkpoint, which)
    raw = (
        read_checkpoint(path)
        if path.suffix == ".safetensors"
        else load_dict(path, "cpu", what="checkpoint to evaluate")
    )
    sd, cfg, arch, kwargs = rundir.student_weights(raw)
    source = f"{path.name} (recorded config)"
    if cfg is None and not data:
        cfg = _run_config_beside(path)
        source = f"{path.parent / rundir.CONFIG}"
    arch = model or arch or ((cfg or {}).get("student") or {}).get("model")
    if not arch:
        raise ConfigError(
            f"{path} does not record its architecture: pass --model NAME (`wdistill list` names the models)"
        )
    if model is None:  # a name the caller gives is checked as it is built, with the closest zoo names
        check_buildable(arch, path)
    test, data_desc, crop = _test_data(checkpoint, data, root, cfg, source)
    if subset:
        test = test.subset(slice(0, subset))
    nc, ch = _checked_shape(path, arch, kwargs, sd, raw, test, data_desc["name"])
    net = models.load_checkpoint(models.create(arch, nc, ch, **kwargs), sd, name=arch)
    chosen = _recorded_view(raw, cfg) if view is None else (None if view == "identity" else {"name": view})
    if chosen:  # the student is scored on the view it was trained on (student.view), as training did
        try:
            net = Viewed(net, View(chosen))
        except ValueError as e:
            raise ConfigError(f"the recorded student view {chosen}: {e}") from None
    dev = resolve_device(device)
    if center_crop:
        crop = {"resized_crop": center_crop}
    metrics = evaluate(net.to(dev), BatchLoader(test, batch_size, False, dev, **crop))
    out = {
        "checkpoint": str(path),
        "arch": arch,
        "data": data_desc,
        "images": len(test),
        **({"view": chosen} if chosen else {}),
        **metrics,
    }
    if note:
        out["note"] = note
    return out
