"""Input channels for training: the per-channel mean/std that normalise the images (and travel with the model)."""

from __future__ import annotations

import logging

import numpy as np

from ..data.base import SampleSource, as_dataset

log = logging.getLogger("segformer")


def dataset_channel_stats(dataset: SampleSource) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of the raw pixel values over every image of `dataset` (`len`,
    `load(i)` -> (image (H, W, C), mask, name)), accumulated in float64. A dataset that computes its own
    (`Dataset.channel_stats`: rasters, over every pixel with data) gives them."""
    own = as_dataset(dataset).channel_stats()
    if own is not None:
        return own
    total = total_sq = None
    count = 0
    for i in range(len(dataset)):
        image = np.asarray(dataset.load(i)[0], dtype=np.float64)
        pixels = image.reshape(-1, image.shape[-1] if image.ndim == 3 else 1)
        if total is None:
            total, total_sq = np.zeros(pixels.shape[1]), np.zeros(pixels.shape[1])
        total += pixels.sum(axis=0)
        total_sq += (pixels * pixels).sum(axis=0)
        count += len(pixels)
    if total is None or count == 0:
        raise ValueError("cannot compute channel statistics of an empty training set")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std = np.where(std > 0, std, 1.0)  # a constant band: centre it, do not divide by 0
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def resolve_channel_stats(
    in_channels: int, mean: tuple[float, ...] | None, std: tuple[float, ...] | None, dataset: SampleSource
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """(mean, std) for a run: the given ones; None, None (ImageNet's) for 3 channels without them; otherwise
    computed from the training images (logged)."""
    if mean is not None and std is not None:
        return mean, std
    if in_channels == 3:
        return None, None
    log.info("computing per-channel mean/std over %d training images (pass --mean/--std to skip)", len(dataset))
    return dataset_channel_stats(dataset)
