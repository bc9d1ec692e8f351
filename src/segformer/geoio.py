"""Georeferenced rasters (GeoTIFF and anything else GDAL reads) window by window, with rasterio (`pip install
'segformer[geo]'`; its wheels bundle GDAL), so that memory never grows with the raster.

Reading: `open_raster` (one clear line for a file GDAL cannot read), `select_bands` (1-based band numbers, as GDAL
counts), `read_window` (the bands of one window in their own type, and which pixels hold data: GDAL's masks, i.e. the
nodata value, an internal mask or an alpha band). Writing: `RasterWriter` fills an uncompressed tiled scratch
GeoTIFF window by window, then copies it once, compressed, to a Cloud-Optimized GeoTIFF with overviews (or a plain
tiled GeoTIFF), through `fileio.atomic_write`. The grid (CRS, transform, size) and the dataset tags of the input are
kept. GDAL's block cache is held to `GDAL_CACHE_MB` (its default, 5% of the machine's memory, would dominate).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import atomic_write
from .imageio import ImageReadError

RASTER_SUFFIXES = (".tif", ".tiff")
GDAL_CACHE_MB = 32  # GDAL's block cache (reads and scratch writes)
BLOCK = 512  # tile size of the files written


class RasterError(ImageReadError):
    """A raster that cannot be used as asked; the message is one line naming the file and what to do."""


def require_rasterio() -> Any:
    """The rasterio module, or one line saying how to install it."""
    try:
        import rasterio
    except ImportError:
        raise RuntimeError("GeoTIFF rasters need rasterio: pip install 'segformer[geo]' (or rasterio)") from None
    return rasterio


@contextmanager
def gdal_env() -> Iterator[None]:
    """GDAL settings for this library's reads and writes: a small block cache, no scan of sidecar files."""
    rasterio = require_rasterio()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB << 20, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):  # in bytes
        yield


def open_raster(path: str | Path) -> Any:
    """A rasterio dataset opened for reading; a missing or non-raster file raises RasterError (one line)."""
    rasterio = require_rasterio()
    path = Path(path)
    if not path.is_file():
        raise RasterError(f"{path}: no such file")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RasterError(f"{path}: not a raster GDAL can read ({first})") from None


def is_georeferenced(path: str | Path) -> bool:
    """Whether `path` is a raster with a CRS, a geotransform or ground control points (False without rasterio, for
    other suffixes and for files GDAL cannot read: those stay images)."""
    if Path(path).suffix.lower() not in RASTER_SUFFIXES:
        return False
    try:
        rasterio = require_rasterio()
    except RuntimeError:
        return False
    try:
        with gdal_env(), warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # the answer we are after
            with rasterio.open(path) as src:
                return src.crs is not None or not src.transform.is_identity or bool(src.gcps[0])
    except rasterio.errors.RasterioIOError:
        return False


