"""`segformer data check`: read every image and mask of every split once, in parallel, and say what is wrong.

Workers (a process pool) decode the files and send back small per-image summaries: the mask's value histogram or
colours, size, modes and per-channel histograms, counted by PIL's C histograms (numpy's bincount for unusual
modes), so the scan costs little beyond decoding. The main process adds them up into a `DataReport`:
counts per split, missing and orphan files, unreadable files, size mismatches, mask modes, label values with
pixel and image counts, classes never present, image sizes and channel statistics, suggested class weights,
and one-line diagnoses that each name the flag that fixes them.

Class weights (`class_weights`): ENet's w_c = 1 / ln(1.02 + p_c), p_c = pixels of class c / labelled pixels
(Paszke et al. 2016, arXiv:1606.02147), bounded to [1.42, 50.5]. "median" (median frequency balancing with
freq_c = n_c / N) and "inverse" (N / (K n_c), sklearn's "balanced") are there too. Classes without pixels get 0.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .labels import IGNORE, LabelConvention, LabelError, raw_mask_array

log = logging.getLogger("segformer")

WEIGHT_METHODS = ("enet", "median", "inverse")
DOMINANT_SHARE = 0.9  # one class above this share of labelled pixels -> suggest class weights
MAX_NAMES = 10  # class names listed per finding in the text report (the JSON report has them all)
VOID_WORDS = ("background", "other", "others", "unlabeled", "unlabelled", "void", "ignore", "none", "bg")
SEVERITIES = ("error", "problem", "warning", "note")  # error/problem -> exit 1


# -------------------------------------------------------------------------------------------- class weights
def class_weights(pixel_counts: Sequence[int] | np.ndarray, method: str = "enet") -> np.ndarray:
    """Per-class loss weights from labelled-pixel counts (ignore excluded), float64 (K,).

    - "enet": 1 / ln(1.02 + p_c) with p_c = n_c / sum(n) (ENet); in [1.42, 50.5].
    - "median": median(n over present classes) / n_c (median frequency balancing, frequencies over all pixels).
    - "inverse": sum(n) / (K_present * n_c) (inverse frequency, "balanced").
    A class with no pixels gets weight 0 (nothing of it to weigh). All zeros when nothing is labelled.
    """
    n = np.asarray(pixel_counts, dtype=np.float64)
    if n.ndim != 1 or (n < 0).any():
        raise ValueError("class_weights: pixel_counts must be a 1-D sequence of non-negative counts")
    if method not in WEIGHT_METHODS:
        raise ValueError(f"class_weights: unknown method {method!r}; choose one of {', '.join(WEIGHT_METHODS)}")
    weights = np.zeros_like(n)
    present = n > 0
    total = n.sum()
    if total == 0:
        return weights
    if method == "enet":
        weights[present] = 1.0 / np.log(1.02 + n[present] / total)
    elif method == "median":
        weights[present] = np.median(n[present]) / n[present]
    else:
        weights[present] = total / (present.sum() * n[present])
    return weights


def class_pixel_counts(dataset: Any, *, workers: int | None = None, progress: bool = True) -> np.ndarray:
    """Labelled pixels per class id 0..K-1 of `dataset` after its label convention, reading the masks only (in
    `workers` processes): the counts `class_weights` takes, e.g. for training's class weights. Unreadable masks are
    left out (`check_dataset` lists them)."""
    totals, report = _Totals(dataset), SplitReport("counts")
    for summary in scan(dataset, workers=workers, progress=progress, mode="masks", desc="count labels"):
        totals.add(summary, report)
    return totals.mapped[: dataset.num_classes].copy()


# ------------------------------------------------------------------------------------------------- report
@dataclass
class Diagnosis:
    """One finding: a one-line message, the flag that fixes it (if one does), and how bad it is."""

    code: str
    message: str
    fix: str | None = None
    severity: str = "problem"
    split: str | None = None

    def line(self) -> str:
        where = f"[{self.split}] " if self.split else ""
        return f"{self.severity}: {where}{self.message}"


@dataclass
class SplitReport:
    """What one split holds. Label values are the raw file values; `pixel_counts`/`image_counts` are per class
    id after the layout's mapping and the label convention (index K.. = not a class, 255 = ignore)."""

    name: str
    images: int = 0
    scanned: int = 0
    error: str | None = None
    missing_masks: list[str] = field(default_factory=list)
    orphan_masks: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    size_mismatches: list[str] = field(default_factory=list)
    other_errors: list[str] = field(default_factory=list)
    image_modes: dict[str, int] = field(default_factory=dict)
    mask_modes: dict[str, int] = field(default_factory=dict)
    values: dict[int, list[int]] = field(default_factory=dict)  # raw value -> [pixels, images]
    colours: dict[str, list[int]] = field(default_factory=dict)  # "r,g,b" -> [pixels, images]
    pixel_counts: list[int] = field(default_factory=list)  # 256 entries, by id after the mapping
    image_counts: list[int] = field(default_factory=list)
    size_min: tuple[int, int] | None = None  # (H, W)
    size_median: tuple[int, int] | None = None
    size_max: tuple[int, int] | None = None
    mean: list[float] | None = None  # per RGB channel, 0..255
    std: list[float] | None = None

    @property
    def readable(self) -> int:
        return self.scanned - len(self.unreadable) - len(self.size_mismatches) - len(self.other_errors)


