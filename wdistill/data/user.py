"""A user's own ``torch.utils.data.Dataset`` (``(image, target)`` items): facts the run needs.

- ``num_classes``: given (``data.num_classes`` / ``num_classes=``), else ``len(dataset.classes)``,
  else ``max(dataset.targets) + 1``; otherwise a ConfigError says how to give it.
- Labels for CRD/WCoRD negatives: ``dataset.targets`` when present (no image is loaded); else,
  only when such a term runs, one pass over the items with a progress bar (workers decode in
  parallel) -- add a ``targets`` attribute to skip it.
- YAML: ``data: {name: python, factory: "pkg.module:function", kwargs: {...}}``, the factory
  returning ``(train, test)``.
"""
from __future__ import annotations

import importlib

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from wdistill.data.dataset import ImageDataset
from wdistill.data.samples import label_index
from wdistill.data.stream import to_tensor
from wdistill.errors import ConfigError


def load_factory(spec: str | None, kwargs: dict) -> tuple:
    """``"pkg.module:function"`` -> ``function(**kwargs)``, checked to be (train, test) datasets."""
    if not spec or ":" not in spec:
        raise ConfigError(f"data.name=python needs data.factory: \"pkg.module:function\" (a function returning "
                          f"(train_dataset, test_dataset)), got {spec!r}")
    module, func = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(module), func)
    except ModuleNotFoundError as e:
        raise ConfigError(f"data.factory {spec!r}: cannot import module {module!r} ({e}); make it importable "
                          "(install it, or run from its directory / add it to PYTHONPATH)") from None
    except AttributeError:
        raise ConfigError(f"data.factory {spec!r}: module {module!r} has no attribute {func!r}") from None
    try:
        out = fn(**kwargs)
    except TypeError as e:
        raise ConfigError(f"data.factory {spec!r} rejected data.kwargs {sorted(kwargs)}: {e}") from None
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ConfigError(f"data.factory {spec!r} returned a {type(out).__name__}; it must return "
                          "(train_dataset, test_dataset)")
    for role, ds in zip(("train", "test"), out):
        check_dataset(ds, f"data.factory {spec!r} {role} split")
    return tuple(out)


def check_dataset(ds, what: str) -> None:
    if isinstance(ds, ImageDataset):
        return
    if isinstance(ds, DataLoader):
        raise ConfigError(f"{what} is a DataLoader: pass its Dataset (`loader.dataset`) instead; wdistill builds "
                          "its own loader (batch size: batch_size= in wdistill.distill, data.batch_size in YAML)")
    if isinstance(ds, (tuple, list)) and len(ds) == 2 and all(isinstance(t, torch.Tensor) for t in ds):
        raise ConfigError(f"{what} is a {type(ds).__name__} of two tensors: wrap the images and labels in a "
                          "Dataset, torch.utils.data.TensorDataset(images, labels)")
    if not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
        raise ConfigError(f"{what} is a {type(ds).__name__}: it must be a map-style torch.utils.data.Dataset "
                          "(with __len__ and __getitem__ returning (image, target))")
    if len(ds) == 0:
        raise ConfigError(f"{what} is empty")


def known_targets(ds) -> torch.Tensor | None:
    """The labels from ``ds.targets`` (list, array or tensor), or None when it has none."""
    t = getattr(ds, "targets", None)
    if t is None:
        return None
    t = torch.as_tensor(t).long().flatten()
    if len(t) != len(ds):
        raise ConfigError(f"{type(ds).__name__}.targets has {len(t)} labels for {len(ds)} items: "
                          "it must hold one label per item, in item order")
    return t


def infer_num_classes(ds, given: int | None) -> int:
    if given is not None:
        return int(given)
    if isinstance(ds, ImageDataset):
        return ds.num_classes
    classes = getattr(ds, "classes", None)
    if classes is not None and len(classes):
        return len(classes)
    t = known_targets(ds)
    if t is not None:
        return int(t.max()) + 1
    raise ConfigError(f"cannot infer the number of classes of {type(ds).__name__}: it has neither a `classes` "
                      "nor a `targets` attribute. Give it: `data: {num_classes: N}` in YAML, "
                      "`data={'num_classes': N}` to wdistill.distill(...), or add `classes`/`targets` to the dataset")


def scan_targets(ds, workers: int = 0, progress: bool = True) -> torch.Tensor:
    """Labels by reading every item once (decoding included), in parallel workers."""

    loader = DataLoader(
        ds, batch_size=256, num_workers=workers, collate_fn=lambda items: [label_index(y) for _, y, *_ in items]
    )
    labels = []
    for chunk in tqdm(
        loader,
        desc=f"reading labels of {type(ds).__name__} (add a `targets` attribute to skip)",
        unit="batch",
        disable=not progress,
    ):
        labels += chunk
    return torch.tensor(labels, dtype=torch.long)


def probe_channels(ds) -> int:
    """Image channels, from the first item."""
    if isinstance(ds, ImageDataset):
        return ds.channels
    item = ds[0]
    if not (isinstance(item, (tuple, list)) and len(item) >= 2):
        raise ConfigError(f"{type(ds).__name__}[0] is a {type(item).__name__}: items must be (image, target)")
    try:
        label_index(item[1])
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{type(ds).__name__}[0] label: {e}") from None
    try:
        return to_tensor(item[0]).shape[0]
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{type(ds).__name__}[0] image: {e}") from None


def materialize(ds, name: str, num_classes: int, mean=None, std=None, progress: bool = True) -> ImageDataset:
    """A user dataset as in-memory uint8 tensors (``data.loader: memory``): every item read once."""
    if isinstance(ds, ImageDataset):
        return ds
    images, labels = [], []
    for i in tqdm(range(len(ds)), desc=f"loading {name} into memory", unit="img", disable=not progress):
        image, y = ds[i][:2]
        x = to_tensor(image)
        if x.dtype != torch.uint8:
            raise ConfigError(
                f"{name}[{i}] is a {x.dtype} image: the memory path holds uint8 images only; use "
                "data.loader: stream for float images"
            )
        if images and x.shape != images[0].shape:
            raise ConfigError(
                f"{name}[{i}] has shape {tuple(x.shape)}, item 0 {tuple(images[0].shape)}: the memory "
                "path needs one image size; use data.loader: stream with a crop"
            )
        images.append(x)
        try:
            labels.append(label_index(y))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{name}[{i}] label: {e}") from None
    c = images[0].shape[0]
    classes = tuple(str(c_) for c_ in getattr(ds, "classes", ()) or ())
    if len(classes) != num_classes:
        classes = ()
    return ImageDataset(
        torch.stack(images),
        torch.tensor(labels),
        num_classes,
        tuple(mean or (0.0,) * c),
        tuple(std or (1.0,) * c),
        name,
        classes,
    )
