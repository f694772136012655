"""Build wdistill/data/sample/fmnist_sample.npz: a stratified Fashion-MNIST sample.

600 train images per class from the official training split and 100 test images per class from
the official test split, chosen with a fixed seed. Needs the IDX files (Debian package
dataset-fashion-mnist, or a directory given as the first argument).
"""
import sys
from pathlib import Path

import numpy as np
import torch

from wdistill.data.dataset import stratified_indices
from wdistill.data.idx import fashion_mnist

out = Path(__file__).resolve().parents[1] / "wdistill" / "data" / "sample" / "fmnist_sample.npz"
root = sys.argv[1] if len(sys.argv) > 1 else None
g = torch.Generator().manual_seed(2024)
arrays = {}
for split, per_class in (("train", 600), ("test", 100)):
    ds = fashion_mnist(split, root)
    idx = stratified_indices(ds.targets, per_class, g)
    arrays[f"{split}_images"] = ds.images[idx, 0].numpy()
    arrays[f"{split}_labels"] = ds.targets[idx].numpy().astype(np.uint8)
np.savez_compressed(out, **arrays)
print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
