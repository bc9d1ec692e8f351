"""Datasets in their standard on-disk layouts and the mmseg-style training pipeline."""

from .catalog import DATASETS, IGNORE_INDEX, DatasetInfo, folder_info

__all__ = ["DATASETS", "IGNORE_INDEX", "DatasetInfo", "folder_info"]
