"""Datasets in their standard on-disk layouts and the mmseg-style training pipeline.

from segformer.data import DATASETS, TrainTransform, build_dataset
info = DATASETS["ade20k"]
ds = build_dataset("ade20k", "data/ADEChallengeData2016", "training",
                   transform=TrainTransform(info.scale, crop=info.crop))
image, mask = ds[(0, (seed, iteration, slot))]     # or ds[0] for an unseeded draw; ds.load(0) for raw arrays

Own data: build_dataset("folder", root, "train", labels=LabelConvention(label_map=((255, 1),))) for 0/255 masks;
check_dataset("folder", root) reports every split and what to fix; build_dataset("hf", ...) reads HF datasets.
"""

from .catalog import DATASET_NAMES, DATASETS, IGNORE_INDEX, DatasetInfo, folder_info
from .check import DataReport, check_dataset, class_weights
from .datasets import SegmentationDataset, build_dataset, read_class_names
from .labels import LabelConvention, LabelError, parse_label_map, read_palette
from .sampling import TrainSampler
from .transforms import PhotoMetricDistortion, TrainTransform, choose_crop, rescale_size

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "IGNORE_INDEX",
    "DataReport",
    "DatasetInfo",
    "LabelConvention",
    "LabelError",
    "PhotoMetricDistortion",
    "SegmentationDataset",
    "TrainSampler",
    "TrainTransform",
    "build_dataset",
    "check_dataset",
    "choose_crop",
    "class_weights",
    "folder_info",
    "parse_label_map",
    "read_class_names",
    "read_palette",
    "rescale_size",
]
