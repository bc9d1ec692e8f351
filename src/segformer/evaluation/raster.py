"""Evaluation on rasters: each image raster whole through the tiled prediction `predict` writes
(`inference.raster.predict_strips`), compared strip by strip with its label raster, so the metrics are those of
predict's GeoTIFF pixel for pixel. Pixels the image has no data for (nodata in predict's output) and label nodata
are not scored. Under torch.distributed each rank takes rasters rank, rank + world, ...; the matrices are summed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..constants import IGNORE_INDEX
from ..data.raster import RasterDataset, label_ids
from ..geoio import gdal_env, open_raster, read_band
from ..inference import InferenceOptions, Segmenter
from ..inference.raster import predict_strips
from ..runtime import rank_world
from .metrics import ConfusionMatrix


def raster_confusion(
    model: nn.Module,
    dataset: RasterDataset,
    options: InferenceOptions,
    *,
    progress: bool = True,
    max_samples: int | None = None,
) -> ConfusionMatrix:
    """The all-reduced confusion matrix of `model` over the rasters of `dataset` (the first `max_samples`)."""
    from tqdm import tqdm

    k = model.config.num_classes
    names = dataset.class_names if len(dataset.class_names) == k else model.config.class_names
    cm = ConfusionMatrix(k, ignore_index=IGNORE_INDEX, class_names=names)
    segmenter = Segmenter(model, options)
    rank, world = rank_world()
    pairs = dataset.pairs[: max_samples or None][rank::world]
    was_training = model.training
    try:
        for pair in tqdm(pairs, desc="eval", unit="raster", disable=not progress or rank != 0, leave=False):
            _update(cm, segmenter, dataset, pair)
    finally:
        model.train(was_training)
    cm.all_reduce()
    return cm


def _update(cm: ConfusionMatrix, segmenter: Segmenter, dataset: RasterDataset, pair: Any) -> None:
    with gdal_env(), open_raster(pair.image) as src, open_raster(pair.label) as lab:
        for strip in predict_strips(segmenter, src, range(1, src.count + 1)):
            raw = read_band(lab, strip.rows, strip.cols)
            target = label_ids(raw, pair.label_nodata, dataset.labels, cm.num_classes, pair.label)
            target[~strip.valid] = IGNORE_INDEX
            cm.update(torch.from_numpy(strip.labels), torch.from_numpy(target))
