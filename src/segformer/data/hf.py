"""Hugging Face `datasets` as segmentation datasets: `--dataset hf --data-root NAME_OR_PATH`.

NAME_OR_PATH is a hub id (read through the datasets cache, so online the first time), a folder written by
`save_to_disk`, or a folder of parquet files (split from the file or folder names: train-00000-of-00001.parquet,
validation/..., else one "train" split). Image and mask columns are found by their usual names or given; class
names come from a ClassLabel in the dataset's features, an `id2label.json` (in the folder or the hub repo), the
palette file, or `num_classes`. The result is a `SegmentationDataset` (len, load(i), class_names, open_raw, ...)
whose samples are rows, so training, evaluation and `data check` use it unchanged. `datasets` is an extra:
pip install 'segformer[hf]'.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..imageio import ImageReadError, to_rgb
from .base import Sample, Transform
from .catalog import DatasetInfo, folder_info
from .datasets import SegmentationDataset
from .labels import LabelConvention, raw_mask_array

log = logging.getLogger("segformer")

IMAGE_COLUMNS = ("image", "pixel_values", "img", "images")
MASK_COLUMNS = ("label", "annotation", "semantic_map", "mask", "segmentation", "labels", "seg", "masks")
NAME_COLUMNS = ("file_name", "filename", "name", "id", "image_id")
SPLIT_ALIASES = {
    "val": ("validation", "valid", "dev"),
    "validation": ("val", "valid", "dev"),
    "valid": ("validation", "val", "dev"),
    "training": ("train",),
    "train": ("training",),
    "test": ("testing",),
}
_SPLIT_WORDS = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                "val": "validation", "dev": "validation", "test": "test", "testing": "test"}  # fmt: skip


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise RuntimeError(
            "--dataset hf needs the datasets package: pip install 'segformer[hf]' (or: pip install datasets)"
        ) from None
    return datasets


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_splits(source: str) -> dict[str, Any]:
    """{split name: datasets.Dataset} for a hub id, a save_to_disk folder or a folder of parquet files."""
    ds = _datasets()
    bars_on = ds.is_progress_bar_enabled()
    if bars_on:
        ds.disable_progress_bars()  # "Generating train split" bars each time a split is opened
    try:
        return _load_splits(ds, source)
    finally:
        if bars_on:
            ds.enable_progress_bars()


def _load_splits(ds: Any, source: str) -> dict[str, Any]:
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: not a folder (save_to_disk output or parquet files expected)")
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            try:
                loaded = ds.load_from_disk(str(path))
            except Exception as e:  # datasets raises many kinds on a damaged folder
                raise ValueError(f"{path}: not a readable save_to_disk dataset ({_first_line(e)})") from None
            return dict(loaded) if isinstance(loaded, ds.DatasetDict) else {"train": loaded}
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise FileNotFoundError(
                f"{path}: neither a save_to_disk folder (dataset_dict.json or state.json) nor parquet files"
            )
        by_split: dict[str, list[str]] = {}
        for f in files:
            by_split.setdefault(_split_of(f.relative_to(path)), []).append(str(f))
        try:
            return dict(ds.load_dataset("parquet", data_files=by_split))
        except Exception as e:
            raise ValueError(f"{path}: could not read its parquet files ({_first_line(e)})") from None
    if source.count("/") > 1 or source.startswith((".", "~")):
        raise FileNotFoundError(f"{source}: no such folder (and not a hub id like 'segments/sidewalk-semantic')")
    try:
        return dict(ds.load_dataset(source))
    except Exception as e:  # offline, unknown repo, auth, needs a config name: one line each way
        raise ValueError(
            f"{source}: could not load it from the Hugging Face hub ({type(e).__name__}: {_first_line(e)}); offline, "
            "pass a save_to_disk folder or a folder of parquet files"
        ) from None


def _split_of(rel: Path) -> str:
    """The split a parquet file belongs to: a folder named like a split, or a file name starting with one."""
    for part in rel.parts[:-1]:
        if part.lower() in _SPLIT_WORDS:
            return _SPLIT_WORDS[part.lower()]
    stem = rel.name.lower()
    for word in sorted(_SPLIT_WORDS, key=len, reverse=True):
        if stem.startswith((word + "-", word + "_", word + ".")):
            return _SPLIT_WORDS[word]
    return "train"


def pick_split(splits: dict[str, Any], split: str, where: str) -> tuple[str, Any]:
    if split in splits:
        return split, splits[split]
    for alias in SPLIT_ALIASES.get(split, ()):
        if alias in splits:
            return alias, splits[alias]
    raise FileNotFoundError(f"{where}: no split {split!r} (splits: {', '.join(splits) or 'none'})")


def _kind(feature: Any) -> str:
    """'image' for an Image feature, 'array' for nested lists/arrays of numbers, 'label' for ClassLabel, else ''."""
    ds = _datasets()
    if isinstance(feature, ds.Image):
        return "image"
    if isinstance(feature, ds.ClassLabel):
        return "label"
    if isinstance(feature, ds.Array2D | ds.Array3D):
        return "array"
    inner = getattr(feature, "feature", None)
    if inner is not None and isinstance(feature, ds.Sequence | ds.List | ds.LargeList):
        return "array" if _kind(inner) in ("array", "number", "label") else ""
    if isinstance(feature, ds.Value) and feature.dtype.startswith(("int", "uint", "float")):
        return "number"
    return ""


def _class_label(feature: Any) -> Any:
    """A ClassLabel inside a (nested) mask feature, or None."""
    ds = _datasets()
    while feature is not None:
        if isinstance(feature, ds.ClassLabel):
            return feature
        feature = getattr(feature, "feature", None)
    return None


def detect_columns(features: Any, image_column: str | None, mask_column: str | None, where: str) -> tuple[str, str]:
    """(image column, mask column): the given names (checked) or the first usual name of a fitting type."""
    columns = list(features)

    def pick(given: str | None, names: tuple[str, ...], what: str, flag: str) -> str:
        if given is not None:
            if given not in features:
                raise ValueError(f"{where}: no column {given!r} (columns: {', '.join(columns)}); fix {flag}")
            if _kind(features[given]) not in ("image", "array"):
                raise ValueError(
                    f"{where}: column {given!r} holds {type(features[given]).__name__}, not {what}s; fix {flag}"
                )
            return given
        for name in names:
            if name in features and _kind(features[name]) in ("image", "array"):
                return name
        raise ValueError(
            f"{where}: no {what} column among {', '.join(columns)} (looked for {', '.join(names)}); pass {flag} NAME"
        )

    image = pick(image_column, IMAGE_COLUMNS, "image", "--image-column")
    mask = pick(mask_column, tuple(n for n in MASK_COLUMNS if n != image), "mask", "--mask-column")
    if image == mask:
        raise ValueError(f"{where}: --image-column and --mask-column are both {image!r}")
    return image, mask


def read_id2label(path: Path, where: str) -> tuple[str, ...]:
    try:
        data = json.loads(path.read_text())
        table = {int(k): str(v) for k, v in data.items()}
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f'{path}: not an id2label JSON object {{"0": "name", ...}} ({_first_line(e)})') from None
    if not table or min(table) < 0 or max(table) > 254:
        raise ValueError(f"{path}: ids must be 0..254 ({where})")
    return tuple(table.get(i, f"class_{i}") for i in range(max(table) + 1))


def _hub_id2label(source: str) -> Path | None:
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, "id2label.json", repo_type="dataset"))
    except Exception:  # absent, offline: other sources of names are tried
        return None


def class_names_for(
    source: str, table: Any, mask_column: str, labels: LabelConvention, num_classes: int | None
) -> tuple[str, ...]:
    """ClassLabel of the mask feature, else id2label.json, else the palette's names, else class_0.. for K."""
    label = _class_label(table.features[mask_column])
    names: tuple[str, ...] | None = tuple(label.names) if label is not None else None
    what = "the dataset's ClassLabel"
    if names is None:
        path = Path(source).expanduser()
        file = path / "id2label.json" if path.is_dir() else None
        if file is None or not file.is_file():
            file = _hub_id2label(source) if not path.exists() else None
        if file is not None and file.is_file():
            names, what = read_id2label(file, source), str(file)
    if names is None:
        names, what = labels.class_names_from_palette(), f"palette {labels.palette_file}"
    if names is None:
        if num_classes is None:
            raise ValueError(
                f"{source}: no class names (no ClassLabel feature, no id2label.json, no --palette); pass "
                '--num-classes N or put an id2label.json ({"0": "name", ...}) in the folder'
            )
        if not 1 <= num_classes <= 255:
            raise ValueError(f"num_classes must be 1..255 (255 = ignore in 8-bit masks), got {num_classes}")
        return tuple(f"class_{i}" for i in range(num_classes))
    if num_classes is not None and num_classes != len(names):
        raise ValueError(f"{source}: {what} gives {len(names)} classes but num_classes={num_classes}; make them agree")
    return names


