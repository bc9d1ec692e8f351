"""The dataset interface: what every dataset the library reads is (as torchvision's VisionDataset, timm's Reader).

Two types, so that callers depend on a declared interface and never probe attributes:

- `SampleSource`, a Protocol: `len(source)` and `source.load(i) -> (image (H, W, C), mask (H, W), name)`. It is the
  least a user passes to `train`, `evaluate` or `export_int8` (arrays in memory, a database, ...).
- `Dataset`, a base class: a sample source with its metadata (`info`, `class_names`, `num_classes`, `ignore_index`,
  `labels`, `transform`, `dropped`, `path_of(i)`) and what a dataset may know better than its samples tell
  (`tiled_protocol`, `channel_stats`, `class_pixel_counts`: None by default; rasters answer them). The layouts
  the library reads (`SegmentationDataset`, `HFSegmentationDataset`, `RasterDataset`) are Datasets;
  `as_dataset(source)` gives any sample source this interface, reading the optional attributes a plain object may
  carry in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from ..protocol import InferenceOptions
from .catalog import IGNORE_INDEX, DatasetInfo
from .labels import LabelConvention

Sample = tuple[np.ndarray, np.ndarray, str]  # (image (H, W, C), mask (H, W) ids 0..K-1 or 255, name)
Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], Any]  # (image, mask, rng) -> training arrays


class SampleSource(Protocol):
    """Anything with `len()` and `load(i) -> (image (H, W, C), mask (H, W), name)`."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> Sample: ...


class Dataset(torch.utils.data.Dataset):
    """A sample source and what is known about it. Subclasses implement `__len__` and `load`; the metadata defaults
    say "nothing known" (no catalog entry, ids as stored, no transform).

    `ds[i]` is `transform(image, mask, rng)` with a fresh unseeded `rng` (or the `load` tuple without a transform),
    for looking at augmentations; training draws reproducible samples through `sampling.SampleStream`.
    """

    info: DatasetInfo | None = None  # class names, palette, train/test geometry; None: unknown
    labels: LabelConvention = LabelConvention()  # how stored mask values became ids (saved with a trained model)
    transform: Transform | None = None  # used by training instead of a TrainTransform when set
    dropped: int = 0  # samples left out while building (no mask, with skip_bad)

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Sample:
        raise NotImplementedError

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.info.class_names if self.info is not None else None

    @property
    def num_classes(self) -> int | None:
        names = self.class_names
        return len(names) if names is not None else None

    @property
    def ignore_index(self) -> int:
        return IGNORE_INDEX

    @property
    def palette(self) -> np.ndarray | None:
        """(K, 3) uint8 colours, or None."""
        return self.info.palette_array() if self.info is not None else None

    def path_of(self, index: int) -> str | None:
        """The file (or row) sample `index`'s mask is read from, for messages; None when there is none."""
        return None

    def tiled_protocol(self, crop: Sequence[int] | None) -> InferenceOptions | None:
        """How validation and the trained model's `predict` run this dataset's whole images when they are read in
        tiles (rasters: tiles of the training `crop`, or the dataset's); None: whole images at the training scale."""
        return None

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """Per-channel (mean, std) of every pixel with data, when the dataset computes them better than averaging
        `load(i)` (rasters: whole rasters, nodata left out); None: from `load`."""
        return None

    def class_pixel_counts(self) -> np.ndarray | None:
        """Labelled pixels per class id, when the dataset counts them itself (rasters: whole label rasters); None:
        counted from the masks."""
        return None

    def __getitem__(self, index: int) -> Any:
        image, mask, name = self.load(index)
        if self.transform is None:
            return image, mask, name
        return self.transform(image, mask, np.random.default_rng())


class SourceDataset(Dataset):
    """A `SampleSource` with the `Dataset` interface; metadata as given (see `as_dataset`)."""

    def __init__(
        self,
        source: SampleSource,
        *,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        ignore_index: int = IGNORE_INDEX,
        info: DatasetInfo | None = None,
        labels: LabelConvention | None = None,
        transform: Transform | None = None,
        dropped: int = 0,
        paths: Sequence[Any] | None = None,
    ) -> None:
        self.source = source
        self._class_names = tuple(class_names) if class_names is not None else None
        self._num_classes = num_classes
        self._ignore_index = int(ignore_index)
        self.info = info
        self.labels = labels if labels is not None else LabelConvention()
        self.transform = transform
        self.dropped = dropped
        self._paths = paths  # per sample, (image, mask) or the mask alone

    def __len__(self) -> int:
        return len(self.source)

    def __repr__(self) -> str:
        return f"SourceDataset({self.source!r})"

    def load(self, index: int) -> Sample:
        return self.source.load(index)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self._class_names if self._class_names is not None else super().class_names

    @property
    def num_classes(self) -> int | None:
        return int(self._num_classes) if self._num_classes is not None else super().num_classes

    @property
    def ignore_index(self) -> int:
        return self._ignore_index

    def path_of(self, index: int) -> str | None:
        try:
            entry = self._paths[index]  # type: ignore[index]
        except (TypeError, IndexError, KeyError):
            return None
        return str(entry[1] if isinstance(entry, tuple | list) else entry)


# The optional attributes a plain sample source may carry, read by `as_dataset` and nowhere else.
_OPTIONAL = ("class_names", "num_classes", "ignore_index", "info", "labels", "transform", "dropped")


def as_dataset(source: SampleSource) -> Dataset:
    """`source` itself when it is a `Dataset`, else a `SourceDataset` over it with the metadata it carries as
    attributes (`class_names`, `num_classes`, `ignore_index`, `info`, `labels`, `transform`, `dropped`, and
    `samples` as (image, mask) paths for messages). The entry points that accept user data (`train`, `evaluate`,
    `export_int8`, `SampleStream`, class weights) call this once; everything below them takes a `Dataset`."""
    if isinstance(source, Dataset):
        return source
    if not callable(getattr(source, "load", None)):
        raise TypeError(f"{type(source).__name__} is not a dataset: it needs len() and load(i) -> (image, mask, name)")
    given = {name: getattr(source, name) for name in _OPTIONAL if getattr(source, name, None) is not None}
    return SourceDataset(source, paths=getattr(source, "samples", None), **given)
