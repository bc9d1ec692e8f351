"""Training and evaluation data from rasters (GeoTIFF): image rasters with label rasters on the same grid.

Layout (`--dataset raster`, the "raster" row of `layouts.LAYOUTS`): ROOT/images/SPLIT/NAME.tif with
ROOT/masks/SPLIT/NAME.tif (`raster_pairs`: matched by path without suffix, subfolders allowed), class names from
ROOT/classes.txt or `num_classes`; or `RasterDataset(pairs, names)`
for (image, label) pairs anywhere. A label raster must be on its image's grid (CRS, transform, size): anything else
is one error line naming both files and both grids; labels are never resampled here.

Training reads random windows (`load(i)`): window i is drawn from `np.random.default_rng([seed, i])`, so a sample is
a pure function of its index and the stream (`sampling.SampleStream`) stays seeded and resumable. A window is
centred near a random pixel with data (from a coarse validity map read once per raster), the raster chosen in
proportion to its pixels with data; windows with less than `min_valid` of their pixels with data are redrawn.
Windows are `window` pixels square (the smallest raster side at most), at the raster's resolution: the dataset's
`scale` is the window, so the training pipeline rescales only by its ratio jitter. Pixels without image data are
filled with the window's band means and ignored in the labels; label nodata is ignored (255).

Validation and `eval` run whole rasters through the tiled prediction of `inference.raster` (`evaluation.raster`), so
their metrics are those of predict's output, pixel for pixel. `segformer data check` reads each pair whole through
`scan_pair` (`data.check.scan.scan_rasters`).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import IGNORE_INDEX
from ..geoio import (
    RASTER_SUFFIXES,
    Grid,
    RasterError,
    gdal_env,
    open_raster,
    read_band,
    read_window,
    row_blocks,
)
from ..protocol import InferenceOptions
from .base import Dataset, Transform
from .catalog import DatasetInfo, folder_info
from .labels import LabelConvention, LabelError

log = logging.getLogger("segformer")

WINDOW = 1024  # side of the training windows (the smallest raster side at most)
MIN_VALID = 0.5  # windows with less data than this share are redrawn
DRAWS = 10  # redraws before the window with the most data is taken
MAP_SIDE = 512  # long side of the coarse validity map of each raster


@dataclass(frozen=True)
class RasterPair:
    """An image raster and its label raster: the grid, band count and type, label nodata; the coarse validity map
    (image data and label data, every `step`-th pixel) that training windows are drawn from."""

    image: Path
    label: Path
    grid: Grid
    bands: int
    dtype: str
    label_nodata: float | None
    valid_map: np.ndarray
    step: int

    @property
    def valid_pixels(self) -> float:
        """About how many pixels have image and label data."""
        return float(self.valid_map.sum()) * self.step * self.step


def raster_protocol(crop: Sequence[int]) -> InferenceOptions:
    """How a model trained on `crop` windows of rasters is run (stored with it): tiles of the crop at the raster's
    resolution, overlapping by a quarter, blended (`inference.raster`)."""
    th, tw = int(crop[0]), int(crop[1])
    return InferenceOptions(mode="slide", crop=(th, tw), stride=(th - th // 4, tw - tw // 4))


def open_pair(image: str | Path, label: str | Path, channels: int | None = None) -> RasterPair:
    """Read the grids and validity maps of one pair; a label raster on another grid than its image, a band count
    other than `channels` or an image with no data at all raise RasterError (one line naming the files)."""
    image, label = Path(image), Path(label)
    with gdal_env(), open_raster(image) as src, open_raster(label) as lab:
        grid = _same_grid(image, src, label, lab)
        if channels is not None and src.count != channels:
            raise RasterError(
                f"{image}: has {src.count} band{'s' if src.count != 1 else ''} but {channels} channels are expected "
                "(--in-channels for training; a trained model takes the channels it was trained with)"
            )
        step = max(1, math.ceil(max(src.height, src.width) / MAP_SIDE))
        image_valid = _coarse_valid(src, range(1, src.count + 1), step)
        if not image_valid.any() and band_sums(image)[2] == 0:  # the map samples; a full read is sure
            raise RasterError(f"{image}: every pixel is nodata; remove it or fix its nodata value")
        valid = image_valid & _coarse_valid(lab, (1,), step)
        return RasterPair(image, label, grid, int(src.count), str(src.dtypes[0]), lab.nodata, valid, step)


def _coarse_valid(src: Any, bands: Sequence[int], step: int) -> np.ndarray:
    """Every `step`-th pixel: whether all `bands` have data there (GDAL masks, decimated nearest)."""
    from rasterio.enums import Resampling

    shape = (len(bands), math.ceil(src.height / step), math.ceil(src.width / step))
    masks = src.read_masks(list(bands), out_shape=shape, resampling=Resampling.nearest)
    return (masks > 0).all(axis=0)


def label_ids(
    raw: np.ndarray, nodata: float | None, labels: LabelConvention, num_classes: int, where: str | Path
) -> np.ndarray:
    """Label raster values (h, w) -> uint8 class ids 0..K-1 or 255 (ignore): nodata ignored, then the label
    convention; a value that is >= K and not nodata raises RasterError (one line naming the file)."""
    raw = np.asarray(raw)
    nod = None if nodata is None else np.isnan(raw) if np.isnan(nodata) else raw == nodata
    if nod is not None and nod.any():
        raw = np.where(nod, 0, raw)
    if raw.dtype.kind == "f":
        raw = raw.astype(np.int64)
    try:
        ids = labels.apply(raw, str(where))
    except LabelError as e:
        raise RasterError(str(e)) from None
    if nod is not None:
        ids[nod] = IGNORE_INDEX
    bad = (ids != IGNORE_INDEX) & (ids >= num_classes)
    if bad.any():
        value = raw[bad].flat[0]
        nodata_text = f"its nodata is {nodata:g}" if nodata is not None else "it has no nodata value"
        raise RasterError(
            f"{where}: label value {value:g} is >= num_classes {num_classes} and not nodata ({nodata_text}); "
            f"ids must be 0..{num_classes - 1}, or map the value with --label-map {value:g}:255"
        )
    return ids


class RasterDataset(Dataset):
    """Image/label raster pairs with class names (a `base.Dataset`): random training windows through `load(i)`,
    whole rasters for evaluation (`pairs`). With `skip_bad`, a pair `open_pair` rejects (unreadable, another grid,
    other bands, no data) is left out and listed in `rejected` with its one-line reason instead of raising;
    `samples` lists every pair given."""

    def __init__(
        self,
        pairs: Sequence[tuple[str | Path, str | Path]],
        class_names: Sequence[str],
        *,
        labels: LabelConvention | None = None,
        window: int = WINDOW,
        min_valid: float = MIN_VALID,
        seed: int = 0,
        transform: Transform | None = None,
        channels: int | None = None,
        where: str = "",
        colours: np.ndarray | None = None,
        skip_bad: bool = False,
    ) -> None:
        if not pairs:
            raise ValueError(f"{where or 'rasters'}: no image/label raster pairs (empty split)")
        self.samples = [(Path(image), Path(label)) for image, label in pairs]
        self.rejected: list[tuple[Path, Path, str]] = []
        self.pairs = self._open(channels, skip_bad)
        self.labels = labels or LabelConvention()
        sides = [min(p.grid.height, p.grid.width) for p in self.pairs]
        self.window = min([window, *sides])
        self.info = _info(class_names, self.window, colours)
        self.min_valid, self.seed, self.transform, self.where = min_valid, seed, transform, where
        self.channels = self.pairs[0].bands if self.pairs else channels
        self.dropped, self.missing, self.skip_bad = len(self.rejected), [], skip_bad
        weights = np.array([p.valid_pixels for p in self.pairs])
        total = float(weights.sum())
        self._share = weights / total if total > 0 else np.full(len(weights), 1 / max(len(weights), 1))
        self._length = max(len(self.pairs), math.ceil(total / (self.window * self.window)))

    def _open(self, channels: int | None, skip_bad: bool) -> list[RasterPair]:
        """The pairs that open on one grid with data and the same bands (all of them, or RasterError)."""
        opened = []
        for image, label in self.samples:
            try:
                pair = open_pair(image, label, channels)
                first = opened[0] if opened else None
                if first is not None and pair.bands != first.bands:
                    raise RasterError(
                        f"{image}: has {pair.bands} bands but {first.image} has {first.bands}; "
                        "the rasters of a dataset must have the same bands"
                    )
            except RasterError as e:
                if not skip_bad:
                    raise
                self.rejected.append((image, label, str(e)))
                log.warning("%s (skipped)", e)
                continue
            opened.append(pair)
        return opened

    # -- the dataset interface ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Training windows per epoch: about the pixels with data over the window area (one per raster at least)."""
        return self._length

    def __repr__(self) -> str:
        rasters, k = len(self.pairs), self.num_classes
        return f"RasterDataset({self.where!r}, {rasters} rasters, {len(self)} windows, {k} classes)"

    def path_of(self, index: int) -> str | None:
        return str(self.pairs[self.window_of(index)[0]].label) if self.pairs else None

    def tiled_protocol(self, crop: Sequence[int] | None) -> InferenceOptions:
        """Whole rasters in tiles of the training crop (or the dataset's), as `inference.raster` predicts them."""
        return raster_protocol(crop or self.info.crop)

    # What `data check` reads: the label convention's table for every pair (rasters have no layout mapping).
    layout_mapped = False

    def table_of(self, index: int) -> np.ndarray:
        return self.labels.lut

    def tables(self) -> list[np.ndarray]:
        return [self.labels.lut]

    def with_transform(self, transform: Transform | None) -> RasterDataset:
        other = copy.copy(self)
        other.transform = transform
        return other

    # -- reading ----------------------------------------------------------------------------------------------
    def window_of(self, index: int) -> tuple[int, int, int]:
        """(raster, row, column) of training window `index`: a pure function of (seed, index)."""
        rng = np.random.default_rng([self.seed, index])
        r = int(rng.choice(len(self.pairs), p=self._share))
        pair, best = self.pairs[r], (-1.0, 0, 0)
        cells = np.argwhere(pair.valid_map)
        for _ in range(DRAWS):
            cell = cells[rng.integers(len(cells))] if len(cells) else np.zeros(2, np.int64)
            pixel = cell * pair.step + rng.integers(pair.step, size=2)  # a pixel with data (about)
            corner = pixel - rng.integers(self.window, size=2)  # a window holding it
            limit = (pair.grid.height - self.window, pair.grid.width - self.window)
            y, x = int(np.clip(corner[0], 0, limit[0])), int(np.clip(corner[1], 0, limit[1]))
            share = _share_valid(pair, y, x, self.window)
            if share > best[0]:
                best = (share, y, x)
            if share >= self.min_valid:
                break
        return r, best[1], best[2]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Training window `index`: (image (window, window, C) in the raster's type, ids uint8 (window, window),
        name 'NAME@row,col')."""
        r, y, x = self.window_of(index)
        pair, size = self.pairs[r], self.window
        rows, cols = (y, y + size), (x, x + size)
        with gdal_env(), open_raster(pair.image) as src, open_raster(pair.label) as lab:
            image, valid = read_window(src, range(1, pair.bands + 1), rows, cols)
            raw = read_band(lab, rows, cols)
        ids = label_ids(raw, pair.label_nodata, self.labels, self.num_classes, pair.label)
        ids[~valid] = IGNORE_INDEX
        return fill_nodata(image, valid), ids, f"{pair.image.stem}@{y},{x}"

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-band mean and (population) std over every pixel with data of every image raster, read in strips."""
        total = np.zeros(self.channels)
        total_sq = np.zeros(self.channels)
        count = 0
        for pair in self.pairs:
            s, sq, n = band_sums(pair.image)
            total, total_sq, count = total + s, total_sq + sq, count + n
        if count == 0:
            raise ValueError(f"{self.where or 'rasters'}: no pixels with data to compute channel statistics from")
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
        std = np.where(std > 0, std, 1.0)
        return tuple(float(m) for m in mean), tuple(float(v) for v in std)

    def class_pixel_counts(self) -> np.ndarray:
        """Labelled pixels per class id 0..K-1 over every label raster whole (pixels without image data and label
        nodata left out), read in strips: what `--class-weights auto` weighs."""
        counts = np.zeros(256, np.int64)
        for pair in self.pairs:
            for ids in self._label_strips(pair):
                counts += np.bincount(ids.ravel(), minlength=256)
        return counts[: self.num_classes]

    def _label_strips(self, pair: RasterPair) -> Any:
        """The class ids (uint8, 255 = ignore) of a pair, strip by strip."""
        with gdal_env(), open_raster(pair.image) as src, open_raster(pair.label) as lab:
            for rows in row_blocks(src.height, src.width, 8 * (pair.bands + 1)):
                _, valid = read_window(src, range(1, pair.bands + 1), rows, (0, src.width))
                ids = label_ids(
                    read_band(lab, rows, (0, src.width)), pair.label_nodata, self.labels, self.num_classes, pair.label
                )
                ids[~valid] = IGNORE_INDEX
                yield ids

    def check(self) -> list[str]:
        """Read every label raster whole (in strips); the errors, one line each."""
        errors = []
        for pair in self.pairs:
            try:
                for _ in self._label_strips(pair):
                    pass
            except (RasterError, OSError) as e:
                errors.append(str(e))
        return errors


