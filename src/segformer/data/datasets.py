"""`SegmentationDataset`: image/mask file pairs with each layout's label mapping applied (`layouts.py` finds them).

Every dataset is a list of (image path, mask path) pairs plus a per-sample label table; files are read and
validated lazily in `load(i)`, so building a dataset over 100k images only lists directories.

Bad samples: `load(i)` always raises a one-line error naming the file (unreadable/truncated image or mask, size
mismatch, mask value that is neither a class id nor 255). With `skip_bad=True`, building drops images without a
mask (counted in `ds.dropped`); skipping unreadable samples while training is `sampling.SampleStream`'s job.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..imageio import ImageReadError, _open, read_image
from .base import Dataset, Sample, Transform
from .catalog import IGNORE_INDEX, DatasetInfo
from .labels import LabelConvention, LabelError, read_raw_mask


class SegmentationDataset(Dataset):
    """(image, mask) file pairs with class names, palette and label mapping; picklable for DataLoader workers.

    `ds.load(i)` reads sample `i` (see `base.Dataset` for `ds[i]`). Training draws reproducible, resumable samples
    through `sampling.SampleStream`, which uses `ds.transform` when it is set. `open_raw`, `table_of` and `tables`
    give `data check` the files as stored and the tables that map them.
    """

    info: DatasetInfo

    def __init__(
        self,
        samples: Sequence[tuple[str | Path, str | Path]],
        info: DatasetInfo,
        *,
        label_maps: Sequence[np.ndarray | None] | None = None,
        labels: LabelConvention | None = None,
        transform: Transform | None = None,
        skip_bad: bool = False,
        where: str = "",
        dropped: int = 0,
        missing: Sequence[tuple[Path, Path | None]] = (),
        channels: int = 3,
    ) -> None:
        self.samples = [(Path(img), Path(msk)) for img, msk in samples]
        if not self.samples:
            raise ValueError(f"{where or info.name}: no samples (empty split); check the dataset root and split name")
        self.info = info
        self.label_maps = list(label_maps) if label_maps is not None else [None] * len(self.samples)
        if len(self.label_maps) != len(self.samples):
            raise ValueError(f"{len(self.label_maps)} label maps for {len(self.samples)} samples")
        # The user's convention (--label-map, --reduce-zero-label, --ignore-index, --palette) after the layout's own
        # mapping: one composed 256-entry table per distinct layout table.
        self.labels = labels if labels is not None else LabelConvention()
        self._tables = _compose(self.label_maps, self.labels)
        self.transform = transform
        self.skip_bad = skip_bad
        self.where = where
        self.missing = list(missing)  # (image, expected mask) left out while building (skip_bad and no mask)
        self.dropped = dropped or len(self.missing)
        self.channels = channels  # image bands: 3 = RGB uint8; others from multi-band TIFF / .npy (imageio.read_image)

    # -- metadata ---------------------------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def palette(self) -> np.ndarray:
        return self.info.palette_array()

    @property
    def layout_mapped(self) -> bool:
        """Whether the layout maps stored values itself (ADE20K's reduce-zero-label, Cityscapes' labelIds...)."""
        return any(m is not None for m in self.label_maps)

    def path_of(self, index: int) -> str:
        return str(self.samples[index][1])

    def table_of(self, index: int) -> np.ndarray:
        """The 256-entry table from sample `index`'s stored mask values to ids (the layout's, then the user's)."""
        return self._tables[index]

    def tables(self) -> list[np.ndarray]:
        """The distinct tables of `table_of`."""
        return list({id(t): t for t in self._tables}.values())

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset({self.info.name!r}, {self.where!r}, {len(self)} samples, {self.num_classes} classes)"
        )

    def with_transform(self, transform: Transform | None) -> SegmentationDataset:
        """A shallow copy with another transform (same samples)."""
        other = copy.copy(self)
        other.transform = transform
        return other

    # -- reading ----------------------------------------------------------------------------------------------
    def open_raw(self, index: int, masks_only: bool = False) -> tuple[Any, Any, str, str]:
        """(image, mask, name, where) as stored, undecoded: PIL images here (rows for Hugging Face datasets), no
        image with `masks_only`; `where` names the mask in messages. Raises ImageReadError on an unreadable file."""
        image_path, mask_path = self.samples[index]
        image = None if masks_only else _open(image_path)
        return image, _open(mask_path), image_path.name, str(mask_path)

    def load(self, index: int) -> Sample:
        """(image (H, W, C): uint8 RGB for C = 3, else the file's bands, mask uint8 (H, W) with ids 0..K-1 or 255,
        name); raises on a bad sample."""
        image_path, mask_path = self.samples[index]
        image = read_image(image_path, self.channels)
        raw = read_raw_mask(mask_path, colour=self.labels.palette is not None)
        if raw.shape[:2] != image.shape[:2]:
            hint = (
                " (rotated: was the mask drawn on the image before EXIF rotation?)"
                if raw.shape[:2] == image.shape[1::-1]
                else ""
            )
            raise ImageReadError(
                f"{mask_path}: mask is {raw.shape[1]}x{raw.shape[0]} but image {image_path.name} is "
                f"{image.shape[1]}x{image.shape[0]} (WxH, after EXIF rotation); masks must match their image{hint}"
            )
        mask = self._ids(raw, self._tables[index], mask_path, layout_mapped=self.label_maps[index] is not None)
        if not image.flags.writeable:  # arrays backed by a PIL buffer are read-only; callers may edit theirs
            image = image.copy()
        return image, mask, image_path.stem

    def _ids(self, raw: np.ndarray, table: np.ndarray, where: str | Path, layout_mapped: bool) -> np.ndarray:
        """Raw mask values -> ids 0..K-1 or 255 through `table` (the layout's, then the user's), checked."""
        try:
            raw = self.labels.raw_ids(raw, where=str(where))
        except LabelError as e:
            raise ImageReadError(str(e)) from None
        mask = table[raw]
        top = int(mask[mask != IGNORE_INDEX].max(initial=0))
        if top >= self.num_classes:
            raw_value = int(raw[mask == top].flat[0])
            mapping = [f"the {self.info.name} label mapping"] if layout_mapped else []
            mapping += [self.labels.flags()] if not self.labels.is_default else []
            mapped = f" (class id {top} after {' and '.join(mapping)})" if mapping and top != raw_value else ""
            raise ImageReadError(
                f"{where}: mask value {raw_value}{mapped} is >= num_classes {self.num_classes}; "
                f"ids must be 0..{self.num_classes - 1} or {IGNORE_INDEX} (ignore); `segformer data check` "
                "shows every value and the flag that fixes it"
            )
        return mask

    def check(self) -> list[str]:
        """Read every sample and return the errors (one line each); for validating a dataset before training."""
        errors = []
        for i in range(len(self)):
            try:
                self.load(i)
            except (ImageReadError, OSError, ValueError) as e:
                errors.append(str(e))
        return errors


def _compose(label_maps: Sequence[np.ndarray | None], labels: LabelConvention) -> list[np.ndarray]:
    """Per sample, the layout's table followed by the convention's, as one 256-entry table (shared objects)."""
    composed: dict[int, np.ndarray] = {}
    tables = []
    for table in label_maps:
        key = id(table)
        if key not in composed:
            composed[key] = labels.lut if table is None else labels.lut[table]
        tables.append(composed[key])
    return tables
