"""Synthetic georeferenced rasters (`segformer synth --raster`), so the remote-sensing commands run without data.

Each scene is the built-in synthetic scene (`synth.render_scene`: 7 classes by shape and texture) as a 4-band uint16
GeoTIFF in EPSG:32633 with 10 m pixels: red, green, blue (the RGB values x 40 + 100) and a near-infrared band whose
level depends on the class (so the 4th band carries information RGB does not). A corner of every scene has no data
(nodata 0 in the image, 255 in the labels), as the edge of a satellite scene's footprint. Labels are uint8 class-id
GeoTIFFs on the same grid.

`write_raster_dataset` writes the `--dataset raster` layout (ROOT/images/SPLIT/*.tif, ROOT/masks/SPLIT/*.tif,
ROOT/classes.txt); `write_raster_scene` writes one large raster window by window (blocks of up to 16 distinct
rendered tiles, flipped and transposed at random), for trying and benchmarking prediction on big scenes.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..geoio import require_rasterio
from .synth import CLASS_NAMES, MANIFEST, PALETTE, render_scene, replace_folder, reuse_existing

ORIGIN = (500000.0, 4200000.0)  # EPSG:32633 (UTM 33N), upper-left corner
PIXEL = 10.0  # metres
NIR = np.array([3000, 1500, 2500, 1200, 4000, 2000, 9000], np.float32)  # per class: grass reflects most
BLOCK = 1024  # side of the rendered tiles of a large scene
DISTINCT = 16  # distinct rendered tiles a large scene is made of


def render_bands(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (uint16 bands (size, size, 4), uint8 class ids (size, size)), no nodata yet."""
    rgb, mask = render_scene(rng, size)
    nir = NIR[mask] + rng.normal(0, 300, mask.shape).astype(np.float32)
    bands = np.dstack([rgb.astype(np.float32) * 40 + 100, np.clip(nir, 100, 60000)])
    return bands.round().astype(np.uint16), mask


def _footprint(height: int, width: int, top: int = 0, left: int = 0, full: tuple[int, int] | None = None) -> np.ndarray:
    """True where a scene of size `full` (default: this window) has data: all but the upper-left corner triangle
    (rows + columns < a quarter of the smaller side), for the window at (top, left) of size height x width."""
    fh, fw = full or (height, width)
    yy, xx = np.mgrid[top : top + height, left : left + width]
    return yy + xx >= min(fh, fw) // 4


def _profile(height: int, width: int, count: int, dtype: str, nodata: int) -> dict[str, Any]:
    from affine import Affine

    return {
        "driver": "GTiff", "width": width, "height": height, "count": count, "dtype": dtype, "nodata": nodata,
        "crs": "EPSG:32633", "transform": Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1]), "tiled": True,
        "blockxsize": 512, "blockysize": 512, "compress": "deflate", "predictor": 2, "BIGTIFF": "IF_SAFER",
    }  # fmt: skip


def write_pair(image: Path, label: Path, rng: np.random.Generator, size: int) -> None:
    """One synthetic scene as an image raster and its label raster."""
    rasterio = require_rasterio()
    bands, mask = render_bands(rng, size)
    keep = _footprint(size, size)
    bands[~keep], mask = 0, np.where(keep, mask, 255).astype(np.uint8)
    with rasterio.open(image, "w", **_profile(size, size, 4, "uint16", 0)) as dst:
        dst.write(np.moveaxis(bands, -1, 0))
        dst.update_tags(SENSOR="segformer synth")
        for i, name in enumerate(("red", "green", "blue", "nir"), start=1):
            dst.set_band_description(i, name)
    with rasterio.open(label, "w", **_profile(size, size, 1, "uint8", 255)) as dst:
        dst.write_colormap(1, {i: (*map(int, c), 255) for i, c in enumerate(PALETTE)})  # before the pixels
        dst.write(mask[None])


def write_raster_dataset(
    out: str | os.PathLike, train: int = 4, val: int = 1, size: int = 512, seed: int = 0, *, overwrite: bool = False
) -> Path:
    """The `--dataset raster` layout with `train` + `val` scenes of size x size pixels in `out` (reused when it
    holds the same spec; another synthetic spec needs `overwrite`; anything else is never touched). Written to a
    temporary folder and renamed, so an interrupted run leaves nothing half-written."""
    if train < 1 or val < 1 or size < 64:
        raise ValueError(f"--train {train} and --val {val} must be >= 1 and --size {size} >= 64")
    spec = {"kind": "raster", "train": train, "val": val, "size": size, "seed": seed, "version": 1}
    out = Path(out)
    existing = _read_manifest(out)
    if reuse_existing(out, existing, spec, overwrite, json.dumps(existing)):
        return out

    def fill(tmp: Path) -> None:
        (tmp / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
        for split, count in (("train", train), ("val", val)):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "masks" / split).mkdir(parents=True)
            for i in range(count):
                rng = np.random.default_rng([seed, {"train": 0, "val": 1}[split], i])
                name = f"scene_{i:03d}.tif"
                write_pair(tmp / "images" / split / name, tmp / "masks" / split / name, rng, size)

    return replace_folder(out, fill, spec)


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def write_raster_scene(
    path: str | os.PathLike, height: int, width: int, seed: int = 0, label: str | os.PathLike | None = None
) -> Path:
    """One large 4-band scene (and, with `label`, its label raster) written block by block: memory stays that of
    a few blocks whatever the size. Blocks are drawn from `DISTINCT` rendered tiles, flipped and transposed. Both
    files are written under temporary names and renamed at the end."""
    path = Path(path)
    targets = [path] + ([Path(label)] if label else [])
    temps = [t.parent / f".{t.name}.tmp" for t in targets]
    try:
        _write_scene(temps[0], temps[1] if label else None, height, width, seed)
        for tmp, target in zip(temps, targets, strict=True):
            os.replace(tmp, target)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return path


def _write_scene(path: Path, label: Path | None, height: int, width: int, seed: int) -> None:
    from rasterio.windows import Window

    rasterio = require_rasterio()
    rng = np.random.default_rng(seed)
    tiles = [render_bands(np.random.default_rng([seed, i]), BLOCK) for i in range(DISTINCT)]
    labels = rasterio.open(label, "w", **_profile(height, width, 1, "uint8", 255)) if label else None
    with rasterio.open(path, "w", **_profile(height, width, 4, "uint16", 0)) as dst, labels or contextlib.nullcontext():
        dst.update_tags(SENSOR="segformer synth")
        for top in range(0, height, BLOCK):
            for left in range(0, width, BLOCK):
                h, w = min(BLOCK, height - top), min(BLOCK, width - left)
                bands, mask = _variant(tiles[int(rng.integers(DISTINCT))], rng)
                keep = _footprint(h, w, top, left, (height, width))
                window = Window(left, top, w, h)
                dst.write(np.moveaxis(np.where(keep[..., None], bands[:h, :w], 0), -1, 0), window=window)
                if labels is not None:
                    labels.write(np.where(keep, mask[:h, :w], 255)[None].astype(np.uint8), window=window)


def _variant(tile: tuple[np.ndarray, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    bands, mask = tile
    if rng.random() < 0.5:
        bands, mask = bands[::-1], mask[::-1]
    if rng.random() < 0.5:
        bands, mask = bands[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        bands, mask = bands.transpose(1, 0, 2), mask.T
    return bands, mask