def _info(class_names: Sequence[str], window: int, colours: np.ndarray | None) -> DatasetInfo:
    """The dataset's classes; the training scale is the window (no rescale but the ratio jitter), the crop 512 at
    most, the test protocol tiles of the crop."""
    info = folder_info(tuple(class_names), name="raster", colours=colours)
    crop = (min(512, window), min(512, window))
    return DatasetInfo(
        info.name, info.class_names, info.palette, scale=(window, window), crop=crop, test=raster_protocol(crop)
    )


def _share_valid(pair: RasterPair, y: int, x: int, size: int) -> float:
    s = pair.step
    cells = pair.valid_map[y // s : (y + size - 1) // s + 1, x // s : (x + size - 1) // s + 1]
    return float(cells.mean()) if cells.size else 0.0


def fill_nodata(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """`image` (h, w, C) with the pixels without data set to the band means of those with data (in its type)."""
    if valid.all() or not valid.any():
        return image
    image = image.copy()
    mean = image[valid].astype(np.float64).mean(axis=0)
    image[~valid] = np.round(mean).astype(image.dtype) if image.dtype.kind in "iu" else mean.astype(image.dtype)
    return image


def band_sums(path: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(sum, sum of squares) per band over the pixels with data of a raster, and their count (float64)."""
    with gdal_env(), open_raster(path) as src:
        bands = range(1, src.count + 1)
        total, total_sq, count = np.zeros(src.count), np.zeros(src.count), 0
        for rows in row_blocks(src.height, src.width, 8 * src.count):
            pixels, valid = read_window(src, bands, rows, (0, src.width))
            values = pixels[valid].astype(np.float64)  # (n, C)
            total += values.sum(axis=0)
            total_sq += (values * values).sum(axis=0)
            count += len(values)
    return total, total_sq, count


# ---------------------------------------------------------------------------------------------------------------
# The folder layout
# ---------------------------------------------------------------------------------------------------------------
def raster_pairs(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label) rasters of ROOT/images/SPLIT and ROOT/masks/SPLIT, matched by path without suffix; an image
    without a label raster is an error naming the file expected."""
    root = Path(root).expanduser()
    image_dir, mask_dir = root / "images" / split, root / "masks" / split
    if not image_dir.is_dir():
        have = sorted(p.name for p in (root / "images").iterdir() if p.is_dir()) if (root / "images").is_dir() else []
        raise FileNotFoundError(f"{image_dir}: no such raster split folder (found: {', '.join(have) or 'none'})")
    masks = {p.relative_to(mask_dir).with_suffix("").as_posix(): p for p in _rasters(mask_dir)}
    pairs = []
    for image in _rasters(image_dir):
        key = image.relative_to(image_dir).with_suffix("").as_posix()
        if key not in masks:
            raise FileNotFoundError(f"{image}: no label raster for this image (expected {mask_dir / key}.tif)")
        pairs.append((image, masks[key]))
    if not pairs:
        raise ValueError(f"{image_dir}: no rasters ({' '.join(RASTER_SUFFIXES)}) in this split")
    return pairs


def _rasters(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = (p for p in folder.rglob("*") if p.suffix.lower() in RASTER_SUFFIXES and not p.name.startswith("."))
    return sorted(p for p in found if p.is_file())


# ---------------------------------------------------------------------------------------------------------------
# `segformer data check --dataset raster`
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class PairScan:
    """What one full read of a pair found: band sums over pixels with data, the image's nodata share, the label's
    raw values (value -> pixels) and nodata pixels."""

    grid: Grid
    bands: str
    labels: str
    sums: np.ndarray
    sums_sq: np.ndarray
    valid: int
    values: dict[int, int]
    label_nodata: int


def scan_pair(image: Path, label: Path) -> PairScan:
    """Read a pair whole, in strips, for `data check` (RasterError for a file GDAL cannot read or a label on another
    grid)."""
    with gdal_env(), open_raster(image) as src, open_raster(label) as lab:
        grid = _same_grid(image, src, label, lab)
        bands = range(1, src.count + 1)
        sums, sums_sq, valid, nodata = np.zeros(src.count), np.zeros(src.count), 0, 0
        values: dict[int, int] = {}
        for rows in row_blocks(src.height, src.width, 8 * (src.count + 1)):
            pixels, ok = read_window(src, bands, rows, (0, src.width))
            data = pixels[ok].astype(np.float64)
            sums, sums_sq, valid = sums + data.sum(0), sums_sq + (data * data).sum(0), valid + len(data)
            raw, labelled = read_window(lab, (1,), rows, (0, src.width))
            nodata += int((~labelled).sum())
            found, counts = np.unique(raw[..., 0][labelled], return_counts=True)
            for v, n in zip(found.tolist(), counts.tolist(), strict=True):
                values[int(v)] = values.get(int(v), 0) + int(n)
        label_type = f"{lab.dtypes[0]} (nodata {lab.nodata:g})" if lab.nodata is not None else lab.dtypes[0]
        return PairScan(grid, f"{src.count} x {src.dtypes[0]}", label_type, sums, sums_sq, valid, values, nodata)


def _same_grid(image: Path, src: Any, label: Path, lab: Any) -> Grid:
    """The image's grid; RasterError (one line naming both files and both grids) when the label's differs."""
    grid, label_grid = Grid.of(src), Grid.of(lab)
    if not grid.matches(label_grid):
        raise RasterError(
            f"{label}: label raster is on another grid than its image {image}: label {label_grid.describe()}; "
            f"image {grid.describe()}; reproject the labels onto the image grid (e.g. gdalwarp with the image's "
            "-t_srs, -tr and -te, nearest resampling): labels are never resampled here"
        )
    return grid
