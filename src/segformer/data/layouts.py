"""Every dataset layout the library reads, one entry each in `LAYOUTS`: `build_dataset`, `data check` and the CLI's
--dataset read that entry and nothing else.

A `Layout` says how the dataset root is found (a marker folder, here or under one of the root aliases), what its
splits are and what else they go by, how its masks are named and stored (its own label convention), where its class
names come from (the catalog entry, or the data), and which function builds it. Adding a layout is one builder
function and one row of `LAYOUTS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..imageio import IMAGE_SUFFIXES
from .base import Dataset, Transform
from .catalog import CITYSCAPES_LABEL_TO_TRAIN_LUT, COCO_STUFF_TO_TRAIN_LUT, DATASETS, DatasetInfo, folder_info
from .datasets import SegmentationDataset
from .hf import SPLIT_ALIASES, hf_dataset, list_splits
from .labels import LabelConvention
from .raster import RasterDataset, raster_pairs

log = logging.getLogger("segformer")


@dataclass(frozen=True)
class ReadOptions:
    """What `build_dataset` passes every builder (each uses the fields its layout has)."""

    num_classes: int | None = None
    labels: LabelConvention = LabelConvention()
    transform: Transform | None = None
    skip_bad: bool = False
    channels: int | None = None  # image bands; None: as stored (RGB photos, any band count of rasters)
    image_column: str | None = None
    mask_column: str | None = None


@dataclass(frozen=True)
class MaskFiles:
    """Where an image's mask is: DATASET_ROOT/`folder`/SPLIT/KEY + `suffix`, KEY being the image's path below its split
    folder without suffix (and without `image_tag`). With `raw_suffix`, KEY + `suffix` holds train ids when it
    exists, else KEY + `raw_suffix` holds raw ids that `raw_table` maps (Cityscapes labelIds, COCO-Stuff's 182)."""

    folder: str = "masks"
    suffix: str = ".png"
    image_tag: str = ""  # only images whose name ends with this are samples (Cityscapes' "_leftImg8bit")
    raw_suffix: str | None = None
    raw_table: np.ndarray | None = None

    def choose(self, stem: Path, table: np.ndarray | None) -> tuple[Path, np.ndarray | None]:
        """(mask path for STEM, the table its values need)."""
        path = stem.parent / f"{stem.name}{self.suffix}"
        if self.raw_suffix is None or path.is_file():
            return path, table
        return stem.parent / f"{stem.name}{self.raw_suffix}", self.raw_table


Builder = Callable[["Layout", "str | Path", str, ReadOptions], Dataset]


@dataclass(frozen=True, eq=False)
class Layout:
    """One dataset layout. `info` is the catalog entry (class names, palette, paper protocol), None when the class
    names come from the data (classes.txt, a palette, a ClassLabel, or --num-classes)."""

    name: str
    build: Builder  # (layout, root, split, options) -> the dataset
    shape: str  # the files, in words, for messages
    info: DatasetInfo | None = None
    marker: str = ""  # the folder that marks the dataset root ("": the root as given)
    root_aliases: tuple[str, ...] = ()  # subfolders of the given root that may be the dataset root
    split_folder: str = ""  # the folder below the dataset root whose subfolders are the splits
    split_aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # other names of a split, in order
    title: str = ""  # the dataset in messages ("ADE20K")
    masks: MaskFiles = MaskFiles()
    labels: LabelConvention = LabelConvention()  # the layout's own mapping, before the user's (ADE20K: 0 = other)
    class_names_file: str | None = None  # a file in the root naming the classes ("classes.txt")
    orphan_masks: bool = False  # `data check` lists mask files no image uses (one mask file per image)
    # Samples are rows of a table (Hugging Face), not files: --image-column/--mask-column apply, images are RGB, and
    # a split that fails to build is an argument error (columns, class names), not a finding about the files.
    rows: bool = False
    list_splits: Callable[[Layout, str | Path], list[str]] | None = None  # None: the subfolders of split_folder

    # -- finding things ---------------------------------------------------------------------------------------
    def find_root(self, root: str | Path) -> Path:
        """`root` itself when it holds the marker folder, else the first root/<alias> that does (users pass either)."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: dataset root does not exist")
        if not self.marker:
            return root
        for candidate in (root, *(root / p for p in self.root_aliases)):
            if (candidate / self.marker).is_dir():
                return candidate
        raise FileNotFoundError(
            f"{root}: no {self.marker}/ folder here or under {', '.join(self.root_aliases)}; point the root at the "
            "dataset folder"
        )

    def split_dir(self, base: Path, split: str) -> Path:
        """The folder of `split` (or its first alias) under base/split_folder; an error lists the splits found."""
        parent = base / self.split_folder
        path = parent / self.split_aliases.get(split, (split,))[0]
        if not path.is_dir():
            have = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
            what = " ".join(w for w in (self.title, self.split_folder) if w)
            raise FileNotFoundError(f"{path}: no such {what} split folder (found: {', '.join(have) or 'none'})")
        return path

    def splits(self, root: str | Path) -> list[str]:
        """Every split the layout has at `root` (folder names, VOC list files, Hugging Face splits)."""
        if self.list_splits is not None:
            return self.list_splits(self, root)
        base = self.find_root(root) / self.split_folder
        if not base.is_dir():
            raise FileNotFoundError(f"{base}: missing; the {self.name} layout is {self.shape}")
        found = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not found:
            raise FileNotFoundError(f"{base}: no split folders")
        return found

    def has_split(self, split: str, known: Sequence[str]) -> bool:
        """Whether `split` is one of the `known` splits, by its name or an alias."""
        return split in known or any(a in known for a in self.split_aliases.get(split, ()))

    def names_classes(self, root: str | Path, labels: LabelConvention) -> bool:
        """Whether the data names its classes without being told how many: a catalog dataset, or a class names
        file or palette; otherwise a caller holding a model passes the model's num_classes."""
        if self.info is not None:
            return True
        if self.class_names_file is None:
            return False
        return labels.palette is not None or (Path(root).expanduser() / self.class_names_file).is_file()

    # -- building ---------------------------------------------------------------------------------------------
    def check(self, options: ReadOptions) -> None:
        """Reject options the layout cannot take (one line naming the flag)."""
        if self.rows and options.channels not in (None, 3):
            raise ValueError(
                f"--dataset {self.name} reads RGB images; {options.channels}-channel input needs TIFF or .npy files"
            )
        if not self.rows and (options.image_column is not None or options.mask_column is not None):
            raise ValueError("--image-column/--mask-column are for --dataset hf (Hugging Face datasets)")
        if self.labels.reduce_zero_label and options.labels.reduce_zero_label:
            raise ValueError(
                f"--dataset {self.name} reduces the zero label already (0 -> ignore, k -> k-1); drop that flag"
            )
        k = options.num_classes
        if self.info is not None and k is not None and k != self.info.num_classes:
            raise ValueError(
                f"dataset {self.name!r} has {self.info.num_classes} classes, not num_classes={k}; "
                "use the 'folder' layout for a different class set"
            )


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------
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


def _dataset(
    pairs: list[tuple[Path, Path]],
    info: DatasetInfo,
    where: str,
    missing: list[tuple[Path, Path | None]],
    options: ReadOptions,
    label_maps: Sequence[np.ndarray | None] | None = None,
) -> SegmentationDataset:
    return SegmentationDataset(
        pairs,
        info,
        label_maps=label_maps,
        labels=options.labels,
        transform=options.transform,
        skip_bad=options.skip_bad,
        where=where,
        missing=missing,
        channels=options.channels or 3,
    )


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


def folder_class_names(
    root: Path, num_classes: int | None, labels: LabelConvention, file: str = "classes.txt"
) -> tuple[str, ...]:
    """ROOT/classes.txt, else the names of the palette file (`--palette`), else class_0.. for `num_classes`."""
    classes_file = root / file
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


# ---------------------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------------------
def paired_folders(layout: Layout, root: str | Path, split: str, options: ReadOptions) -> SegmentationDataset:
    """Images in DATASET_ROOT/<split_folder>/SPLIT, masks beside them as `layout.masks` says (ADE20K, Cityscapes,
    COCO-Stuff); stored values go through the layout's own convention, then the user's."""
    assert layout.info is not None, "paired_folders reads catalog datasets"
    base = layout.find_root(root)
    image_dir = layout.split_dir(base, split)
    mask_dir = base / layout.masks.folder / image_dir.name
    tag = layout.masks.image_tag
    images = {k[: len(k) - len(tag)]: p for k, p in _images_under(image_dir).items() if k.endswith(tag)}
    own = None if layout.labels.is_default else layout.labels.lut
    tables: dict[Path, np.ndarray | None] = {}

    def mask_for(key: str, _: Path) -> Path:
        path, table = layout.masks.choose(mask_dir / key, own)
        tables[path] = table
        return path

    pairs, missing = _pair(images, mask_for, options.skip_bad, str(image_dir))
    return _dataset(pairs, layout.info, str(image_dir), missing, options, [tables[m] for _, m in pairs])


def voc(layout: Layout, root: str | Path, split: str, options: ReadOptions) -> SegmentationDataset:
    """VOC2012: JPEGImages, SegmentationClass palette PNGs (indices are ids, 255 border = ignore) and
    ImageSets/Segmentation/<split>.txt. SBD-augmented splits ("aug", "train_aug", as mmseg's voc_aug.py makes)
    read SegmentationClassAug first."""
    assert layout.info is not None
    base = layout.find_root(root)
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

    pairs, missing = _pair(images, mask_for, options.skip_bad, str(list_file))
    return _dataset(pairs, layout.info, str(list_file), missing, options)


def voc_splits(layout: Layout, root: str | Path) -> list[str]:
    """The split lists in ImageSets/Segmentation."""
    return sorted(p.stem for p in (layout.find_root(root) / "ImageSets" / "Segmentation").glob("*.txt"))


def image_folder(layout: Layout, root: str | Path, split: str, options: ReadOptions) -> SegmentationDataset:
    """ROOT/images/<split>/NAME.<jpg|png|...> with ROOT/masks/<split>/NAME.png (matched by path without suffix,
    subfolders allowed); class names from ROOT/classes.txt, the `labels` palette file or `num_classes`
    ("class_0", ...); 255 = ignore, and `labels` says how the stored values become class ids."""
    base = layout.find_root(root)
    names = folder_class_names(base, options.num_classes, options.labels, layout.class_names_file or "classes.txt")
    image_dir = layout.split_dir(base, split)
    mask_dir = base / layout.masks.folder / split
    if not mask_dir.is_dir():
        raise FileNotFoundError(f"{mask_dir}: no masks folder for split {split!r} (expected ROOT/masks/{split}/)")
    suffix = layout.masks.suffix
    pairs, missing = _pair(
        _images_under(image_dir), lambda k, _: mask_dir / f"{k}{suffix}", options.skip_bad, str(image_dir)
    )
    info = folder_info(names, colours=options.labels.class_colours(len(names)))
    return _dataset(pairs, info, str(image_dir), missing, options)


def hugging_face(layout: Layout, root: str | Path, split: str, options: ReadOptions) -> SegmentationDataset:
    """A Hugging Face dataset (hub id, save_to_disk folder or parquet folder): see `segformer.data.hf`."""
    return hf_dataset(
        str(root),
        split,
        num_classes=options.num_classes,
        labels=options.labels,
        image_column=options.image_column,
        mask_column=options.mask_column,
        transform=options.transform,
        skip_bad=options.skip_bad,
    )


def hf_splits(layout: Layout, root: str | Path) -> list[str]:
    return list_splits(str(root))


def rasters(layout: Layout, root: str | Path, split: str, options: ReadOptions) -> RasterDataset:
    """GeoTIFF image rasters in ROOT/images/SPLIT with label rasters on their grid in ROOT/masks/SPLIT (see
    `segformer.data.raster`); class names as the folder layout's."""
    base = layout.find_root(root)
    names = folder_class_names(base, options.num_classes, options.labels, layout.class_names_file or "classes.txt")
    return RasterDataset(
        raster_pairs(base, split),
        names,
        labels=options.labels,
        transform=options.transform,
        channels=options.channels,
        where=str(base / layout.split_folder / split),
        colours=options.labels.class_colours(len(names)),
        skip_bad=options.skip_bad,
    )


# ---------------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------------
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "ade20k",
            paired_folders,
            "ADEChallengeData2016/{images,annotations}/{training,validation}",
            DATASETS["ade20k"],
            marker="images",
            root_aliases=("ADEChallengeData2016",),
            split_folder="images",
            split_aliases={"train": ("training",), "val": ("validation",)},
            title="ADE20K",
            masks=MaskFiles("annotations"),
            labels=LabelConvention(reduce_zero_label=True),  # 0 = other -> ignore, 1..150 -> 0..149
        ),
        Layout(
            "cityscapes",
            paired_folders,
            "leftImg8bit/SPLIT/CITY/*_leftImg8bit.png with gtFine/SPLIT/CITY/*_gtFine_labelTrainIds.png "
            "(or *_gtFine_labelIds.png, mapped to train ids)",
            DATASETS["cityscapes"],
            marker="leftImg8bit",
            root_aliases=("cityscapes",),
            split_folder="leftImg8bit",
            title="Cityscapes",
            masks=MaskFiles(
                "gtFine",
                "_gtFine_labelTrainIds.png",
                image_tag="_leftImg8bit",
                raw_suffix="_gtFine_labelIds.png",
                raw_table=CITYSCAPES_LABEL_TO_TRAIN_LUT,
            ),
        ),
        Layout(
            "voc",
            voc,
            "VOC2012/{JPEGImages,SegmentationClass[Aug],ImageSets/Segmentation/SPLIT.txt}",
            DATASETS["voc"],
            marker="JPEGImages",
            root_aliases=("VOC2012", "VOCdevkit/VOC2012"),
            title="VOC",
            list_splits=voc_splits,
        ),
        Layout(
            "coco-stuff",
            paired_folders,
            "{images,annotations}/{train2017,val2017} (*_labelTrainIds.png, or the 182 stuffthingmaps ids)",
            DATASETS["coco-stuff"],
            marker="images",
            root_aliases=("coco_stuff164k", "cocostuff"),
            split_folder="images",
            split_aliases={"train": ("train2017",), "val": ("val2017",)},
            title="COCO-Stuff",
            masks=MaskFiles("annotations", "_labelTrainIds.png", raw_suffix=".png", raw_table=COCO_STUFF_TO_TRAIN_LUT),
        ),
        Layout(
            "folder",
            image_folder,
            "ROOT/images/SPLIT and ROOT/masks/SPLIT",
            split_folder="images",
            class_names_file="classes.txt",
            orphan_masks=True,
        ),
        Layout(
            "hf",
            hugging_face,
            "a Hugging Face dataset: hub id, save_to_disk folder or folder of parquet files",
            split_aliases=SPLIT_ALIASES,
            rows=True,
            list_splits=hf_splits,
        ),
        Layout(
            "raster",
            rasters,
            "ROOT/images/SPLIT/*.tif and ROOT/masks/SPLIT/*.tif (GeoTIFF label rasters on their image's grid)",
            split_folder="images",
            title="raster",
            class_names_file="classes.txt",
            orphan_masks=True,
        ),
    )
}

