"""Segmentation datasets read from their standard layouts on disk, with each dataset's label mapping applied.

Every dataset is a list of (image path, mask path) pairs plus a per-sample label table; files are read and
validated lazily in `load(i)`, so building a dataset over 100k images only lists directories.

Bad samples: `load(i)` always raises a one-line error naming the file (unreadable/truncated image or mask, size
mismatch, mask value that is neither a class id nor 255). With `skip_bad=True`, building drops images without a
mask (counted in `ds.dropped`); skipping unreadable samples while training is `sampling.SampleStream`'s job.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..imageio import IMAGE_SUFFIXES, ImageReadError, read_image
from .catalog import (
    ADE20K_REDUCE_ZERO_LABEL,
    CITYSCAPES_LABEL_TO_TRAIN_LUT,
    COCO_STUFF_TO_TRAIN_LUT,
    DATASET_NAMES,
    DATASETS,
    IGNORE_INDEX,
    DatasetInfo,
    folder_info,
)
from .labels import LabelConvention, LabelError, read_raw_mask
from .raster import raster_folder

log = logging.getLogger("segformer")

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], Any]


class SegmentationDataset(torch.utils.data.Dataset):
    """(image, mask) pairs with class names, palette and label mapping; picklable for DataLoader workers.

    `ds.load(i)` reads sample `i`; `ds[i]` is `transform(image, mask, rng)` with a fresh unseeded `rng` (or the
    `load` tuple without a transform), for looking at augmentations. Training draws reproducible, resumable samples
    through `sampling.SampleStream`, which uses `ds.transform` when it is set.
    """

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
    def ignore_index(self) -> int:
        return IGNORE_INDEX

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
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """(image (H, W, C): uint8 RGB for C = 3, else the file's bands, mask uint8 (H, W) with ids 0..K-1 or 255,
        name); raises on a bad sample."""
        image_path, mask_path = self.samples[index]
        image = read_image(image_path, getattr(self, "channels", 3))
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

    def __getitem__(self, index: int) -> Any:
        image, mask, name = self.load(index)
        if self.transform is None:
            return image, mask, name
        return self.transform(image, mask, np.random.default_rng())

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


# ---------------------------------------------------------------------------------------------------------------
# Layout discovery
# ---------------------------------------------------------------------------------------------------------------
def _find_root(root: Path, marker: str, parents: Sequence[str]) -> Path:
    """`root` itself when it holds `marker`, else the first of root/<parent> that does (users pass either)."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset root does not exist")
    for candidate in (root, *(root / p for p in parents)):
        if (candidate / marker).is_dir():
            return candidate
    raise FileNotFoundError(
        f"{root}: no {marker}/ folder here or under {', '.join(parents)}; point the root at the dataset folder"
    )


def _split_dir(base: Path, split: str, aliases: dict[str, str], what: str) -> Path:
    name = aliases.get(split, split)
    path = base / name
    if not path.is_dir():
        have = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        raise FileNotFoundError(f"{path}: no such {what} split folder (found: {', '.join(have) or 'none'})")
    return path


