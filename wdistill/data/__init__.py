"""Data: uint8 tensors in memory with batched augmentation (BatchLoader), or streamed through
DataLoader workers (StreamLoader); ``build.build_loaders`` picks the path for a run."""
from .benchmark_splits import fmnist_kd_v1
from .cifar import cifar10, cifar100
from .dataset import ImageDataset, stratified_indices
from .folder import image_folder
from .idx import fashion_mnist, mnist, read_idx
from .loader import BatchLoader
from .registry import DATASETS, load_dataset
from .sample import bundled_sample
from .stream import FolderImages, StreamLoader, folder_images
from .synthetic import make_image_folder

__all__ = ["ImageDataset", "stratified_indices", "fashion_mnist", "mnist", "read_idx", "BatchLoader",
           "bundled_sample", "load_dataset", "DATASETS", "cifar10", "cifar100", "image_folder",
           "fmnist_kd_v1", "StreamLoader", "FolderImages", "folder_images", "make_image_folder"]