# Every name `build_dataset` and the CLI's --dataset accept: the catalog's datasets, then the generic layouts.
DATASET_NAMES: tuple[str, ...] = tuple(LAYOUTS)


def layout_of(name: str) -> Layout:
    """The layout `name`; an unknown name is one line listing the known ones."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASET_NAMES)}")
    return LAYOUTS[name]


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
    channels: int | None = None,
) -> Dataset:
    """The dataset `name` (one of `DATASET_NAMES`) read from `root`.

    Split names are the dataset's own ("training"/"validation" for ADE20K, "train2017"/"val2017" for COCO-Stuff)
    or "train"/"val" for any of them. `labels` (a LabelConvention) maps the stored mask values to class ids, after
    the layout's own mapping; "hf" reads a Hugging Face dataset (hub id, save_to_disk or parquet folder), with
    `image_column`/`mask_column` when the names are not the usual ones. `channels` other than 3: images are
    multi-band TIFF or .npy files (not for "hf", whose images are RGB); None: RGB photos, rasters with any bands.
    "raster" reads GeoTIFF rasters (`segformer.data.raster`: a `RasterDataset` of training windows)."""
    layout = layout_of(name)
    options = ReadOptions(
        num_classes, labels or LabelConvention(), transform, skip_bad, channels, image_column, mask_column
    )
    layout.check(options)
    return layout.build(layout, root, split, options)


def dataset_splits(name: str, root: str | Path) -> list[str]:
    """Every split the layout `name` has at `root` (folder names, VOC list files, HF splits)."""
    return layout_of(name).splits(root)