@dataclass
class DataReport:
    """Everything `check_dataset` found; `ok` is False when there is an error or a problem."""

    dataset: str
    root: str
    labels: dict[str, Any]
    num_classes: int | None
    class_names: list[str] | None
    splits: dict[str, SplitReport]
    diagnoses: list[Diagnosis]
    class_weights: list[float] | None = None
    weight_method: str = "enet"
    weight_split: str | None = None
    seconds: float = 0.0
    images_per_second: float = 0.0
    workers: int = 0

    @property
    def ok(self) -> bool:
        return not any(d.severity in ("error", "problem") for d in self.diagnoses)

    @property
    def problems(self) -> list[Diagnosis]:
        return [d for d in self.diagnoses if d.severity in ("error", "problem")]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for split in out["splits"].values():
            split["values"] = {str(k): v for k, v in split["values"].items()}
        out["ok"] = self.ok
        return out

    def write_json(self, path: str | Path) -> Path:
        """The whole report as JSON, written to a temporary file and renamed (never half-written)."""
        from ..fileio import write_json

        return write_json(path, self.to_dict())

    def format(self) -> str:
        return _format(self)


# ------------------------------------------------------------------------------------------------ scanning
@dataclass
class _Summary:
    """What a worker sends back for one sample (kilobytes at most)."""

    index: int
    name: str
    error: str | None = None
    error_kind: str | None = None  # "unreadable", "size", "value", "missing"
    image_mode: str | None = None
    mask_mode: str | None = None
    size: tuple[int, int] | None = None  # image (H, W)
    channels: np.ndarray | None = None  # (3, 256) histogram
    hist: np.ndarray | None = None  # (256,) raw values of a grey mask
    big: dict[int, int] | None = None  # raw values > 255 (16-bit masks)
    colour_codes: np.ndarray | None = None  # r<<16|g<<8|b of a colour mask, with counts
    colour_counts: np.ndarray | None = None


_WORKER: dict[str, Any] = {}


def _init_worker(dataset: Any, mode: str) -> None:
    _WORKER["dataset"] = dataset
    _WORKER["mode"] = mode
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def _scan_chunk(indices: Sequence[int]) -> list[_Summary]:
    dataset, mode = _WORKER["dataset"], _WORKER["mode"]
    return [_summarize(dataset, i, mode) for i in indices]


def _open_sample(dataset: Any, index: int, masks_only: bool = False) -> tuple[Any, Any, str, str]:
    """(image object, mask object, name, mask file name or row) as stored: PIL images (files) or row values
    (`masks_only`: no image file is read, and the image is None)."""
    from ..imageio import ImageReadError, _open

    if hasattr(dataset, "raw"):  # Hugging Face rows
        where = dataset.where_of(index)
        try:
            image, mask, name = dataset.raw(index)
        except Exception as e:  # a row whose bytes PIL cannot decode, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ImageReadError(f"{where}: unreadable row ({first})") from None
        return image, mask, name, where
    image_path, mask_path = dataset.samples[index]
    image = None if masks_only else _open(image_path)
    mask = _open(mask_path)
    return image, mask, image_path.name, str(mask_path)


def _summarize(dataset: Any, index: int, mode: str = "full") -> _Summary:
    """Decode one sample and reduce it to histograms. PIL's C histograms (`Image.histogram`, `getcolors`) do the
    counting for the usual modes, so the check costs little beyond decoding; other modes go through numpy.

    `mode`: "full"; "decode" (decode both files, nothing else: the benchmark's baseline); "masks" (the mask only)."""
    from ..imageio import ImageReadError

    s = _Summary(index, str(index))
    masks_only = mode == "masks"
    try:
        image, mask, s.name, where = _open_sample(dataset, index, masks_only)
    except (ImageReadError, OSError, ValueError) as e:
        s.error, s.error_kind = str(e), "unreadable"
        return s
    if mode == "decode":
        return s
    if (image is None and not masks_only) or mask is None:
        s.error, s.error_kind = f"{s.name}: no {'mask' if mask is None else 'image'}", "missing"
        return s
    colour = dataset.labels.palette is not None
    try:
        if masks_only:
            s.image_mode = "(not read)"
        else:
            s.image_mode, s.size, s.channels = _image_summary(image)
        s.mask_mode, mask_size = _mask_summary(mask, colour, s)
    except (ImageReadError, OSError, ValueError) as e:
        s.error, s.error_kind = f"{where}: {e}", "value" if isinstance(e, _BadValues) else "unreadable"
        return s
    if masks_only:
        return s
    if mask_size != s.size:
        s.error = (
            f"{where}: mask is {mask_size[1]}x{mask_size[0]} but image {s.name} is {s.size[1]}x{s.size[0]} "
            "(WxH, after EXIF rotation)"
        )
        s.error_kind = "size"
        s.hist = s.big = s.colour_codes = s.colour_counts = s.channels = None
    return s


def _image_summary(image: Any) -> tuple[str, tuple[int, int], np.ndarray]:
    """(mode, upright (H, W), (3, 256) per-channel histogram of the RGB image the dataset would give)."""
    from PIL import Image

    from ..imageio import to_rgb

    if isinstance(image, Image.Image):
        w, h = image.size
        if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientations that swap width and height
            h, w = w, h
        mode = image.mode
        if mode in ("RGB", "RGBA"):
            return mode, (h, w), np.asarray(image.histogram()[:768], np.int64).reshape(3, 256)
        if mode == "L":
            return mode, (h, w), np.tile(np.asarray(image.histogram(), np.int64), (3, 1))
        rgb = to_rgb(image)
    else:
        mode = f"array{np.asarray(image).shape[2:]}"
        rgb = to_rgb(np.asarray(image))
    channels = np.stack([np.bincount(rgb[..., c].ravel(), minlength=256) for c in range(3)])
    return mode, (int(rgb.shape[0]), int(rgb.shape[1])), channels


