"""What a run is built from: its datasets and transform (via segformer.data) and its model, from a TrainConfig."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..constants import IGNORE_INDEX
from ..data.base import Dataset, SampleSource, Transform, as_dataset
from ..data.catalog import DATASETS
from ..model.config import SegFormerConfig, channel_stats
from ..model.segformer import SegFormer
from ..protocol import InferenceOptions
from . import distributed as D
from .config import TrainConfig
from .losses import LossOptions, build_loss, resolve_class_weights

log = logging.getLogger("segformer")


def build_data(
    config: TrainConfig, train_ds: SampleSource | None = None, val_ds: SampleSource | None = None
) -> tuple[Dataset, Dataset | None]:
    """(train dataset, val dataset or None): the datasets given (see `data.as_dataset`), else read as the config
    says. The transform comes after `complete_config` (`training_transform`): it needs the channel statistics."""
    if train_ds is None:
        train_ds = _read_split(config, config.train_split)
        if val_ds is None:
            val_ds = _read_val(config)
    if len(train_ds) == 0:
        raise ValueError(f"training set is empty ({config.dataset} at {config.data_root}, split {config.train_split})")
    return as_dataset(train_ds), as_dataset(val_ds) if val_ds is not None else None


def training_transform(config: TrainConfig, dataset: Dataset) -> Transform:
    """The dataset's own `transform` when set, else the TrainTransform the config describes."""
    return dataset.transform or build_transform(config, dataset)


def _read_split(config: TrainConfig, split: str) -> Dataset:
    from ..data import build_dataset

    if not config.data_root:
        raise ValueError("train config: data_root is not set; pass --data-root DIR")
    return build_dataset(
        config.dataset,
        config.data_root,
        split,
        num_classes=config.num_classes,
        skip_bad=config.skip_bad_samples,
        channels=config.in_channels,
        **config.data_options(),  # label convention (--label-map, ...) and --dataset hf columns
    )


def _read_val(config: TrainConfig) -> Dataset | None:
    try:
        return _read_split(config, config.val_split)
    except (FileNotFoundError, ValueError) as e:  # no such split, or an empty one
        if config.eval_every:
            hint = f"no '{config.val_split}' split: pass --eval-every 0 to skip evaluation"
            raise type(e)(f"{e} ({hint})") from None
        log.info("no '%s' split in %s: training without evaluation", config.val_split, config.data_root)
        return None


def build_transform(config: TrainConfig, dataset: Dataset | None = None) -> Transform:
    """The mmseg training pipeline with the config's settings (crop and scale default to the dataset's)."""
    from ..data import TrainTransform

    info = dataset.info if dataset is not None else None
    scale = config.scale or (info.scale if info is not None else None)
    crop = config.crop or (info.crop if info is not None else None)
    if scale is None or crop is None:
        raise ValueError("train config: crop and scale are unset and the dataset has no defaults; pass --crop/--scale")
    mean, std = channel_stats(SegFormerConfig(in_channels=config.in_channels, mean=config.mean, std=config.std))
    return TrainTransform(
        scale=tuple(scale),
        ratio_range=config.ratio_range,
        crop=tuple(crop),
        cat_max_ratio=config.cat_max_ratio,
        flip_prob=config.flip_prob,
        photometric=config.photometric,
        mean=mean,
        std=std,
    )


def resolve_channels(config: TrainConfig, dataset: Dataset) -> TrainConfig:
    """Check the training images have `in_channels` bands (the first one: the files of a set are alike) and fill in
    mean/std: the config's, ImageNet's (None) for 3 channels, else computed over the training images on process 0."""
    from ..imageio import ChannelMismatchError
    from .channels import resolve_channel_stats

    try:
        image = np.asarray(dataset.load(0)[0])
    except ChannelMismatchError as e:
        raise ValueError(str(e)) from None
    except (ValueError, OSError):
        image = None  # a bad sample: reported (or skipped) by the training stream
    bands = (image.shape[2] if image.ndim == 3 else 1) if image is not None else config.in_channels
    if bands != config.in_channels:
        raise ValueError(f"training images have {bands} channels but in_channels={config.in_channels}")
    main = D.is_main()
    if config.in_channels != 3 and main:
        log.info("%d-channel images: the photometric distortion (RGB only) is off", config.in_channels)
    stats = resolve_channel_stats(config.in_channels, config.mean, config.std, dataset) if main else None
    mean, std = D.broadcast_object(stats)
    if mean is not None and config.mean is None and main:
        log.info("channel mean %s, std %s", [round(m, 4) for m in mean], [round(s, 4) for s in std])
    return config.replace(mean=mean, std=std)


