"""Datasets in their standard on-disk layouts, the mmseg-style training pipeline, and the training sample stream.

Every dataset is a `Dataset` (base.py: len, load(i), class_names, ignore_index, info, ...); each on-disk layout is
one row of `LAYOUTS` (layouts.py), which `build_dataset`, `data check` and the CLI read.

from segformer.data import DATASETS, SampleStream, TrainTransform, build_dataset
info = DATASETS["ade20k"]
ds = build_dataset("ade20k", "data/ADEChallengeData2016", "training")
stream = SampleStream(ds, TrainTransform(info.scale, crop=info.crop), seed=0)
image, mask = stream[g]       # global stream position g, exactly what training step g // global_batch sees
raw_image, raw_mask, name = ds.load(0)

Own data: build_dataset("folder", root, "train", labels=LabelConvention(label_map=((255, 1),))) for 0/255 masks;
check_dataset("folder", root) reports every split and what to fix; build_dataset("hf", ...) reads HF datasets.
"""

from .base import Dataset, SampleSource, as_dataset
from .catalog import DATASETS, IGNORE_INDEX, DatasetInfo, folder_info
from .check import DataReport, check_dataset, class_pixel_counts, class_weights
from .datasets import SegmentationDataset
from .labels import LabelConvention, LabelError, parse_label_map, read_palette
from .layouts import DATASET_NAMES, LAYOUTS, Layout, build_dataset, read_class_names
from .sampling import BatchPlan, SampleStream, next_batch, train_loader
from .transforms import PhotoMetricDistortion, TrainTransform, choose_crop, rescale_size

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "IGNORE_INDEX",
    "LAYOUTS",
    "BatchPlan",
    "DataReport",
    "Dataset",
    "DatasetInfo",
    "LabelConvention",
    "LabelError",
    "Layout",
    "PhotoMetricDistortion",
    "SampleSource",
    "SampleStream",
    "SegmentationDataset",
    "TrainTransform",
    "as_dataset",
    "build_dataset",
    "check_dataset",
    "choose_crop",
    "class_pixel_counts",
    "class_weights",
    "folder_info",
    "next_batch",
    "parse_label_map",
    "read_class_names",
    "read_palette",
    "rescale_size",
    "train_loader",
]