def _mask_summary(mask: Any, colour: bool, s: _Summary) -> tuple[str, tuple[int, int]]:
    """Fill `s` with the mask's value histogram (grey masks) or colours (colour masks); (mode, (H, W))."""
    from PIL import Image

    if isinstance(mask, Image.Image):
        w, h = mask.size
        mode = mask.mode
        if mode == "L" or (mode == "P" and not colour):
            s.hist = np.asarray(mask.histogram(), np.int64)
            return mode, (h, w)
        if mode in ("RGB", "RGBA") or (mode == "P" and colour):
            found = (mask if mode == "RGB" else mask.convert("RGB")).getcolors(1 << 12)
            if found is not None:
                counts = np.array([c for c, _ in found], np.int64)
                rgb = np.array([v for _, v in found], np.int64).reshape(-1, 3)
                if not colour and (rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all():
                    s.hist = np.bincount(rgb[:, 0], weights=counts, minlength=256).astype(np.int64)
                else:
                    codes = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
                    order = np.argsort(codes)
                    s.colour_codes, s.colour_counts = codes[order], counts[order]
                return mode, (h, w)
    else:
        mode = f"array {np.asarray(mask).dtype}"
    raw = raw_mask_array(mask, colour=colour)
    size = (int(raw.shape[0]), int(raw.shape[1]))
    if raw.ndim == 3 and (colour or not _grey(raw)):
        codes = (raw[..., 0].astype(np.int64) << 16) | (raw[..., 1].astype(np.int64) << 8) | raw[..., 2]
        s.colour_codes, s.colour_counts = np.unique(codes, return_counts=True)
        return mode, size
    if raw.ndim == 3:
        raw = raw[..., 0]
    if raw.dtype == bool:
        raw = raw.astype(np.uint8)
    if raw.dtype != np.uint8:
        if raw.size and (raw.min() < 0 or raw.dtype.kind == "f"):
            raise _BadValues("mask holds negative or fractional values; class ids are integers 0..255")
        counts = np.bincount(raw.ravel().astype(np.int64))
        s.hist = np.zeros(256, np.int64)
        s.hist[: min(256, len(counts))] = counts[:256]
        if len(counts) > 256:
            s.big = {int(v) + 256: int(c) for v, c in enumerate(counts[256:]) if c}
        return mode, size
    s.hist = np.bincount(raw.ravel(), minlength=256)
    return mode, size


def _grey(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


class _BadValues(ValueError):
    """A mask that decodes but holds values no class id can be (negative, fractional)."""


def scan(
    dataset: Any,
    *,
    workers: int | None = None,
    progress: bool = True,
    mode: str = "full",
    desc: str = "check",
    chunk: int = 8,
) -> Iterator[_Summary]:
    """Per-sample summaries of `dataset` (any order), decoded in `workers` processes (None: one per CPU core;
    0: in this process); `mode` as `_summarize`'s."""
    from tqdm import tqdm

    n = len(dataset)
    workers = _default_workers() if workers is None else workers
    chunks = [list(range(i, min(i + chunk, n))) for i in range(0, n, chunk)]
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False)
    try:
        if workers <= 0 or len(chunks) <= 1:
            _init_worker(dataset, mode)
            for c in chunks:
                results = _scan_chunk(c)
                bar.update(len(results))
                yield from results
            return
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with context.Pool(min(workers, len(chunks)), initializer=_init_worker, initargs=(dataset, mode)) as pool:
            for results in pool.imap_unordered(_scan_chunk, chunks):
                bar.update(len(results))
                yield from results
    finally:
        bar.close()


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------- aggregate
class _Totals:
    """The running sums of one split."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.hist = np.zeros(256, np.int64)
        self.hist_images = np.zeros(256, np.int64)
        self.big: Counter[int] = Counter()
        self.big_images: Counter[int] = Counter()
        self.colours: Counter[int] = Counter()
        self.colour_images: Counter[int] = Counter()
        self.unknown_colours: Counter[int] = Counter()
        self.unknown_examples: dict[int, str] = {}
        self.mapped = np.zeros(256, np.int64)
        self.mapped_images = np.zeros(256, np.int64)
        self.channels = np.zeros((3, 256), np.int64)
        self.sizes: list[tuple[int, int]] = []
        self.image_modes: Counter[str] = Counter()
        self.mask_modes: Counter[str] = Counter()

    def add(self, s: _Summary, report: SplitReport) -> None:
        report.scanned += 1
        if s.error is not None:
            {"unreadable": report.unreadable, "size": report.size_mismatches, "missing": report.missing_masks}.get(
                s.error_kind or "", report.other_errors
            ).append(s.error if s.error_kind != "missing" else s.name)
            return
        if s.image_mode is None:  # decode-only summaries
            return
        self.image_modes[s.image_mode] += 1
        self.mask_modes[s.mask_mode or "?"] += 1
        if s.size is not None:
            self.sizes.append(s.size)
        if s.channels is not None:
            self.channels += s.channels
        labels: LabelConvention = self.dataset.labels
        table = _table_of(self.dataset, s.index)
        raw_ids: np.ndarray | None = None
        if s.hist is not None:
            self.hist += s.hist
            present = s.hist > 0
            self.hist_images += present
            if s.big:
                self.big.update(s.big)
                self.big_images.update(dict.fromkeys(s.big, 1))
                return  # values beyond 8 bits: not mapped (an error is reported for them)
            raw_ids = s.hist
        elif s.colour_codes is not None:
            codes, counts = s.colour_codes, s.colour_counts
            assert counts is not None
            self.colours.update(dict(zip(codes.tolist(), counts.tolist(), strict=True)))
            self.colour_images.update(dict.fromkeys(codes.tolist(), 1))
            if labels.palette is not None:
                known, rows = _palette_rows(labels, codes)
                for code in codes[~known].tolist():
                    self.unknown_colours[code] += 1
                    self.unknown_examples.setdefault(code, s.name)
                raw_ids = np.bincount(rows[known], weights=counts[known], minlength=256).astype(np.int64)
        if raw_ids is not None:
            mapped = np.bincount(table, weights=raw_ids, minlength=256).astype(np.int64)
            self.mapped += mapped
            self.mapped_images += mapped > 0

    def finish(self, report: SplitReport) -> None:
        report.image_modes = dict(self.image_modes)
        report.mask_modes = dict(self.mask_modes)
        values = {int(v): [int(self.hist[v]), int(self.hist_images[v])] for v in np.flatnonzero(self.hist)}
        values.update({v: [int(c), int(self.big_images[v])] for v, c in sorted(self.big.items())})
        report.values = values
        report.colours = {
            _colour_text(code): [int(c), int(self.colour_images[code])] for code, c in self.colours.most_common()
        }
        report.pixel_counts = self.mapped.tolist()
        report.image_counts = self.mapped_images.tolist()
        if self.sizes:
            sizes = np.array(self.sizes)
            areas = sizes[:, 0] * sizes[:, 1]
            order = np.argsort(areas, kind="stable")
            report.size_min = tuple(int(v) for v in sizes[order[0]])  # type: ignore[assignment]
            report.size_median = tuple(int(v) for v in sizes[order[len(order) // 2]])  # type: ignore[assignment]
            report.size_max = tuple(int(v) for v in sizes[order[-1]])  # type: ignore[assignment]
        total = self.channels.sum(axis=1)
        if total.all():
            levels = np.arange(256, dtype=np.float64)
            mean = (self.channels * levels).sum(axis=1) / total
            var = (self.channels * levels**2).sum(axis=1) / total - mean**2
            report.mean = [round(float(m), 3) for m in mean]
            report.std = [round(float(np.sqrt(max(v, 0.0))), 3) for v in var]


def _table_of(dataset: Any, index: int) -> np.ndarray:
    tables = getattr(dataset, "_tables", None)
    return tables[index] if tables else dataset.labels.lut


def _palette_rows(labels: LabelConvention, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sorted_codes, rows = labels.palette_codes
    pos = np.searchsorted(sorted_codes, codes).clip(0, len(sorted_codes) - 1)
    known = sorted_codes[pos] == codes
    return known, rows[pos].astype(np.int64)


def _colour_text(code: int) -> str:
    return f"{(code >> 16) & 255},{(code >> 8) & 255},{code & 255}"


# ---------------------------------------------------------------------------------------------------- splits
def dataset_splits(name: str, root: str | Path) -> list[str]:
    """Every split the layout `name` has at `root` (folder names, VOC list files, HF splits)."""
    from .datasets import _find_root

    if name == "hf":
        from .hf import list_splits

        return list_splits(str(root))
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset root does not exist")
    if name == "folder":
        base = root / "images"
        if not base.is_dir():
            raise FileNotFoundError(f"{base}: missing; the folder layout is ROOT/images/SPLIT and ROOT/masks/SPLIT")
    elif name == "ade20k":
        base = _find_root(root, "images", ["ADEChallengeData2016"]) / "images"
    elif name == "cityscapes":
        base = _find_root(root, "leftImg8bit", ["cityscapes"]) / "leftImg8bit"
    elif name == "coco-stuff":
        base = _find_root(root, "images", ["coco_stuff164k", "cocostuff"]) / "images"
    elif name == "voc":
        lists = _find_root(root, "JPEGImages", ["VOC2012", "VOCdevkit/VOC2012"]) / "ImageSets" / "Segmentation"
        return sorted(p.stem for p in lists.glob("*.txt"))
    else:
        from .catalog import DATASET_NAMES

        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASET_NAMES)}")
    splits = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not splits:
        raise FileNotFoundError(f"{base}: no split folders")
    return splits


def _orphan_masks(name: str, root: str | Path, split: str, dataset: Any) -> list[str]:
    """Folder layout: mask files in ROOT/masks/SPLIT that no image uses."""
    if name != "folder":
        return []
    mask_dir = Path(root).expanduser() / "masks" / split
    if not mask_dir.is_dir():
        return []
    used = {m for _, m in dataset.samples} if dataset is not None else set()
    return [
        p.relative_to(mask_dir).as_posix()
        for p in sorted(mask_dir.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and p not in used
    ]


# ------------------------------------------------------------------------------------------------ check
def check_dataset(
    name: str,
    root: str | Path,
    splits: Sequence[str] | None = None,
    *,
    num_classes: int | None = None,
    labels: LabelConvention | None = None,
    image_column: str | None = None,
    mask_column: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    weight_method: str = "enet",
) -> DataReport:
    """Scan every split (or `splits`) of dataset `name` at `root` and report; see the module docstring.

    Arguments are those of `build_dataset`. Raises (ValueError, FileNotFoundError) only for bad arguments:
    an unknown layout, a missing root, a malformed palette; everything found in the data goes in the report.
    """
    from .datasets import build_dataset

    if weight_method not in WEIGHT_METHODS:
        raise ValueError(f"unknown class weight method {weight_method!r}; choose one of {', '.join(WEIGHT_METHODS)}")
    if name == "raster":  # rasters are read whole, in strips: bands, nodata, grids (data/raster.py)
        from .raster import check_rasters

        return check_rasters(
            root, splits, num_classes=num_classes, labels=labels, progress=progress, weight_method=weight_method
        )
    labels = labels or LabelConvention()
    start = time.perf_counter()
    names = list(splits) if splits else dataset_splits(name, root)
    if splits:
        known = dataset_splits(name, root)
        unknown = [s for s in names if s not in known and not (name == "hf" and _hf_alias(s, known))]
        if unknown:
            raise ValueError(f"{root}: no split {unknown[0]!r} (splits: {', '.join(known)})")
    k_unknown = False
    if name == "folder":  # class-name errors are argument errors; a missing classes.txt is a finding
        from .datasets import folder_class_names

        try:
            folder_class_names(Path(root).expanduser(), num_classes, labels)
        except FileNotFoundError:
            k_unknown, num_classes = True, 255  # scan anyway; the report says classes.txt is missing
    reports: dict[str, SplitReport] = {}
    totals: dict[str, _Totals] = {}
    info = None
    scanned = 0
    quiet = logging.getLogger("segformer")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # one "no mask, skipped" line per image would drown the report
    try:
        for split in names:
            report = reports[split] = SplitReport(split)
            try:
                ds = build_dataset(
                    name,
                    root,
                    split,
                    num_classes=num_classes,
                    skip_bad=True,
                    labels=labels,
                    image_column=image_column,
                    mask_column=mask_column,
                )
            except (FileNotFoundError, ValueError) as e:
                if name == "hf" or isinstance(e, LabelError):  # columns, class names, palette: the arguments
                    raise
                report.error = str(e)
                report.orphan_masks = _orphan_masks(name, root, split, None)
                continue
            info = info or ds.info
            report.images = len(ds) + len(ds.missing)
            report.missing_masks = [_short(p, root) for p, _ in ds.missing]
            report.orphan_masks = _orphan_masks(name, root, split, ds)
            total = totals[split] = _Totals(ds)
            for summary in scan(ds, workers=workers, progress=progress, desc=f"check {split}"):
                total.add(summary, report)
            total.finish(report)
            scanned += report.scanned
    finally:
        quiet.setLevel(level)
    seconds = time.perf_counter() - start
    k = None if k_unknown or info is None else info.num_classes
    class_names = None if k is None else list(info.class_names)
    train = _training_split(reports)
    weights = None
    if k is not None and train is not None and reports[train].pixel_counts:
        weights = [round(float(w), 4) for w in class_weights(reports[train].pixel_counts[:k], weight_method)]
    report = DataReport(
        dataset=name,
        root=str(root),
        labels=labels.to_dict(),
        num_classes=k,
        class_names=class_names,
        splits=reports,
        diagnoses=[],
        class_weights=weights,
        weight_method=weight_method,
        weight_split=train,
        seconds=round(seconds, 3),
        images_per_second=round(scanned / seconds, 1) if seconds > 0 else 0.0,
        workers=_default_workers() if workers is None else workers,
    )
    report.diagnoses = diagnose(report, totals, labels, k_unknown=k_unknown)
    return report


def _hf_alias(split: str, known: list[str]) -> bool:
    from .hf import SPLIT_ALIASES

    return any(a in known for a in SPLIT_ALIASES.get(split, ()))


def _short(path: Path, root: str | Path) -> str:
    try:
        return Path(path).relative_to(Path(root).expanduser()).as_posix()
    except ValueError:
        return str(path)


def _training_split(reports: dict[str, SplitReport]) -> str | None:
    usable = [s for s, r in reports.items() if r.pixel_counts and sum(r.pixel_counts) > 0]
    for preferred in ("train", "training", "train2017", "train_aug", "aug"):
        if preferred in usable:
            return preferred
    return usable[0] if usable else None


# ------------------------------------------------------------------------------------------------ diagnoses
def diagnose(
    report: DataReport, totals: dict[str, _Totals], labels: LabelConvention, *, k_unknown: bool = False
) -> list[Diagnosis]:
    """The findings of a scanned dataset, most serious first."""
    out: list[Diagnosis] = []
    k = report.num_classes
    names = report.class_names or []

    # Files.
    for split, r in report.splits.items():
        if r.error:
            out.append(Diagnosis("split_unreadable", r.error, None, "error", split))
        for code, what, items, hint in (
            ("images_without_mask", "images without a mask", r.missing_masks, "add the masks or remove the images"),
            ("masks_without_image", "masks without an image", r.orphan_masks, "add the images or remove the masks"),
            ("unreadable_files", "unreadable files", r.unreadable, "re-export or remove them"),
            ("size_mismatches", "image/mask size mismatches", r.size_mismatches, "draw masks on the stored image"),
            ("bad_masks", "bad masks", r.other_errors, "re-save them with ids 0..K-1"),
        ):
            if items:
                shown = "; ".join(items[:3]) + (f"; ... ({len(items) - 3} more)" if len(items) > 3 else "")
                out.append(Diagnosis(code, f"{len(items)} {what} ({hint}): {shown}", None, "error", split))

    raw_values: Counter[int] = Counter()
    raw_images: Counter[int] = Counter()
    colours: Counter[int] = Counter()
    unknown: Counter[int] = Counter()
    unknown_examples: dict[int, str] = {}
    mapped = np.zeros(256, np.int64)
    grey_layout = True
    for split, t in totals.items():
        for v, (pixels, images) in report.splits[split].values.items():
            raw_values[v] += pixels
            raw_images[v] += images
        colours.update(t.colours)
        unknown.update(t.unknown_colours)
        for code, ex in t.unknown_examples.items():
            unknown_examples.setdefault(code, ex)
        mapped += t.mapped
        grey_layout = grey_layout and all(m is None for m in getattr(t.dataset, "label_maps", []))
    masks_total = sum(sum(r.mask_modes.values()) for r in report.splits.values())

    # 16-bit values that no 8-bit id can hold.
    big = sorted(v for v in raw_values if v > 255)
    if big:
        out.append(
            Diagnosis(
                "values_beyond_8_bit",
                f"masks hold values up to {big[-1]} ({len(big)} values above 255): class ids must fit 8 bits; "
                "re-save the masks with ids 0..K-1 (255 = ignore)",
            )
        )

    # Colour masks.
    colour_masks = sum(n for mode, n in _mode_counts(report).items() if mode in ("RGB", "RGBA"))
    if colours and labels.palette is None:
        top = colours.most_common(12)
        total = sum(colours.values())
        shown = ", ".join(f"({_colour_text(c)}) {100 * n / total:.1f}%" for c, n in top)
        more = f" and {len(colours) - len(top)} more" if len(colours) > len(top) else ""
        out.append(
            Diagnosis(
                "colour_masks",
                f"{colour_masks} of {masks_total} masks are RGB colour images with {len(colours)} distinct colours "
                f"({shown}{more}): write a CSV with one 'name,r,g,b' line per class (row i = class i; "
                "`segformer data check --write-palette FILE` writes one to edit) and pass --palette FILE",
                "--palette FILE",
            )
        )
    if unknown:
        shown = ", ".join(
            f"({_colour_text(c)}) in {n} masks, e.g. {unknown_examples[c]}" for c, n in unknown.most_common(5)
        )
        out.append(
            Diagnosis(
                "colour_not_in_palette",
                f"{len(unknown)} mask colours are not in the palette file {labels.palette_file}: {shown}; add a "
                "row for each (name,r,g,b) or fix the masks",
            )
        )

    if not mapped.any() and not raw_values:
        return out + _notes(report)

    present = [int(v) for v in np.flatnonzero(mapped)]
    valid = [v for v in present if v != IGNORE]
    raw8 = {v for v in raw_values if v <= 255}

    if k_unknown:
        top = max(valid, default=0)
        out.append(
            Diagnosis(
                "no_class_names",
                f"no classes.txt in {report.root}: masks hold the values {_values_text(sorted(raw8))}; write "
                f"classes.txt with one name per class id (0..{top}, so {top + 1} lines) or pass --num-classes",
                "classes.txt",
                "error",
            )
        )
        return out + _notes(report)
    assert k is not None

    # 0/255 binary masks where 255 is ignore.
    if raw8 and raw8 <= {0, 255} and 255 in raw8 and labels.lut[255] == IGNORE and grey_layout and k >= 2:
        extra = "" if k == 2 else f" (class 1 = {names[1]!r})"
        out.append(
            Diagnosis(
                "binary_255",
                "every mask holds only 0 and 255, and 255 is ignore: your foreground would never be trained; "
                f"pass --label-map 255:1{extra}",
                "--label-map 255:1",
            )
        )
    elif raw8 and raw8 <= {0, 255} and 255 in raw8 and k == 1 and grey_layout:
        out.append(
            Diagnosis(
                "binary_one_class",
                f"masks hold 0 and 255 but there is one class ({names[0]!r}), and 255 is ignore: list two classes "
                "(background first) and pass --label-map 255:1",
                "--label-map 255:1",
            )
        )

    # Values that are neither a class id nor ignore, after the mapping.
    beyond = [v for v in valid if v >= k]
    if beyond:
        stored = _stored_values(totals, raw8)
        out.append(_beyond_diagnosis(beyond, valid, k, names, labels, stored))

    # Classes that never occur in the training split.
    train = report.weight_split
    if train is not None and k <= 255:
        counts = np.asarray(report.splits[train].pixel_counts[:k])
        never = [i for i in range(k) if counts[i] == 0]
        explained = bool(beyond) or any(d.code.startswith("binary") for d in out)  # said already, with a fix
        if never and len(never) < k and not explained:
            listed = ", ".join(f"{i} {names[i]!r}" for i in never[:MAX_NAMES])
            more = f" and {len(never) - MAX_NAMES} more" if len(never) > MAX_NAMES else ""
            valid_raw = sorted(raw8)
            hint = (
                f"; the masks hold only {_values_text(valid_raw)}: is classes.txt for another dataset?"
                if len(valid_raw) <= 3 and k > len(valid_raw)
                else ""
            )
            out.append(
                Diagnosis(
                    "classes_never_present",
                    f"{len(never)} of {k} classes never occur in the '{train}' split, so they cannot be learned: "
                    f"{listed}{more}{hint}",
                    None,
                    "problem",
                    train,
                )
            )
        for split, r in report.splits.items():
            if split == train or not r.pixel_counts or sum(r.pixel_counts[:k]) == 0:
                continue
            absent = [names[i] for i in range(k) if r.pixel_counts[i] == 0 and counts[i] > 0]
            if absent:
                shown = ", ".join(absent[:MAX_NAMES]) + (" ..." if len(absent) > MAX_NAMES else "")
                out.append(
                    Diagnosis(
                        "classes_absent_from_split", f"{len(absent)} classes do not occur: {shown}", None, "note", split
                    )  # fmt: skip
                )

    # One class dominates.
    if train is not None:
        counts = np.asarray(report.splits[train].pixel_counts[:k], dtype=np.float64)
        if counts.sum() > 0 and (counts > 0).sum() > 1:
            top = int(counts.argmax())
            share = counts[top] / counts.sum()
            if share >= DOMINANT_SHARE:
                out.append(
                    Diagnosis(
                        "dominant_class",
                        f"class {top} {names[top]!r} covers {100 * share:.1f}% of the labelled pixels of "
                        f"'{train}': pass --class-weights auto (suggested weights below)",
                        "--class-weights auto",
                        "warning",
                        train,
                    )
                )
    if mapped[IGNORE] and not valid:
        out.append(Diagnosis("all_ignored", "every labelled pixel maps to ignore (255): nothing would be trained"))
    return out + _notes(report)


def _stored_values(totals: dict[str, _Totals], raw: set[int]) -> dict[int, list[int]]:
    """Mapped id -> the stored mask values that become it (through the layouts' and the convention's tables)."""
    tables: dict[int, np.ndarray] = {}
    for t in totals.values():
        for table in getattr(t.dataset, "_tables", None) or [t.dataset.labels.lut]:
            tables.setdefault(id(table), table)
    out: dict[int, set[int]] = {}
    for table in tables.values():
        for v in raw:
            out.setdefault(int(table[v]), set()).add(v)
    return {k: sorted(v) for k, v in out.items()}


def _beyond_diagnosis(
    beyond: list[int], valid: list[int], k: int, names: list[str], labels: LabelConvention, stored: dict[int, list[int]]
) -> Diagnosis:
    ids = f"{k} classes: ids 0..{k - 1}" if k > 1 else "1 class: id 0"
    has_zero = 0 in valid
    if beyond == [k] and not has_zero and not labels.reduce_zero_label:
        return Diagnosis(
            "ids_from_one",
            f"masks hold 1..{k} and never 0 ({ids}): ids start at 1; pass --reduce-zero-label (1..{k} become "
            f"0..{k - 1}, 0 is ignored)",
            "--reduce-zero-label",
        )
    if beyond == [k] and not labels.reduce_zero_label:
        if k == 1:
            return Diagnosis(
                "one_class_binary",
                f"masks hold 0 and 1 but classes.txt lists one class ({names[0]!r}): list both, background first "
                "(or, if 1 marks unlabelled pixels, pass --ignore-index 1)",
                "classes.txt",
            )
        zero_is_class = bool(names) and names[0].strip().lower() in VOID_WORDS
        void = f"if {k} marks void/unlabelled pixels (as 11 in SegNet's 11-class CamVid), pass --ignore-index {k}"
        if zero_is_class:
            return Diagnosis(
                "void_label",
                f"value {k} is neither a class id ({ids}) nor ignore (255): {void}",
                f"--ignore-index {k}",
            )
        return Diagnosis(
            "one_value_too_many",
            f"masks hold {k + 1} values 0..{k} for {ids}, one too many: {void}; if 0 means 'other' and 1..{k} are "
            f"the classes (ADE20K style), pass --reduce-zero-label",
            f"--ignore-index {k} or --reduce-zero-label",
        )
    if len(beyond) == 1:
        v = beyond[0]
        raw = stored.get(v, [v])
        was = f" (stored as {', '.join(map(str, raw))} in the masks)" if raw != [v] else ""
        return Diagnosis(
            "void_label",
            f"value {v}{was} is neither a class id ({ids}) nor ignore (255): if it marks void/unlabelled pixels, "
            f"pass --ignore-index {v}",
            f"--ignore-index {v}",
        )
    shown = _values_text(beyond)
    if beyond == list(range(k, beyond[-1] + 1)):
        return Diagnosis(
            "too_few_class_names",
            f"masks hold ids up to {beyond[-1]} but there are {ids}: list all {beyond[-1] + 1} classes (classes.txt), "
            f"or map the extra values {shown} to ignore with --label-map " + ",".join(f"{v}:255" for v in beyond[:8]),
            "classes.txt",
        )
    return Diagnosis(
        "unknown_values",
        f"values {shown} are neither class ids ({ids}) nor ignore (255): map them with --label-map "
        + ",".join(f"{v}:255" for v in beyond[:8])
        + " (to ignore) or to the classes they mean",
        "--label-map",
    )


def _notes(report: DataReport) -> list[Diagnosis]:
    out = []
    modes = _mode_counts(report, images=True)
    for mode, what in (
        ("RGBA", "have an alpha channel (dropped)"),
        ("LA", "are grey with alpha (alpha dropped, grey repeated)"),
        ("CMYK", "are CMYK (converted to RGB)"),
        ("L", "are greyscale (repeated to 3 channels)"),
        ("I;16", "are 16-bit (scaled to 8 bits)"),
        ("I", "are 32-bit integer (scaled to 8 bits)"),
        ("P", "are palette images (converted to RGB)"),
    ):
        if modes.get(mode):
            out.append(Diagnosis("image_mode", f"{modes[mode]} images {what}", None, "note"))
    masks = _mode_counts(report)
    for mode in ("I;16", "I;16B", "I;16L", "I"):
        if masks.get(mode):
            out.append(Diagnosis("mask_16_bit", f"{masks[mode]} masks are {mode} (16/32-bit); values are read as ids",
                                 None, "note"))  # fmt: skip
    return out


def _mode_counts(report: DataReport, images: bool = False) -> Counter[str]:
    c: Counter[str] = Counter()
    for r in report.splits.values():
        c.update(r.image_modes if images else r.mask_modes)
    return c


def _values_text(values: Sequence[int]) -> str:
    values = list(values)
    if len(values) > 12:
        return ", ".join(map(str, values[:10])) + f", ... ({len(values)} values)"
    return ", ".join(map(str, values)) if values else "nothing"


# --------------------------------------------------------------------------------------------------- text
def _format(report: DataReport) -> str:
    k = report.num_classes
    names = report.class_names or []
    lines = []
    labels = LabelConvention.from_dict(report.labels)
    classes = f"{k} classes" if k is not None else "classes unknown"
    lines.append(f"{report.dataset} at {report.root}: {classes}; labels: {labels.describe()}")
    lines.append(
        f"scanned {sum(r.scanned for r in report.splits.values())} samples in {report.seconds:.1f}s "
        f"({report.images_per_second:.0f} images/s, {report.workers} workers)"
    )
    lines.append("")
    lines.append(
        f"{'split':<14}{'images':>8}{'no mask':>9}{'orphans':>9}{'unreadable':>12}{'size diff':>11}"
        "  image sizes HxW min/median/max"
    )
    for name, r in report.splits.items():
        if r.error:
            lines.append(f"{name:<14}  {r.error}")
            continue
        sizes = "/".join(f"{s[0]}x{s[1]}" for s in (r.size_min, r.size_median, r.size_max) if s) or "-"
        lines.append(
            f"{name:<14}{r.images:>8}{len(r.missing_masks):>9}{len(r.orphan_masks):>9}{len(r.unreadable):>12}"
            f"{len(r.size_mismatches):>11}  {sizes}"
        )
    lines.append("")
    masks = _mode_counts(report)
    images = _mode_counts(report, images=True)
    lines.append("mask modes:  " + ", ".join(f"{_mode_name(m)} {n}" for m, n in masks.most_common()))
    lines.append("image modes: " + ", ".join(f"{m} {n}" for m, n in images.most_common()))
    split_stats = [r for r in report.splits.values() if r.mean]
    if split_stats:
        r = split_stats[0]
        lines.append(
            f"channel mean/std (RGB, 0..255, '{r.name}'): mean {' '.join(f'{v:.1f}' for v in r.mean or [])}, "
            f"std {' '.join(f'{v:.1f}' for v in r.std or [])}"
        )
    lines.append("")
    values: Counter[int] = Counter()
    value_images: Counter[int] = Counter()
    for r in report.splits.values():
        for v, (p, n) in r.values.items():
            values[v] += p
            value_images[v] += n
    if values:
        lut = labels.lut
        total = sum(values.values())
        lines.append("mask values (all splits):")
        lines.append(f"  {'value':>6} {'pixels':>12} {'share':>7} {'images':>7}  class")
        shown = sorted(values)
        for v in shown[:40]:
            target = int(lut[v]) if v <= 255 else None
            if target is None:
                cls = "(beyond 8 bits)"
            elif target == IGNORE:
                cls = "ignore"
            elif k is not None and target < k:
                cls = f"{target} {names[target]}" if target != v else names[target]
            else:
                cls = f"-> {target}: not a class" if target != v else "not a class"
            lines.append(f"  {v:>6} {values[v]:>12} {100 * values[v] / total:>6.2f}% {value_images[v]:>7}  {cls}")
        if len(shown) > 40:
            lines.append(f"  ... {len(shown) - 40} more values (see --json)")
        lines.append("")
    colours: Counter[str] = Counter()
    for r in report.splits.values():
        for c, (p, _) in r.colours.items():
            colours[c] += p
    if colours:
        total = sum(colours.values())
        lines.append(f"mask colours (all splits, {len(colours)} distinct):")
        for c, p in colours.most_common(20):
            lines.append(f"  ({c}) {100 * p / total:.2f}%")
        lines.append("")
    if k is not None and report.weight_split is not None:
        counts = report.splits[report.weight_split].pixel_counts
        lines.append(
            f"classes in '{report.weight_split}': pixels, images, suggested weight ({_formula(report.weight_method)}):"
        )
        weights = report.class_weights or [0.0] * k
        images_per = report.splits[report.weight_split].image_counts
        total = sum(counts[:k]) or 1
        for i in range(min(k, 60)):
            lines.append(
                f"  {i:>3} {names[i][:24]:<24} {counts[i]:>12} {100 * counts[i] / total:>6.2f}% "
                f"{images_per[i]:>6} img  w={weights[i]:.3f}"
            )
        if k > 60:
            lines.append(f"  ... {k - 60} more classes (see --json)")
        lines.append("")
    if report.diagnoses:
        for d in report.diagnoses:
            lines.append(d.line())
    n = len(report.problems)
    lines.append("clean: no problems found" if report.ok else f"{n} problem{'s' if n != 1 else ''} found")
    return "\n".join(lines)


def _mode_name(mode: str) -> str:
    return {
        "L": "L (8-bit grey)",
        "P": "P (palette)",
        "RGB": "RGB (colour)",
        "RGBA": "RGBA (colour)",
        "I;16": "I;16 (16-bit)",
        "I": "I (32-bit)",
        "1": "1 (1-bit)",
    }.get(mode, mode)


def _formula(method: str) -> str:
    return {
        "enet": "ENet: 1/ln(1.02 + p)",
        "median": "median frequency: median(n)/n",
        "inverse": "inverse frequency: N/(K n)",
    }[method]


def write_palette_template(report: DataReport, path: str | Path) -> Path:
    """The colours the masks hold as a palette CSV to edit (black first, then by pixel count), atomically."""
    colours: Counter[str] = Counter()
    for r in report.splits.values():
        for c, (p, _) in r.colours.items():
            colours[c] += p
    if not colours:
        raise ValueError("--write-palette: the masks hold no colours (they are not RGB colour masks)")
    order = sorted(colours, key=lambda c: (c != "0,0,0", -colours[c]))
    from ..fileio import write_text

    return write_text(path, "name,r,g,b\n" + "".join(f"class_{i},{c}\n" for i, c in enumerate(order)))