def build_criterion(config: TrainConfig, dataset: Dataset) -> tuple[TrainConfig, Any]:
    """(config with the class weights as numbers, the loss of `config.loss`). 'auto' weights are counted on
    process 0 and shared; the numbers go into config.yaml, so a resumed run needs no recount."""
    weights = None
    if config.class_weights is not None:
        main = D.is_main()
        weights = resolve_class_weights(config.class_weights, dataset, num_classes_of(dataset)) if main else None
        weights = D.broadcast_object(weights)
        if main:
            log.info("class weights (%s): %s", config.class_weights, ", ".join(f"{w:.4g}" for w in weights))
        config = config.replace(class_weights=",".join(repr(w) for w in weights))
    options = LossOptions(IGNORE_INDEX, weights, config.avg_non_ignore, config.ohem_thresh, config.ohem_min_kept)
    return config, build_loss(config.loss, options)


def num_classes_of(dataset: Dataset) -> int:
    """The dataset's class count; training needs one."""
    if dataset.num_classes is None:
        raise ValueError(f"the training set ({dataset!r}) has neither num_classes nor class_names; give it one")
    return int(dataset.num_classes)


def complete_config(config: TrainConfig, dataset: Dataset) -> TrainConfig:
    """`config` with num_classes, crop and scale taken from the training set (checked against what it says)."""
    num_classes = num_classes_of(dataset)
    if config.num_classes is not None and config.num_classes != num_classes:
        raise ValueError(f"train config: num_classes={config.num_classes} but the dataset has {num_classes} classes")
    info = dataset.info
    return config.replace(
        num_classes=num_classes,
        crop=config.crop or (tuple(info.crop) if info is not None else None),
        scale=config.scale or (tuple(info.scale) if info is not None else None),
    )


def class_names(dataset: Dataset) -> tuple[str, ...] | None:
    names = dataset.class_names
    return tuple(str(n) for n in names) if names else None


def warn_unseen_classes(dataset: Dataset, sample: int = 32) -> list[str]:
    """Log (and return) the classes absent from up to `sample` evenly spaced training masks, when that is a sure
    sign of a label mistake: every mask was read, or at most one class showed up at all (binary masks saved as
    0/255 make the object 255 = ignore, so it would never be trained). `segformer data check` finds the cause."""
    n, k = len(dataset), num_classes_of(dataset)
    indices = sorted({i * n // min(n, sample) for i in range(min(n, sample))})
    seen: set[int] = set()
    for i in indices:
        try:
            mask = dataset.load(i)[1]
        except (OSError, ValueError):
            continue  # bad samples are reported where they are read for training
        seen.update(int(v) for v in np.unique(mask) if v < k)
    names = dataset.class_names or [str(c) for c in range(k)]
    missing = [str(names[c]) for c in range(k) if c not in seen]
    if missing and (len(indices) == n or len(seen) <= 1):
        log.warning(
            "training labels: %s never appear in %d training masks read, so they would never be trained; "
            "run `segformer data check` with the same dataset flags for the flag that fixes the labels",
            ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""),
            len(indices),
        )
    return missing


def protocol_for_run(config: TrainConfig, dataset: Dataset) -> InferenceOptions | None:
    """How `predict` should run the trained model, saved with it: a standard dataset's paper protocol, else whole
    images rescaled to the training scale (the one periodic evaluation uses)."""
    info = dataset.info
    if info is not None and DATASETS.get(info.name) == info:
        return info.test_protocol
    tiled = dataset.tiled_protocol(config.crop)  # rasters: tiles of the training crop at their resolution
    if tiled is not None:
        return tiled
    return InferenceOptions(scale=tuple(config.scale)) if config.scale else None


def build_model(config: TrainConfig, num_classes: int, class_names: tuple[str, ...] | None) -> SegFormer:
    """A fresh SegFormer for `config.model` (what `loading.model_from_spec` takes: a variant name, a config file or
    a checkpoint), encoder from `config.pretrained`, with the config's drop rates."""
    from ..model.loading import model_from_spec

    overrides: dict[str, Any] = {"in_channels": config.in_channels}
    if config.mean is not None:
        overrides.update(mean=config.mean, std=config.std)
    if config.drop_path_rate is not None:
        overrides["drop_path_rate"] = config.drop_path_rate
    if config.classifier_dropout is not None:
        overrides["classifier_dropout"] = config.classifier_dropout
    from ..model.licence import trained

    model = model_from_spec(
        config.model, num_classes=num_classes, pretrained=config.pretrained, class_names=class_names,
        partial=config.pretrained_partial, **overrides,
    )  # fmt: skip
    model.config = model.config.replace(licence=trained(model.config.licence, dataset_label(config)))
    return model


def dataset_label(config: TrainConfig) -> str:
    """The training data as the licence record names it: the dataset, and the folder or hub id it was read from."""
    return config.dataset + (
        f" ({config.data_root})" if config.dataset in ("folder", "hf") and config.data_root else ""
    )
