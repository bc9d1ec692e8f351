"""What a run is built from: its datasets and transform (via segformer.data) and its model, from a TrainConfig."""

from __future__ import annotations

import logging
from typing import Any

from ..config import TestProtocol
from ..data.catalog import DATASETS
from ..model import SegFormer
from .config import TrainConfig

log = logging.getLogger("segformer")


def build_data(config: TrainConfig, train_ds: Any = None, val_ds: Any = None) -> tuple[Any, Any, Any]:
    """(train dataset, its transform, val dataset or None): the datasets given, else read as the config says.

    A given train dataset's `transform` attribute, when set, wins over the TrainTransform the config describes.
    """
    if train_ds is None:
        train_ds = _read_split(config, config.train_split)
        transform = build_transform(config, train_ds)
        if val_ds is None:
            val_ds = _read_val(config)
    else:
        transform = getattr(train_ds, "transform", None) or build_transform(config, train_ds)
    if len(train_ds) == 0:
        raise ValueError(f"training set is empty ({config.dataset} at {config.data_root}, split {config.train_split})")
    return train_ds, transform, val_ds


def _read_split(config: TrainConfig, split: str) -> Any:
    from ..data import build_dataset

    if not config.data_root:
        raise ValueError("train config: data_root is not set; pass --data-root DIR")
    return build_dataset(
        config.dataset, config.data_root, split, num_classes=config.num_classes, skip_bad=config.skip_bad_samples
    )


def _read_val(config: TrainConfig) -> Any:
    try:
        return _read_split(config, config.val_split)
    except (FileNotFoundError, ValueError) as e:  # no such split, or an empty one
        if config.eval_every:
            hint = f"no '{config.val_split}' split: pass --eval-every 0 to skip evaluation"
            raise type(e)(f"{e} ({hint})") from None
        log.info("no '%s' split in %s: training without evaluation", config.val_split, config.data_root)
        return None


def build_transform(config: TrainConfig, dataset: Any) -> Any:
    """The mmseg training pipeline with the config's settings (crop and scale default to the dataset's)."""
    from ..data import TrainTransform

    info = getattr(dataset, "info", None)
    scale = config.scale or (info.scale if info is not None else None)
    crop = config.crop or (info.crop if info is not None else None)
    if scale is None or crop is None:
        raise ValueError("train config: crop and scale are unset and the dataset has no defaults; pass --crop/--scale")
    return TrainTransform(
        scale=tuple(scale),
        ratio_range=config.ratio_range,
        crop=tuple(crop),
        cat_max_ratio=config.cat_max_ratio,
        flip_prob=config.flip_prob,
        photometric=config.photometric,
    )


def complete_config(config: TrainConfig, dataset: Any) -> TrainConfig:
    """`config` with num_classes, crop and scale taken from the training set (checked against what it says)."""
    num_classes = int(dataset.num_classes)
    if config.num_classes is not None and config.num_classes != num_classes:
        raise ValueError(f"train config: num_classes={config.num_classes} but the dataset has {num_classes} classes")
    info = getattr(dataset, "info", None)
    return config.replace(
        num_classes=num_classes,
        crop=config.crop or (tuple(info.crop) if info is not None else None),
        scale=config.scale or (tuple(info.scale) if info is not None else None),
    )


def class_names(dataset: Any) -> tuple[str, ...] | None:
    names = getattr(dataset, "class_names", None)
    return tuple(str(n) for n in names) if names else None


def test_protocol(config: TrainConfig, dataset: Any) -> TestProtocol | None:
    """How `predict` should run the trained model, saved with it: a standard dataset's paper protocol, else whole
    images rescaled to the training scale (the one periodic evaluation uses)."""
    info = getattr(dataset, "info", None)
    if info is not None and DATASETS.get(info.name) == info:
        return info.test_protocol
    return TestProtocol(mode="whole", scale=tuple(config.scale)) if config.scale else None


def build_model(config: TrainConfig, num_classes: int, class_names: tuple[str, ...] | None) -> SegFormer:
    """A fresh SegFormer for `config.model` (what `loading.model_from_spec` takes: a variant name, a config file or
    a checkpoint), encoder from `config.pretrained`, with the config's drop rates."""
    from ..loading import model_from_spec

    overrides: dict[str, Any] = {}
    if config.drop_path_rate is not None:
        overrides["drop_path_rate"] = config.drop_path_rate
    if config.classifier_dropout is not None:
        overrides["classifier_dropout"] = config.classifier_dropout
    return model_from_spec(
        config.model, num_classes=num_classes, pretrained=config.pretrained, class_names=class_names, **overrides
    )
