"""Streaming-loader benchmark (issue 11): peak memory vs data set size, and images/s vs its floor.

    OMP_NUM_THREADS=1 python -m benchtools.stream_loader --out benchmarks/stream_loader.md

(a) Folders of real JPEG files (64x64, ImageNet layout, 2,000 and 8,000 training images) are
    written once under --work; for each, a fresh process iterates one training epoch of the
    streaming loader (RandomResizedCrop 56 + flip, batch 64, --workers workers) while a sampler
    reads the proportional resident memory (PSS) of the process and its workers every 20 ms from
    the first batch on (while a worker forks, /proc reads double-count pages); the peak of the
    sum is reported. Flat means: the 8,000-image peak within 10% of the 2,000-image one.
(b) images/s of the same epoch (8,000 images) through the streaming loader against its floor:
    a multiprocessing.Pool of the same number of workers that opens each file with PIL, converts
    it to RGB, resizes a centre box to 56x56 and returns the uint8 array -- decoding and cropping
    to the same size, nothing else. Runs alternate (floor, loader, floor, loader, ...) and the
    median of each is compared.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from wdistill.data.synthetic import make_image_folder
from wdistill.io import atomic_write_text

CROP, BATCH = 56, 64


def rss_tree(pid: int) -> int:
    """Proportional resident bytes (PSS: shared pages split between the processes sharing them, so
    forked workers are not counted twice) of ``pid`` and all its descendants, from /proc."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def one_epoch(root: str, workers: int, sample_memory: bool = True, normalise: bool = True,
              device: str = "cpu") -> dict:
    """(in a fresh process) iterate one training epoch; peak RSS of the process tree and images/s.
    On a CUDA ``device`` the batches arrive there through pinned memory (the copy is timed: the
    epoch ends with a synchronise)."""
    import torch

    from wdistill.data.folder import folder_images
    from wdistill.data.stream import ImageTransform, StreamLoader

    ds = folder_images(Path(root) / "train")
    loader = StreamLoader(ds, BATCH, True, device, transform=ImageTransform(True, flip=True, resized_crop=CROP,
                                                                            rgb=True),
                          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), seed=0, workers=workers)
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_tree(os.getpid()))
            time.sleep(0.02)
    n, t0 = 0, time.perf_counter()
    for batch in (loader if normalise else ({"target": b[1]} for b in loader.loader)):
        if n == 0 and sample_memory:  # once the workers are up: /proc reads during a fork double-count
            threading.Thread(target=sample, daemon=True).start()
        n += len(batch["target"])
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    stop.set()
    hwm = [high_water(p) for p in [os.getpid()] + children(os.getpid())]  # workers persist: still alive
    del loader, batch
    gc.collect()  # shuts the persistent workers down, so their CPU time is counted
    return {"images": len(ds), "seen": n, "seconds": seconds, "peak_pss": max(peak[0], rss_tree(os.getpid())),
            "hwm_main": hwm[0], "hwm_workers": hwm[1:], "cpu": cpu_seconds()}


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the workers)."""
    r = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(x.ru_utime + x.ru_stime for x in r)


def children(pid: int) -> list[int]:
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def high_water(pid: int) -> int:
    """The kernel's peak resident set (VmHWM) of one process, bytes."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024


def _floor_item(path: str) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB")
    w, h = im.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return np.asarray(im.resize((CROP, CROP), Image.BILINEAR, box=box))


def floor_epoch(root: str, workers: int) -> dict:
    from wdistill.data.folder import folder_images
    files = folder_images(Path(root) / "train").files
    t0 = time.perf_counter()  # worker start-up included, as in the loader's epoch
    pool = Pool(workers)
    n = sum(1 for _ in pool.imap(_floor_item, files, chunksize=BATCH))
    seconds = time.perf_counter() - t0
    pool.close()
    pool.join()  # workers reaped: their CPU time is counted
    return {"images": n, "seconds": seconds, "cpu": cpu_seconds()}