class HFSegmentationDataset(SegmentationDataset):
    """One split of a Hugging Face dataset with the SegmentationDataset interface (no files: rows instead)."""

    def __init__(
        self,
        table: Any,
        info: DatasetInfo,
        *,
        image_column: str,
        mask_column: str,
        labels: LabelConvention | None = None,
        transform: Transform | None = None,
        skip_bad: bool = False,
        where: str = "",
    ) -> None:
        if len(table) == 0:
            raise ValueError(f"{where}: no samples (empty split)")
        name_column = next((c for c in NAME_COLUMNS if c in table.features and c not in (image_column, mask_column)),
                           None)  # fmt: skip
        keep = [image_column, mask_column] + ([name_column] if name_column else [])
        self.table = table.select_columns(keep)
        self.image_column, self.mask_column, self.name_column = image_column, mask_column, name_column
        self.info = info
        self.labels = labels if labels is not None else LabelConvention()
        self.label_maps: list[np.ndarray | None] = []  # no layout mapping: the convention's table for every row
        self.transform = transform
        self.skip_bad = skip_bad
        self.where = where
        self.missing = []
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return f"HFSegmentationDataset({self.where!r}, {len(self)} samples, {self.num_classes} classes)"

    def raw(self, index: int) -> tuple[Any, Any, str]:
        """(image as stored: PIL image or array, mask as stored, name) without any conversion."""
        row = self.table[int(index)]
        name = str(row[self.name_column]) if self.name_column else f"{index:06d}"
        return row[self.image_column], row[self.mask_column], name

    def where_of(self, index: int) -> str:
        return f"{self.where}[{index}]"

    def path_of(self, index: int) -> str:
        return self.where_of(index)

    def table_of(self, index: int) -> np.ndarray:
        return self.labels.lut

    def tables(self) -> list[np.ndarray]:
        return [self.labels.lut]

    def open_raw(self, index: int, masks_only: bool = False) -> tuple[Any, Any, str, str]:
        """(image, mask, name, where) as the row stores them (PIL images or arrays); the image is read anyway."""
        where = self.where_of(index)
        try:
            image, mask, name = self.raw(index)
        except Exception as e:  # a damaged row: bytes that PIL cannot decode, ...
            raise ImageReadError(f"{where}: unreadable row ({_first_line(e)})") from None
        return image, mask, name, where

    def load(self, index: int) -> Sample:
        image_obj, mask_obj, name, where = self.open_raw(index)
        if image_obj is None or mask_obj is None:
            raise ImageReadError(f"{where}: no {'image' if image_obj is None else 'mask'} in this row")
        image = to_rgb(_upright(image_obj))
        raw = raw_mask_array(mask_obj, colour=self.labels.palette is not None)
        if raw.shape[:2] != image.shape[:2]:
            raise ImageReadError(
                f"{where}: mask is {raw.shape[1]}x{raw.shape[0]} but the image is {image.shape[1]}x{image.shape[0]} "
                "(WxH); masks must match their image"
            )
        mask = self._ids(raw, self.labels.lut, where, layout_mapped=False)
        if not image.flags.writeable:
            image = image.copy()
        return image, mask, name


