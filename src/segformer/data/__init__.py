"""Datasets in their standard on-disk layouts, the mmseg-style training pipeline, and the training sample stream.

from segformer.data import DATASETS, SampleStream, TrainTransform, build_dataset
info = DATASETS["ade20k"]
ds = build_dataset("ade20k", "data/ADEChallengeData2016", "training")
stream = SampleStream(ds, TrainTransform(info.scale, crop=info.crop), seed=0)
image, mask = stream[g]       # global stream position g, exactly what training step g // global_batch sees
raw_image, raw_mask, name = ds.load(0)
"""

from .catalog import DATASET_NAMES, DATASETS, IGNORE_INDEX, DatasetInfo, folder_info
from .datasets import SegmentationDataset, build_dataset, read_class_names
from .sampling import BatchPlan, SampleStream, next_batch, train_loader
from .transforms import PhotoMetricDistortion, TrainTransform, choose_crop, rescale_size

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "IGNORE_INDEX",
    "BatchPlan",
    "DatasetInfo",
    "PhotoMetricDistortion",
    "SampleStream",
    "SegmentationDataset",
    "TrainTransform",
    "build_dataset",
    "choose_crop",
    "folder_info",
    "next_batch",
    "read_class_names",
    "rescale_size",
    "train_loader",
]
