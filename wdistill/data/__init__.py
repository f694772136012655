"""Datasets as uint8 tensors in memory, batched tensor augmentation, loaders."""
from .dataset import ImageDataset, stratified_indices
from .idx import fashion_mnist, mnist, read_idx
from .loader import BatchLoader
from .sample import bundled_sample
from .registry import load_dataset, DATASETS

__all__ = ["ImageDataset", "stratified_indices", "fashion_mnist", "mnist", "read_idx", "BatchLoader",
           "bundled_sample", "load_dataset", "DATASETS"]