def _upright(image: Any) -> Any:
    from PIL import Image, ImageOps

    return ImageOps.exif_transpose(image) if isinstance(image, Image.Image) else image


def hf_dataset(
    source: str,
    split: str = "train",
    *,
    num_classes: int | None = None,
    labels: LabelConvention | None = None,
    image_column: str | None = None,
    mask_column: str | None = None,
    transform: Transform | None = None,
    skip_bad: bool = False,
) -> HFSegmentationDataset:
    """Split `split` ("val" also finds "validation") of the Hugging Face dataset `source` (see the module doc)."""
    labels = labels or LabelConvention()
    splits = load_splits(source)
    split_name, table = pick_split(splits, split, source)
    where = f"{source}[{split_name}]"
    image_col, mask_col = detect_columns(table.features, image_column, mask_column, where)
    names = class_names_for(source, table, mask_col, labels, num_classes)
    info = folder_info(names, name="hf", colours=labels.class_colours(len(names)))
    return HFSegmentationDataset(
        table,
        info,
        image_column=image_col,
        mask_column=mask_col,
        labels=labels,
        transform=transform,
        skip_bad=skip_bad,
        where=where,
    )


def list_splits(source: str) -> list[str]:
    """The split names of `source`, for `data check`."""
    return list(load_splits(source))