def run_child(kind: str, root: Path, workers: int, device: str = "cpu") -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--root", str(root), "--workers", str(workers),
                          "--device", device],
                         check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/wdistill-stream-bench", help="where the JPEG folders are written")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="where batches are delivered (cuda: through pinned memory)")
    ap.add_argument("--out", default=None, help="markdown results file")
    ap.add_argument("--child", choices=["memory", "loader", "loader_u8", "floor"], help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.child == "floor":
            print(json.dumps(floor_epoch(args.root, args.workers)))
        else:  # throughput runs do not sample memory: reading smaps costs CPU the floor does not pay
            print(json.dumps(one_epoch(args.root, args.workers, sample_memory=args.child == "memory",
                                       normalise=args.child != "loader_u8", device=args.device)))
        return 0

    memory, runs = _measure(args)
    text = "\n".join(_header(args) + _memory_lines(memory) + _throughput_lines(runs) + _cpu_lines(runs))
    print(text)
    if args.out:
        atomic_write_text(text, args.out)
    return 0


def _measure(args) -> tuple[dict, dict]:
    """(peak memory of one epoch at 2,000 and 8,000 images, alternating throughput runs)."""
    roots = {}
    for n in (2000, 8000):
        root = Path(args.work) / f"jpeg{n}"
        if not (root / "train").is_dir():
            make_image_folder(root, n // 10, classes=10, size=(64, 64), seed=n, splits=("train",))
        roots[n] = root
    memory = {n: run_child("memory", r, args.workers, args.device) for n, r in roots.items()}
    runs = {"floor": [], "loader_u8": [], "loader": []}
    for _ in range(args.repeats):
        for kind in runs:
            runs[kind].append(run_child(kind, roots[8000], args.workers, args.device))
    return memory, runs


def _header(args) -> list[str]:
    return [
        "# Streaming loader: peak memory and throughput",
        "",
        f"Command: `OMP_NUM_THREADS=1 python -m benchtools.stream_loader --workers {args.workers} "
        + ("" if args.device == "cpu" else f"--device {args.device} ") +
        f"--repeats {args.repeats} --out benchmarks/stream_loader.md` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        "",
        f"Machine: {os.cpu_count()} CPU cores **shared with other jobs while this ran** (load from other "
        "agents' tests), so absolute images/s are noisy; the ratio is measured within one run with the "
        "floor and the loader alternating.",
        "",
        f"Data: generated 64x64 JPEG files (quality 90) in ImageNet layout; training transform "
        f"RandomResizedCrop {CROP} + flip, batch {BATCH}, {args.workers} DataLoader workers, one epoch.",
        "",
        "## Peak memory over one epoch",
        "",
        "Kernel high-water marks (VmHWM: the peak resident set of each process over its life, shared "
        "library pages counted in every process) of the main process and of each worker, and the peak of "
        "the summed proportional set size (PSS, shared pages split) sampled every 20 ms once the first "
        "batch arrived.",
        "",
        "| images | main VmHWM (MiB) | worker VmHWM (MiB) | main + workers VmHWM (MiB) | peak PSS sum (MiB) "
        "| epoch (s) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]


def _memory_lines(memory: dict) -> list[str]:
    lines, total = [], {}
    for n in sorted(memory):
        m = memory[n]
        total[n] = (m["hwm_main"] + sum(m["hwm_workers"])) / 2**20
        workers = ", ".join(f"{w / 2**20:.1f}" for w in m["hwm_workers"])
        lines.append(
            f"| {n:,} | {m['hwm_main'] / 2**20:.1f} | {workers} | {total[n]:.1f} | "
            f"{m['peak_pss'] / 2**20:.1f} | {m['seconds']:.1f} |"
        )
    growth = 100 * (total[8000] / total[2000] - 1)
    growth_pss = 100 * (memory[8000]["peak_pss"] / memory[2000]["peak_pss"] - 1)
    lines += [
        "",
        f"8,000 vs 2,000 images: main + workers high-water mark {growth:+.1f}%, peak PSS {growth_pss:+.1f}% "
        f"(target: within 10%) -- {'met' if abs(growth) <= 10 else 'NOT met'} on the high-water mark.",
    ]
    return lines


def _throughput_lines(runs: dict) -> list[str]:
    rate = {k: statistics.median(r["images"] / r["seconds"] for r in v) for k, v in runs.items()}
    best = {k: max(r["images"] / r["seconds"] for r in v) for k, v in runs.items()}
    lines = [
        "",
        "## Throughput against the floor (8,000 images)",
        "",
        "| | images/s (median) | images/s (best) | runs |",
        "|---|---:|---:|---|",
    ]
    for k, label in (
        ("floor", "floor: Pool + PIL decode + resize to 56, nothing else"),
        ("loader_u8", "StreamLoader's DataLoader: RandomResizedCrop + flip, collated uint8 batches"),
        ("loader", "StreamLoader, as training sees it: + float (x/255 - mean)/std in the main process"),
    ):
        each = ", ".join(f"{r['images'] / r['seconds']:.0f}" for r in runs[k])
        lines.append(f"| {label} | {rate[k]:.0f} | {best[k]:.0f} | {each} |")
    lines.append("")
    for k, what in (("loader_u8", "uint8 batches"), ("loader", "normalised float batches")):
        overhead = 100 * (rate["floor"] / rate[k] - 1)
        overhead_best = 100 * (best["floor"] / best[k] - 1)
        lines.append(
            f"- {what}: time over the floor {overhead:+.1f}% on the medians, {overhead_best:+.1f}% on the best "
            f"runs (target: at most +10%): median {'met' if overhead <= 10 else 'NOT met'}, "
            f"best {'met' if overhead_best <= 10 else 'NOT met'}."
        )
    return lines


def _cpu_lines(runs: dict) -> list[str]:
    cpu = {k: statistics.median(1000 * r["cpu"] / r["images"] for r in v) for k, v in runs.items()}
    return [
        "",
        "CPU time is far less disturbed by other jobs than wall time: user + system seconds of the "
        "main process and all its workers per 1,000 images (medians; includes interpreter and "
        "worker start-up, which is the same for both):",
        "",
        "| | CPU s / 1,000 images |",
        "|---|---:|",
        f"| floor | {cpu['floor']:.3f} |",
        f"| loader, uint8 batches | {cpu['loader_u8']:.3f} |",
        f"| loader, normalised float batches | {cpu['loader']:.3f} |",
        "",
        f"CPU over the floor: uint8 batches {100 * (cpu['loader_u8'] / cpu['floor'] - 1):+.1f}%, normalised "
        f"{100 * (cpu['loader'] / cpu['floor'] - 1):+.1f}% (on a GPU the normalisation runs on the device, "
        "on uint8 batches copied there).",
        "",
    ]


if __name__ == "__main__":
    sys.exit(main())
