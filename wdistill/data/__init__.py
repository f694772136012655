"""Data: uint8 tensors in memory with batched augmentation (BatchLoader), or streamed through
DataLoader workers (StreamLoader); ``build.build_loaders`` picks the path for a run. Detection:
COCO-format folders (``coco.CocoDetection``, COCOeval in ``coco_evaluate``), their transforms
(``det_transforms``) and loaders (``det_loader``)."""
from wdistill.data.benchmark_splits import fmnist_kd_v1
from wdistill.data.cifar import cifar10, cifar100
from wdistill.data.coco import CocoDetection, coco_evaluate, collate_detection
from wdistill.data.dataset import ImageDataset, stratified_indices
from wdistill.data.det_loader import DetectionLoader, build_detection_data, coco_splits
from wdistill.data.det_transforms import detection_transforms
from wdistill.data.folder import folder_images, image_folder
from wdistill.data.idx import fashion_mnist, mnist, read_idx
from wdistill.data.loader import BatchLoader
from wdistill.data.registry import DATASETS, load_dataset
from wdistill.data.sample import bundled_sample
from wdistill.data.samples import FolderImages
from wdistill.data.stream import StreamLoader
from wdistill.data.synthetic import make_image_folder

__all__ = ["ImageDataset", "stratified_indices", "fashion_mnist", "mnist", "read_idx", "BatchLoader",
           "bundled_sample", "load_dataset", "DATASETS", "cifar10", "cifar100", "image_folder",
           "fmnist_kd_v1", "StreamLoader", "FolderImages", "folder_images", "make_image_folder", "CocoDetection",
           "coco_evaluate", "collate_detection", "coco_splits", "detection_transforms", "DetectionLoader",
           "build_detection_data"]