def _images_under(folder: Path) -> dict[str, Path]:
    """Images below `folder` keyed by their path relative to it without suffix; duplicates are an error. Hidden
    files (".name", e.g. macOS "._x.jpg" resource forks) are not images and are left out."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file():
            key = path.relative_to(folder).with_suffix("").as_posix()
            if key in found:
                raise ValueError(f"{path}: two images with the same name ({found[key].name}); rename one")
            found[key] = path
    return found


def _pair(
    images: dict[str, Path], mask_for: Callable[[str, Path], Path | None], skip_bad: bool, where: str
) -> tuple[list[tuple[Path, Path]], list[tuple[Path, Path | None]]]:
    """Match each image with its mask; a missing mask is an error (or, with skip_bad, the pair is left out and
    listed in the second return value as (image, expected mask))."""
    pairs: list[tuple[Path, Path]] = []
    missing: list[tuple[Path, Path | None]] = []
    for key, image in images.items():
        mask = mask_for(key, image)
        if mask is None or not mask.is_file():
            if not skip_bad:
                raise FileNotFoundError(
                    f"{image}: no mask for this image (expected {mask}); add it or remove the image"
                )
            log.warning("%s: no mask (expected %s), skipped", image, mask)
            missing.append((image, mask))
            continue
        pairs.append((image, mask))
    if not pairs:
        raise ValueError(f"{where}: no image/mask pairs (empty split); check the dataset root and split name")
    return pairs, missing


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """Class names from a text file, one per line (blank lines and '#' comments ignored)."""
    names = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line)
    if not names:
        raise ValueError(f"{path}: no class names (one name per line expected)")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"{path}: class name {dup!r} appears twice")
    if len(names) > 255:
        raise ValueError(f"{path}: {len(names)} classes; at most 255 fit in 8-bit masks with 255 = ignore")
    return tuple(names)


# ---------------------------------------------------------------------------------------------------------------
# Builders, one per layout
# ---------------------------------------------------------------------------------------------------------------
def ade20k(root: str | Path, split: str = "training", **kwargs: Any) -> SegmentationDataset:
    """ADEChallengeData2016/{images,annotations}/{training,validation}; reduce_zero_label (0 -> 255, k -> k-1)."""
    base = _find_root(Path(root), "images", ["ADEChallengeData2016"])
    aliases = {"train": "training", "val": "validation"}
    image_dir = _split_dir(base / "images", split, aliases, "ADE20K images")
    mask_dir = base / "annotations" / image_dir.name
    skip_bad = kwargs.get("skip_bad", False)
    pairs, missing = _pair(_images_under(image_dir), lambda k, _: mask_dir / f"{k}.png", skip_bad, str(image_dir))
    return SegmentationDataset(
        pairs,
        DATASETS["ade20k"],
        label_maps=[ADE20K_REDUCE_ZERO_LABEL] * len(pairs),
        where=str(image_dir),
        missing=missing,
        **kwargs,
    )


def _train_ids_or_raw(
    stem: Path, train_ids_end: str, raw_end: str, lut: np.ndarray, luts: dict[Path, np.ndarray | None]
) -> Path:
    """The converted train-id mask (STEM + train_ids_end) when it exists, else the raw one (STEM + raw_end), which
    `lut` maps to train ids; `luts` records the lookup table each chosen mask needs (None: none)."""
    train_ids = stem.parent / f"{stem.name}{train_ids_end}"
    chosen, luts_value = (train_ids, None) if train_ids.is_file() else (stem.parent / f"{stem.name}{raw_end}", lut)
    luts[chosen] = luts_value
    return chosen


def cityscapes(root: str | Path, split: str = "train", **kwargs: Any) -> SegmentationDataset:
    """leftImg8bit/<split>/<city>/*_leftImg8bit.png with gtFine/<split>/<city>/*_gtFine_labelTrainIds.png, or
    *_gtFine_labelIds.png mapped through the official labelId -> trainId table when trainIds files are absent."""
    base = _find_root(Path(root), "leftImg8bit", ["cityscapes"])
    image_dir = _split_dir(base / "leftImg8bit", split, {}, "Cityscapes leftImg8bit")
    gt_dir = base / "gtFine" / image_dir.name
    images = {k: p for k, p in _images_under(image_dir).items() if k.endswith("_leftImg8bit")}
    luts: dict[Path, np.ndarray | None] = {}

    def mask_for(key: str, _: Path) -> Path | None:
        stem = gt_dir / key[: -len("_leftImg8bit")]
        return _train_ids_or_raw(
            stem, "_gtFine_labelTrainIds.png", "_gtFine_labelIds.png", CITYSCAPES_LABEL_TO_TRAIN_LUT, luts
        )

    pairs, missing = _pair(images, mask_for, kwargs.get("skip_bad", False), str(image_dir))
    return SegmentationDataset(
        pairs,
        DATASETS["cityscapes"],
        label_maps=[luts[m] for _, m in pairs],
        where=str(image_dir),
        missing=missing,
        **kwargs,
    )


def voc(root: str | Path, split: str = "train", **kwargs: Any) -> SegmentationDataset:
    """VOC2012: JPEGImages, SegmentationClass palette PNGs (indices are ids, 255 border = ignore) and
    ImageSets/Segmentation/<split>.txt. SBD-augmented splits ("aug", "train_aug", as mmseg's voc_aug.py makes)
    read SegmentationClassAug first."""
    base = _find_root(Path(root), "JPEGImages", ["VOC2012", "VOCdevkit/VOC2012"])
    list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        have = sorted(p.stem for p in list_file.parent.glob("*.txt")) if list_file.parent.is_dir() else []
        raise FileNotFoundError(f"{list_file}: no such VOC split list (found: {', '.join(have) or 'none'})")
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    mask_dirs = [base / "SegmentationClass", base / "SegmentationClassAug"]
    if "aug" in split:
        mask_dirs.reverse()
    images = {}
    for name in ids:
        image = base / "JPEGImages" / f"{name}.jpg"
        if not image.is_file():
            raise FileNotFoundError(f"{image}: listed in {list_file.name} but missing")
        images[name] = image

    def mask_for(key: str, _: Path) -> Path:
        candidates = [d / f"{key}.png" for d in mask_dirs]
        return next((c for c in candidates if c.is_file()), candidates[0])

    pairs, missing = _pair(images, mask_for, kwargs.get("skip_bad", False), str(list_file))
    return SegmentationDataset(pairs, DATASETS["voc"], where=str(list_file), missing=missing, **kwargs)


def coco_stuff(root: str | Path, split: str = "train2017", **kwargs: Any) -> SegmentationDataset:
    """COCO-Stuff 164k: images/<split>/*.jpg with annotations/<split>/*_labelTrainIds.png (mmseg's converted
    0..170 ids) or the raw stuffthingmaps *.png (0..181) mapped to the 171 classes."""
    base = _find_root(Path(root), "images", ["coco_stuff164k", "cocostuff"])
    aliases = {"train": "train2017", "val": "val2017"}
    image_dir = _split_dir(base / "images", split, aliases, "COCO-Stuff images")
    ann_dir = base / "annotations" / image_dir.name
    luts: dict[Path, np.ndarray | None] = {}

    def mask_for(key: str, _: Path) -> Path:
        return _train_ids_or_raw(ann_dir / key, "_labelTrainIds.png", ".png", COCO_STUFF_TO_TRAIN_LUT, luts)

    pairs, missing = _pair(_images_under(image_dir), mask_for, kwargs.get("skip_bad", False), str(image_dir))
    return SegmentationDataset(
        pairs,
        DATASETS["coco-stuff"],
        label_maps=[luts[m] for _, m in pairs],
        where=str(image_dir),
        missing=missing,
        **kwargs,
    )


def image_folder(
    root: str | Path,
    split: str = "train",
    *,
    num_classes: int | None = None,
    labels: LabelConvention | None = None,
    **kwargs: Any,
) -> SegmentationDataset:
    """ROOT/images/<split>/NAME.<jpg|png|...> with ROOT/masks/<split>/NAME.png (matched by path without suffix,
    subfolders allowed); class names from ROOT/classes.txt, the `labels` palette file or `num_classes`
    ("class_0", ...); 255 = ignore, and `labels` says how the stored values become class ids."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset root does not exist")
    labels = labels or LabelConvention()
    names = folder_class_names(root, num_classes, labels)
    image_dir = _split_dir(root / "images", split, {}, "images")
    mask_dir = root / "masks" / split
    if not mask_dir.is_dir():
        raise FileNotFoundError(f"{mask_dir}: no masks folder for split {split!r} (expected ROOT/masks/{split}/)")
    pairs, missing = _pair(
        _images_under(image_dir), lambda k, _: mask_dir / f"{k}.png", kwargs.get("skip_bad", False), str(image_dir)
    )
    info = folder_info(names, colours=labels.class_colours(len(names)))
    return SegmentationDataset(pairs, info, labels=labels, where=str(image_dir), missing=missing, **kwargs)


def folder_class_names(root: Path, num_classes: int | None, labels: LabelConvention) -> tuple[str, ...]:
    """ROOT/classes.txt, else the names of the palette file (`--palette`), else class_0.. for `num_classes`."""
    classes_file = root / "classes.txt"
    from_palette = labels.class_names_from_palette()
    if classes_file.is_file():
        names = read_class_names(classes_file)
        if num_classes is not None and num_classes != len(names):
            raise ValueError(
                f"{classes_file}: lists {len(names)} classes but num_classes={num_classes}; make them agree"
            )
        if from_palette is not None and len(from_palette) != len(names):
            raise ValueError(
                f"{classes_file}: lists {len(names)} classes but the palette {labels.palette_file} gives "
                f"{len(from_palette)} after the label mapping; make them agree (or remove classes.txt)"
            )
        return names
    if from_palette is not None:
        if num_classes is not None and num_classes != len(from_palette):
            raise ValueError(
                f"palette {labels.palette_file} gives {len(from_palette)} classes but num_classes={num_classes}"
            )
        return from_palette
    if num_classes is not None:
        if not 1 <= num_classes <= 255:
            raise ValueError(f"num_classes must be 1..255 (255 = ignore in 8-bit masks), got {num_classes}")
        return tuple(f"class_{i}" for i in range(num_classes))
    raise FileNotFoundError(f"{classes_file}: missing; write one class name per line or pass num_classes")


def hugging_face(source: str, split: str = "train", **kwargs: Any) -> SegmentationDataset:
    """A Hugging Face dataset (hub id, save_to_disk folder or parquet folder): see `segformer.data.hf`."""
    from .hf import hf_dataset  # datasets is an optional extra, imported there

    return hf_dataset(source, split, **kwargs)


BUILDERS: dict[str, Callable[..., SegmentationDataset]] = {
    "ade20k": ade20k,
    "cityscapes": cityscapes,
    "voc": voc,
    "coco-stuff": coco_stuff,
    "folder": image_folder,
    "hf": hugging_face,
    "raster": raster_folder,
}
assert tuple(BUILDERS) == DATASET_NAMES, "a dataset name without a builder, or the reverse"


def build_dataset(
    name: str,
    root: str | Path,
    split: str,
    *,
    num_classes: int | None = None,
    transform: Transform | None = None,
    skip_bad: bool = False,
    labels: LabelConvention | None = None,
    image_column: str | None = None,
    mask_column: str | None = None,
    channels: int = 3,
) -> SegmentationDataset:
    """The dataset `name` (one of `DATASET_NAMES`) read from `root`.

    Split names are the dataset's own ("training"/"validation" for ADE20K, "train2017"/"val2017" for COCO-Stuff)
    or "train"/"val" for any of them. `labels` (a LabelConvention) maps the stored mask values to class ids, after
    the layout's own mapping; "hf" reads a Hugging Face dataset (hub id, save_to_disk or parquet folder), with
    `image_column`/`mask_column` when the names are not the usual ones. `channels` other than 3: images are
    multi-band TIFF or .npy files (not for "hf", whose images are RGB).
    """
    options: dict[str, Any] = {"transform": transform, "skip_bad": skip_bad, "labels": labels}
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASET_NAMES)}")
    if name == "hf":
        if channels != 3:
            raise ValueError(f"--dataset hf reads RGB images; {channels}-channel input needs TIFF or .npy files")
        columns = {"image_column": image_column, "mask_column": mask_column}
        return BUILDERS[name](str(root), split, num_classes=num_classes, **columns, **options)
    if image_column is not None or mask_column is not None:
        raise ValueError("--image-column/--mask-column are for --dataset hf (Hugging Face datasets)")
    root = Path(root).expanduser()
    options["channels"] = channels
    if name not in DATASETS:  # a generic layout: classes come from the folder or num_classes
        return BUILDERS[name](root, split, num_classes=num_classes, **options)
    info = DATASETS[name]
    if name == "ade20k" and labels is not None and labels.reduce_zero_label:
        raise ValueError("--dataset ade20k reduces the zero label already (0 -> ignore, k -> k-1); drop that flag")
    if num_classes is not None and num_classes != info.num_classes:
        raise ValueError(
            f"dataset {name!r} has {info.num_classes} classes, not num_classes={num_classes}; "
            "use the 'folder' layout for a different class set"
        )
    return BUILDERS[name](root, split, **options)
