"""``wdistill data check CONFIG``: read every image of a run's data once, in parallel worker
processes with a progress bar, and list each problem before a long run meets it.

What is found: for an image folder, empty files, files that do not decode to the end (a truncated
JPEG fails only when its pixels are read, so every file is decoded fully) and modes that convert to
RGB with a loss (CMYK, 16-bit, alpha: reported, not fatal); for a Python Dataset, every item that
raises or is not an image; the built-in tensor data sets are checked when they load.

The scan can resume: its progress is saved every few thousand images in
``run.out_dir/cache/data-check-<key>.json`` (key: the data section and the file list), and
``resume=True`` continues from there; a finished scan removes it.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from wdistill.config.schema import RunConfig
from wdistill.data.build import open_datasets
from wdistill.data.samples import FolderImages, default_workers, describe, inspect_file, reason_of
from wdistill.data.stream import to_tensor
from wdistill.data.user import check_dataset
from wdistill.errors import ConfigError
from wdistill.io import atomic_write_text

SAVE_EVERY = 30.0  # seconds between saves of the scan's progress
FATAL = ("empty", "unreadable")  # what data.on_bad_image acts on; "mode" is a note


class _Items(Dataset):
    """Item k of the scan -> (split, name, problem or None), read in a worker."""

    def __init__(self, splits: list[tuple[str, object]]):
        self.splits = splits
        self.index = [(s, i) for s, (_, ds) in enumerate(splits) for i in range(len(ds))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int):
        s, i = self.index[k]
        split, ds = self.splits[s]
        if isinstance(ds, FolderImages):
            return split, ds.files[i], inspect_file(ds.files[i])
        try:
            item = ds[i]
            if not (isinstance(item, (tuple, list)) and len(item) >= 2):
                raise TypeError(f"item is a {type(item).__name__}, not (image, target)")
            to_tensor(item[0])
            int(item[1])
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            return split, describe(ds, i), ("unreadable", reason_of(e))
        return split, describe(ds, i), None


def _state_file(cfg: RunConfig, items: _Items) -> Path:
    names = [getattr(ds, "files", len(ds)) for _, ds in items.splits]
    key = hashlib.sha1(json.dumps([cfg.data.model_dump(mode="json"), names], default=str).encode(),
                       usedforsecurity=False).hexdigest()[:16]
    return Path(cfg.run.out_dir) / "cache" / f"data-check-{key}.json"


def _splits(cfg: RunConfig) -> list[tuple[str, object]]:
    d = cfg.data
    if d.name not in ("image_folder", "python"):  # in-memory tensors: loading them is the whole check
        open_datasets(d.model_copy(update={"loader": "stream"}))
        return []
    train, test = open_datasets(d.model_copy(update={"loader": "stream"}))
    for role, ds in (("train", train), ("test", test)):
        check_dataset(ds, role)
    return [("train", train), ("val" if d.name == "image_folder" else "test", test)]


def check_data(cfg: RunConfig, workers: int | None = None, resume: bool = False, progress: bool = True,
               output: str | None = None) -> dict:
    """Scan the data of ``cfg``; returns ``{"checked": n, "problems": [{split, file, kind, detail}],
    "counts": {kind: n}, "bad": [files], "report": [lines]}`` (kinds: empty, unreadable, mode; ``bad``:
    the empty and unreadable ones, also written to ``output``, one a line, when given)."""
    items = _Items(_splits(cfg))
    state_path = _state_file(cfg, items)
    state = {"done": 0, "problems": []}
    if resume and state_path.is_file():
        state = json.loads(state_path.read_text())
    elif resume:
        raise ConfigError(f"nothing to resume: no interrupted check of this data ({state_path} does not exist); "
                          "run the check without --resume")
    workers = default_workers() if workers is None else workers
    rest = DataLoader(_Part(items, state["done"]), batch_size=64, num_workers=workers, collate_fn=list)
    saved = time.monotonic()
    with tqdm(total=len(items), initial=state["done"], desc="checking images", unit="img",
              disable=None if progress else True) as bar:
        for batch in rest:
            state["problems"] += [{"split": s, "file": f, "kind": p[0], "detail": p[1]} for s, f, p in batch if p]
            state["done"] += len(batch)
            bar.update(len(batch))
            if time.monotonic() - saved > SAVE_EVERY:
                atomic_write_text(json.dumps(state), state_path)
                saved = time.monotonic()
    state_path.unlink(missing_ok=True)
    counts = {k: sum(p["kind"] == k for p in state["problems"]) for k in ("empty", "unreadable", "mode")}
    result = {"checked": len(items), "problems": state["problems"], "counts": counts,
              "bad": [p["file"] for p in state["problems"] if p["kind"] in FATAL]}
    d = cfg.data
    result["report"] = report(result, f"data {d.name}" + (f" ({d.root})" if d.root else ""))
    if output:
        atomic_write_text("".join(f + "\n" for f in result["bad"]), output)
        result["report"].append(f"wrote the {len(result['bad'])} unreadable and empty files to {output}")
    return result


class _Part(Dataset):
    """The items of a scan from ``start`` on (a resumed scan)."""

    def __init__(self, items: _Items, start: int):
        self.items, self.start = items, start

    def __len__(self) -> int:
        return len(self.items) - self.start

    def __getitem__(self, k: int):
        return self.items[self.start + k]


def report(result: dict, what: str) -> list[str]:
    """The check's result as lines for the terminal: each problem, then the verdict and the fixes."""
    lines = [f"  {p['kind']:<10}  [{p['split']}] {p['file']}: {p['detail']}" for p in result["problems"]]
    c, n = result["counts"], result["checked"]
    fatal = c["empty"] + c["unreadable"]
    if not n:
        return [f"{what}: in-memory arrays, read whole when they load: nothing to check per file"]
    if not result["problems"]:
        return [f"{what}: all {n:,} images read fine"]
    verdict = (f"{what}: {n:,} images checked; {c['unreadable']} unreadable, {c['empty']} empty, {c['mode']} in an "
               "unexpected mode (converted to RGB, noted only)")
    if fatal:
        verdict += (". Delete or replace the unreadable and empty files, or set data.on_bad_image=skip to train "
                    "with the next readable sample in their place")
    return lines + [verdict]
