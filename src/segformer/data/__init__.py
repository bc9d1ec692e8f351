"""Datasets in their standard on-disk layouts and the mmseg-style training pipeline.

from segformer.data import DATASETS, TrainTransform, build_dataset
info = DATASETS["ade20k"]
ds = build_dataset("ade20k", "data/ADEChallengeData2016", "training",
                   transform=TrainTransform(info.scale, crop=info.crop))
image, mask = ds[(0, (seed, iteration, slot))]     # or ds[0] for an unseeded draw; ds.load(0) for raw arrays
"""

from .catalog import DATASET_NAMES, DATASETS, IGNORE_INDEX, DatasetInfo, folder_info
from .datasets import SegmentationDataset, build_dataset, read_class_names
from .sampling import TrainSampler
from .transforms import PhotoMetricDistortion, TrainTransform, choose_crop, rescale_size

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "IGNORE_INDEX",
    "DatasetInfo",
    "PhotoMetricDistortion",
    "SegmentationDataset",
    "TrainSampler",
    "TrainTransform",
    "build_dataset",
    "choose_crop",
    "folder_info",
    "read_class_names",
    "rescale_size",
]