@dataclass(frozen=True)
class Grid:
    """Where a raster's pixels are: CRS (WKT, or None), affine transform (a, b, c, d, e, f) and size."""

    crs: str | None
    transform: tuple[float, ...]
    width: int
    height: int

    @classmethod
    def of(cls, src: Any) -> Grid:
        crs = src.crs.to_wkt() if src.crs is not None else None
        return cls(crs, tuple(float(v) for v in tuple(src.transform)[:6]), int(src.width), int(src.height))

    def matches(self, other: Grid) -> bool:
        """Same CRS, size and transform (to a millionth of a pixel)."""
        if (self.width, self.height) != (other.width, other.height) or _crs_key(self.crs) != _crs_key(other.crs):
            return False
        scale = max(abs(self.transform[0]), abs(self.transform[4]), 1e-12)
        return all(abs(a - b) <= 1e-6 * scale for a, b in zip(self.transform, other.transform, strict=True))

    def describe(self) -> str:
        """'EPSG:32633, transform (10, 0, 500000, 0, -10, 4200000), 1000x800' (size WxH)."""
        transform = ", ".join(f"{v:.12g}" for v in self.transform)
        return f"{_crs_name(self.crs)}, transform ({transform}), {self.width}x{self.height}"

    @property
    def crs_name(self) -> str:
        return _crs_name(self.crs)

    @property
    def units(self) -> str:
        """The CRS's linear unit ('metre', 'degree'), or 'units'."""
        if self.crs is None:
            return "units"
        from rasterio.crs import CRS

        crs = CRS.from_wkt(self.crs)
        return "degree" if crs.is_geographic else (crs.linear_units or "units")

    @property
    def resolution(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units."""
        a, b, _, d, e, _ = self.transform
        return (a * a + d * d) ** 0.5, (b * b + e * e) ** 0.5


def _crs_key(wkt: str | None) -> Any:
    if wkt is None:
        return None
    from rasterio.crs import CRS

    return CRS.from_wkt(wkt)


def _crs_name(wkt: str | None) -> str:
    if wkt is None:
        return "no CRS"
    from rasterio.crs import CRS

    crs = CRS.from_wkt(wkt)
    return crs.to_string() if crs.to_epsg() is not None else (crs.to_dict().get("proj") or "custom CRS")


def parse_bands(text: str) -> tuple[int, ...]:
    """'4,3,2' -> (4, 3, 2): 1-based band numbers, as GDAL counts them."""
    try:
        bands = tuple(int(b) for b in text.replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"--bands {text!r} must be band numbers like 4,3,2 (1-based, as GDAL counts)") from None
    if min(bands) < 1:
        raise ValueError(f"--bands {text!r}: band numbers start at 1 (as GDAL counts)")
    return bands


def select_bands(src: Any, bands: Sequence[int] | None, channels: int, where: str | Path) -> tuple[int, ...]:
    """The 1-based bands to read for a `channels`-input model: `bands` checked against the raster, else all of
    its bands when it has exactly `channels`."""
    count = int(src.count)
    if bands is None:
        if count != channels:
            example = ",".join(str(b) for b in range(min(count, channels), 0, -1))
            raise RasterError(
                f"{where}: has {count} band{'s' if count != 1 else ''} but the model takes {channels}; "
                f"choose them with --bands (1-based, e.g. --bands {example})"
            )
        return tuple(range(1, count + 1))
    bad = [b for b in bands if not 1 <= b <= count]
    if bad:
        raise RasterError(f"{where}: band {bad[0]} is out of range; it has {count} bands (1..{count})")
    if len(bands) != channels:
        raise RasterError(f"{where}: --bands names {len(bands)} bands but the model takes {channels}")
    return tuple(bands)


def read_window(src: Any, bands: Sequence[int], rows: tuple[int, int], cols: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """(pixels (h, w, C) in the raster's type, valid (h, w) bool) of rows x cols: a pixel is valid when every
    selected band has data there (GDAL's mask: nodata value, internal mask or alpha band)."""
    from rasterio.windows import Window

    window = Window(cols[0], rows[0], cols[1] - cols[0], rows[1] - rows[0])
    pixels = src.read(list(bands), window=window)  # (C, h, w)
    return np.moveaxis(pixels, 0, -1), _valid(src, bands, pixels, window)


def _valid(src: Any, bands: Sequence[int], pixels: np.ndarray, window: Any) -> np.ndarray:
    """Where every band has data: from the nodata values when those are the bands' only masks (3x faster than
    GDAL's nodata mask bands, which read the pixels again), else GDAL's masks (internal mask, alpha band)."""
    from rasterio.enums import MaskFlags

    flags = [src.mask_flag_enums[b - 1] for b in bands]
    if any(f not in ([MaskFlags.all_valid], [MaskFlags.nodata]) for f in flags):
        return (src.read_masks(list(bands), window=window) > 0).all(axis=0)
    valid = np.ones(pixels.shape[1:], bool)
    for k, (band, flag) in enumerate(zip(bands, flags, strict=True)):
        if flag == [MaskFlags.nodata]:
            nodata = src.nodatavals[band - 1]
            valid &= ~np.isnan(pixels[k]) if np.isnan(nodata) else pixels[k] != nodata
    return valid


def read_band(src: Any, rows: tuple[int, int], cols: tuple[int, int], band: int = 1) -> np.ndarray:
    """Band `band` of rows x cols (h, w), in the raster's type (label rasters)."""
    from rasterio.windows import Window

    return src.read(band, window=Window(cols[0], rows[0], cols[1] - cols[0], rows[1] - rows[0]))


def row_blocks(height: int, width: int, bytes_per_pixel: int, budget: int = 64 << 20) -> Iterator[tuple[int, int]]:
    """(row0, row1) strips of a raster holding at most `budget` bytes each (at least one row)."""
    step = max(1, budget // max(1, width * bytes_per_pixel))
    for r0 in range(0, height, step):
        yield r0, min(r0 + step, height)


class RasterWriter:
    """A raster on the grid of `src` written window by window: an uncompressed tiled scratch file beside `path`,
    copied compressed to `path` on `close` (Cloud-Optimized with overviews when `cog`), atomically.

    `dtype`/`count`/`nodata` are the output's; the source's dataset tags are copied, `tags` added, `colormap`
    {value: (r, g, b)} and band `descriptions` set. Use as a context manager: the scratch file goes either way.
    """

    def __init__(
        self,
        path: str | Path,
        src: Any,
        *,
        count: int,
        dtype: str,
        nodata: float | None,
        cog: bool = True,
        resampling: str = "nearest",
        tags: dict[str, str] | None = None,
        colormap: dict[int, tuple[int, int, int]] | None = None,
        descriptions: Sequence[str] | None = None,
    ) -> None:
        rasterio = require_rasterio()
        self.path, self.cog, self.resampling, self.dtype = Path(path), cog, resampling, dtype
        fd, scratch = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".scratch.tif", dir=self.path.parent)
        os.close(fd)
        self.scratch = Path(scratch)
        profile = {
            "driver": "GTiff", "width": src.width, "height": src.height, "count": count, "dtype": dtype,
            "crs": src.crs, "transform": src.transform, "nodata": nodata, "tiled": True,
            "blockxsize": BLOCK, "blockysize": BLOCK, "BIGTIFF": "IF_SAFER",
        }  # fmt: skip
        self.dst = rasterio.open(self.scratch, "w", **profile)
        self.dst.update_tags(**src.tags(), **(tags or {}))
        if colormap:
            self.dst.write_colormap(1, {k: (*v, 255) for k, v in colormap.items()})
        for i, text in enumerate(descriptions or (), start=1):
            self.dst.set_band_description(i, text)

    def write(self, array: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> None:
        """`array` (count, h, w) or (h, w) at rows x cols."""
        from rasterio.windows import Window

        array = array[None] if array.ndim == 2 else array
        window = Window(cols[0], rows[0], cols[1] - cols[0], rows[1] - rows[0])
        self.dst.write(array.astype(self.dtype, copy=False), window=window)

    def close(self) -> Path:
        """Copy the scratch file to `path` (compressed; COG with overviews) and remove it."""
        from rasterio.shutil import copy

        self.dst.close()
        float_type = np.dtype(self.dtype).kind == "f"
        options: dict[str, Any] = {"compress": "DEFLATE", "predictor": 3 if float_type else 2, "bigtiff": "IF_SAFER"}
        if self.cog:
            options.update(driver="COG", blocksize=BLOCK, overview_resampling=self.resampling, overviews="AUTO")
        else:
            options.update(driver="GTiff", tiled=True, blockxsize=BLOCK, blockysize=BLOCK)
        try:
            return atomic_write(self.path, lambda tmp: copy(self.scratch, tmp, **options))
        finally:
            self.discard()

    def discard(self) -> None:
        if not self.dst.closed:
            self.dst.close()
        self.scratch.unlink(missing_ok=True)

    def __enter__(self) -> RasterWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def class_tags(class_names: Sequence[str] | None) -> dict[str, str]:
    """Tags a class-id raster carries: its class names (JSON list), so the file explains itself."""
    return {"CLASS_NAMES": json.dumps(list(class_names))} if class_names else {}
