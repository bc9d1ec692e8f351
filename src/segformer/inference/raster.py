"""Prediction on georeferenced rasters of any size (GeoTIFF in, georeferenced masks out), on the inference spine.

A raster is cut into tiles at the model's scale (the window size of its test protocol, `crop`, at the raster's own
resolution; 512 when the protocol has none) every `stride` pixels (the protocol's, else 3/4 of the tile), on the
grid of `run.slide_windows`. Each batch of tiles is what `prepare` takes and `finish` gives back as probabilities
(TTA and AMP as the options say); tiles are blended by a smooth window (`blend_window`: a raised-cosine ramp over
the overlap, so overlapping ramps add up to one and there are no hard seams), and the class is the argmax of the
blend. Only one row of tiles is held at a time, over column bands whose width keeps the accumulator under
`ACCUMULATOR_BYTES`: memory does not grow with the raster (`predict_strips` yields finished row strips). Pixels
that some selected band has no data for (nodata value, mask or alpha band) are filled with the model's mean
(0 after normalising) before the model sees them and stay nodata in every output; tiles without data are skipped.

`predict_raster` writes NAME.tif (class ids, uint8 with nodata 255; Cloud-Optimized with overviews by default, the
input's CRS, transform and tags, the class colours and names), optionally NAME_prob.tif (float32 probabilities, one
band per class) and NAME_confidence.tif (the winning class's probability), and NAME_overlay.png (a quick look).
`predict_rasters` does that for files and folders, split across torchrun ranks as `predict_files` does.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import atomic_write
from ..geoio import (
    RASTER_SUFFIXES,
    RasterError,
    RasterWriter,
    class_tags,
    gdal_env,
    open_raster,
    read_window,
    select_bands,
)
from ..model.config import SegFormerConfig
from ..protocol import InferenceOptions
from ..runtime import rank_world
from .files import PredictSummary, collect_images, plan_outputs
from .finish import average_probabilities
from .segmenter import Segmenter

log = logging.getLogger("segformer")

DEFAULT_TILE = 512  # tile side when the model's protocol has no window
ACCUMULATOR_BYTES = 256 << 20  # blended probabilities of one row of tiles (split into column bands beyond)
NODATA = {"uint8": 255, "uint16": 65535}  # class-id rasters: the nodata value of each type


@dataclass(frozen=True)
class RasterOutput:
    """What `predict_raster` writes besides NAME.tif: `probabilities` (NAME_prob.tif), `confidence`
    (NAME_confidence.tif), `overlay` (NAME_overlay.png, `quicklook` pixels on its long side); `cog`: the GeoTIFFs
    are Cloud-Optimized with overviews (else plain tiled GeoTIFFs)."""

    probabilities: bool = False
    confidence: bool = False
    overlay: bool = True
    cog: bool = True
    quicklook: int = 2048
    alpha: float = 0.5
    legend: bool = True


@dataclass
class Strip:
    """Finished rows `rows` x columns `cols` of a raster: class ids (h, w) (meaningless where not `valid`), the
    blended probabilities (K, h, w) when asked for, and the input pixels (h, w, C) in the raster's type."""

    rows: tuple[int, int]
    cols: tuple[int, int]
    labels: np.ndarray
    valid: np.ndarray
    image: np.ndarray
    probabilities: np.ndarray | None = None


def tile_grid(options: InferenceOptions, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(tile (H, W), stride (H, W)) for a raster: the protocol's window (default 512) and stride (default 3/4 of
    the tile), each no larger than the raster."""
    tile = options.crop or (DEFAULT_TILE, DEFAULT_TILE)
    stride = options.stride or (tile[0] - tile[0] // 4, tile[1] - tile[1] // 4)
    th, tw = min(tile[0], height), min(tile[1], width)
    return (th, tw), (min(stride[0], th), min(stride[1], tw))


def starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis of `size` pixels, as `run.slide_windows` places windows (the last ends at the
    border)."""
    count = max(size - tile + stride - 1, 0) // stride + 1
    return [min(i * stride, size - tile) for i in range(count)]


def blend_window(size: int, overlap: int) -> np.ndarray:
    """Per-pixel weights (size,) of a tile: sin^2 rising over the first `overlap` pixels and falling over the
    last, 1 between. Where two tiles overlap by `overlap`, one's falling ramp and the other's rising ramp add up
    to 1 (sin^2 + cos^2), so the blend has no seam; every weight is > 0."""
    weights = np.ones(size, np.float32)
    if overlap <= 0:
        return weights
    ramp = np.sin(0.5 * np.pi * (np.arange(overlap, dtype=np.float64) + 0.5) / overlap) ** 2
    n = min(overlap, size)
    weights[:n] = np.minimum(weights[:n], ramp[:n])
    weights[size - n :] = np.minimum(weights[size - n :], ramp[:n][::-1])
    return weights


def tile_segmenter(segmenter: Segmenter) -> Segmenter:
    """The segmenter as tiles need it: each tile whole at its own size (the raster's resolution), TTA and AMP
    as `segmenter.options` say."""
    tiles = copy.copy(segmenter)
    tiles.options = segmenter.options.replace(mode="whole", scale=None, crop=None, stride=None, size_divisor=None)
    return tiles


def num_classes(segmenter: Segmenter) -> int:
    config = getattr(segmenter.model, "config", None)
    if not isinstance(config, SegFormerConfig):
        raise ValueError("raster prediction needs a model (or forward function) with a config naming num_classes")
    return int(config.num_classes)


def column_bands(width: int, bytes_per_column: int, budget: int = ACCUMULATOR_BYTES) -> list[tuple[int, int]]:
    """(col0, col1) bands of about equal width whose accumulators fit `budget` bytes."""
    n = max(1, math.ceil(width * bytes_per_column / budget))
    step = math.ceil(width / n)
    return [(c0, min(c0 + step, width)) for c0 in range(0, width, step)]


def predict_strips(
    segmenter: Segmenter,
    src: Any,
    bands: Sequence[int],
    probabilities: bool = False,
    budget: int | None = None,
) -> Iterator[Strip]:
    """Finished strips of the open raster `src` (bands `bands`, 1-based), column band by column band, top to
    bottom; every pixel is in exactly one strip. Column bands (as many as keep one row of tiles under `budget`
    bytes, default `ACCUMULATOR_BYTES`) never change the result: each pixel blends the same tiles of one global
    grid (tiles across a band border run once per band)."""
    k = num_classes(segmenter)
    tiles = tile_segmenter(segmenter)
    (th, tw), stride = tile_grid(segmenter.options, src.height, src.width)
    per_column = 4 * th * (k + 1 + 2 * len(bands))  # accumulator, weights and the float input strip
    for cols in column_bands(src.width, per_column, budget or ACCUMULATOR_BYTES):
        yield from _band(tiles, src, bands, k, (th, tw), stride, cols, probabilities)


def _band(
    tiles: Segmenter,
    src: Any,
    bands: Sequence[int],
    k: int,
    tile: tuple[int, int],
    stride: tuple[int, int],
    cols: tuple[int, int],
    probabilities: bool,
) -> Iterator[Strip]:
    """The strips of one column band: each row of tiles is read once, run, blended, and the rows that no later
    tile row touches are finished."""
    (th, tw), (c0, c1) = tile, cols
    xs = [x for x in starts(src.width, tw, stride[1]) if x < c1 and x + tw > c0]
    read_cols = (xs[0], xs[-1] + tw)
    wy, wx = blend_window(th, th - stride[0]), blend_window(tw, tw - stride[1])
    acc = np.zeros((k, th, c1 - c0), np.float32)  # sum of weight x probability, rows from the current tile row
    weight = np.zeros((th, c1 - c0), np.float32)
    ys = starts(src.height, th, stride[0])
    for i, y in enumerate(ys):
        pixels, valid = read_window(src, bands, (y, y + th), read_cols)
        x = _filled(pixels, valid, tiles.mean)
        todo = [x0 for x0 in xs if valid[:, x0 - read_cols[0] : x0 - read_cols[0] + tw].any()]
        for start in range(0, len(todo), tiles.options.batch_size):
            batch = todo[start : start + tiles.options.batch_size]
            probs = _probabilities(tiles, [x[:, x0 - read_cols[0] : x0 - read_cols[0] + tw] for x0 in batch])
            for x0, p in zip(batch, probs, strict=True):
                a, b = max(x0, c0), min(x0 + tw, c1)  # the tile's columns inside this band
                w = wy[:, None] * wx[None, a - x0 : b - x0]  # (th, b - a)
                acc[:, :, a - c0 : b - c0] += p[:, :, a - x0 : b - x0] * w
                weight[:, a - c0 : b - c0] += w
        n = (ys[i + 1] if i + 1 < len(ys) else src.height) - y  # rows no later tile row touches
        inside = slice(c0 - read_cols[0], c1 - read_cols[0])
        yield _finished(acc[:, :n], weight[:n], valid[:n, inside], pixels[:n, inside], (y, y + n), cols, probabilities)
        acc[:, : th - n] = acc[:, n:].copy()
        acc[:, th - n :] = 0
        weight[: th - n] = weight[n:].copy()
        weight[th - n :] = 0


def _filled(pixels: np.ndarray, valid: np.ndarray, mean: Sequence[float]) -> np.ndarray:
    """float32 (h, w, C) pixels with the pixels without data set to the model's mean (0 once normalised)."""
    x = pixels.astype(np.float32)
    if not valid.all():
        x[~valid] = np.asarray(mean, np.float32)
    return x


def _probabilities(tiles: Segmenter, batch: list[np.ndarray]) -> np.ndarray:
    """Softmax probabilities (B, K, th, tw) of same-sized tiles (h, w, C): prepare -> run -> finish's averaged
    probabilities (what `finish(..., probabilities=True)` returns, without its argmax: the blend takes it)."""
    prepared = tiles.prepare(batch)
    with torch.inference_mode():
        probs = average_probabilities(tiles.run(prepared), prepared.image_size, prepared.options.passes)
    return probs.float().cpu().numpy()


def _finished(
    acc: np.ndarray,
    weight: np.ndarray,
    valid: np.ndarray,
    image: np.ndarray,
    rows: tuple[int, int],
    cols: tuple[int, int],
    probabilities: bool,
) -> Strip:
    """The strip of finished rows: argmax of the blend (weights are positive, so the sum's argmax), the
    probabilities when asked for; pixels no tile covered (tiles without data) are not valid."""
    valid = valid & (weight > 0)
    probs = acc / np.where(weight > 0, weight, 1.0)[None] if probabilities else None
    return Strip(rows, cols, acc.argmax(axis=0), valid, image, probs)


# ---------------------------------------------------------------------------------------------------------------
# Writing one raster
# ---------------------------------------------------------------------------------------------------------------
class Quicklook:
    """Every `step`-th pixel of the image and the labels, gathered from the strips (NAME_overlay.png)."""

    def __init__(self, height: int, width: int, channels: int, dtype: Any, side: int) -> None:
        self.step = max(1, math.ceil(max(height, width) / side))
        shape = (math.ceil(height / self.step), math.ceil(width / self.step))
        self.image = np.zeros((*shape, channels), dtype)
        self.labels = np.zeros(shape, np.int32)
        self.valid = np.zeros(shape, bool)

    def add(self, strip: Strip) -> None:
        s = self.step
        (r0, r1), (c0, c1) = strip.rows, strip.cols
        fr, fc = (-r0) % s, (-c0) % s  # first sampled row / column inside the strip
        if fr >= r1 - r0 or fc >= c1 - c0:
            return
        at = (slice((r0 + fr) // s, (r1 - 1) // s + 1), slice((c0 + fc) // s, (c1 - 1) // s + 1))
        self.image[at] = strip.image[fr::s, fc::s]
        self.labels[at] = strip.labels[fr::s, fc::s]
        self.valid[at] = strip.valid[fr::s, fc::s]

    def picture(self, palette: np.ndarray, names: Sequence[str] | None, alpha: float, legend: bool) -> np.ndarray:
        """The overlay: the first three bands (one: grey) stretched from their 2nd to 98th percentile over the
        pixels with data, class colours over those pixels, the rest black."""
        from ..visualize import overlay

        rgb = np.zeros((*self.valid.shape, 3), np.uint8)  # no data: black (labels 255 keep it), under the legend
        for out, band in zip(range(3), (0, 1, 2) if self.image.shape[2] >= 3 else (0, 0, 0), strict=True):
            rgb[..., out] = _stretch(self.image[..., band], self.valid)
        labels = np.where(self.valid, self.labels, 255)
        return overlay(rgb, labels, palette, names, alpha, legend and bool(self.valid.any()))


def _stretch(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint8 (h, w) of one band: its 2nd..98th percentile over the pixels with data to 0..255 (0 elsewhere), in
    float32 one band at a time (a 2048x2048 quick look costs tens of MB, not hundreds)."""
    values = band[valid]
    if not values.size:
        return np.zeros(band.shape, np.uint8)
    low, high = np.percentile(values[:: max(1, values.size // 1_000_000)], (2, 98))
    scaled = (band.astype(np.float32) - np.float32(low)) * np.float32(255 / (high - low) if high > low else 1)
    return np.where(valid, scaled.clip(0, 255) + 0.5, 0).astype(np.uint8)


def predict_raster(
    segmenter: Segmenter,
    path: str | Path,
    stem: str | Path,
    *,
    bands: Sequence[int] | None = None,
    output: RasterOutput | None = None,
    palette: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> list[Path]:
    """Predict the raster `path` and write STEM.tif (+ STEM_prob.tif, STEM_confidence.tif, STEM_overlay.png as
    `output` says), each atomically; the paths written. `bands`: 1-based input bands in the model's channel order
    (default: all, when the raster has as many as the model takes). A raster with no data at all, bands out of
    range and files GDAL cannot read raise RasterError (one line naming the file)."""
    from ..imageio import default_palette

    output = output or RasterOutput()
    stem = Path(stem)
    k = num_classes(segmenter)
    palette = default_palette(k) if palette is None else np.asarray(palette, np.uint8)
    with gdal_env(), open_raster(path) as src:
        chosen = select_bands(src, bands, segmenter.channels, path)
        _note_statistics(segmenter, src, path)
        stem.parent.mkdir(parents=True, exist_ok=True)
        with ExitStack() as stack:
            writers = _writers(stack, src, stem, k, output, palette, class_names)
            quick = Quicklook(src.height, src.width, len(chosen), src.dtypes[chosen[0] - 1], output.quicklook)
            valid_pixels = 0
            for strip in predict_strips(segmenter, src, chosen, output.probabilities or output.confidence):
                valid_pixels += int(strip.valid.sum())
                _write_strip(writers, strip)
                if output.overlay:
                    quick.add(strip)
            if valid_pixels == 0:
                raise RasterError(f"{path}: every pixel is nodata ({_nodata_text(src, chosen)}); nothing to predict")
            written = [writer.close() for writer in writers.values()]
    if output.overlay:
        picture = quick.picture(palette, class_names, output.alpha, output.legend)
        written.append(atomic_write(_named(stem, "_overlay.png"), lambda tmp: _save_png(tmp, picture)))
    return written


def _writers(
    stack: ExitStack,
    src: Any,
    stem: Path,
    k: int,
    output: RasterOutput,
    palette: np.ndarray,
    names: Sequence[str] | None,
) -> dict[str, RasterWriter]:
    dtype = "uint8" if k <= 255 else "uint16"
    colours = {i: tuple(int(v) for v in palette[i]) for i in range(min(k, len(palette)))} if dtype == "uint8" else None
    writers = {
        "labels": RasterWriter(
            _named(stem, ".tif"),
            src,
            count=1,
            dtype=dtype,
            nodata=NODATA[dtype],
            cog=output.cog,
            tags=class_tags(names),
            colormap=colours,
            descriptions=["class"],
        )  # fmt: skip
    }
    band_names = [str(n) for n in names] if names else [f"class_{i}" for i in range(k)]
    if output.probabilities:
        writers["probabilities"] = RasterWriter(
            _named(stem, "_prob.tif"), src, count=k, dtype="float32", nodata=float("nan"), cog=output.cog,
            resampling="average", tags=class_tags(names), descriptions=band_names,
        )  # fmt: skip
    if output.confidence:
        writers["confidence"] = RasterWriter(
            _named(stem, "_confidence.tif"), src, count=1, dtype="float32", nodata=float("nan"), cog=output.cog,
            resampling="average", descriptions=["confidence"],
        )  # fmt: skip
    for writer in writers.values():
        stack.enter_context(writer)
    return writers


def _write_strip(writers: dict[str, RasterWriter], strip: Strip) -> None:
    labels = writers["labels"]
    nodata = NODATA[labels.dtype]
    labels.write(np.where(strip.valid, strip.labels, nodata), strip.rows, strip.cols)
    if strip.probabilities is None:
        return
    if "probabilities" in writers:
        probs = np.where(strip.valid[None], strip.probabilities, np.float32(np.nan))
        writers["probabilities"].write(probs, strip.rows, strip.cols)
    if "confidence" in writers:
        confidence = np.where(strip.valid, strip.probabilities.max(axis=0), np.float32(np.nan))
        writers["confidence"].write(confidence, strip.rows, strip.cols)


def _nodata_text(src: Any, bands: Sequence[int]) -> str:
    values = {src.nodatavals[b - 1] for b in bands}
    if values == {None}:
        return "its mask or alpha band marks every pixel"
    return f"nodata value {', '.join(f'{v:g}' for v in sorted(v for v in values if v is not None))}"


def _note_statistics(segmenter: Segmenter, src: Any, path: str | Path) -> None:
    """Warn when non-8-bit bands meet a model without statistics of its own (ImageNet's 0..255 mean/std)."""
    config = getattr(segmenter.model, "config", None)
    if (not isinstance(config, SegFormerConfig) or config.mean is None) and any(d != "uint8" for d in src.dtypes):
        log.warning(
            "%s: %s bands, but the model has no channel statistics of its own (ImageNet's, for 0..255 pixels); "
            "a model trained on such rasters (segformer train --dataset raster) stores them",
            path,
            src.dtypes[0],
        )


def _named(stem: Path, ending: str) -> Path:
    return stem.parent / f"{stem.name}{ending}"


def _save_png(path: str, picture: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(picture).save(path, format="PNG")


# ---------------------------------------------------------------------------------------------------------------
# Files and folders
# ---------------------------------------------------------------------------------------------------------------
def collect_rasters(
    inputs: Sequence[str | Path], out: str | Path, wanted: Callable[[Path], bool]
) -> list[tuple[Path, Path]]:
    """(raster, output stem relative to `out`) for the files and folders in `inputs` that `wanted` takes (e.g.
    `geoio.is_georeferenced`), relative paths kept; missing inputs are `predict_files`' to report."""
    files, _ = collect_images(inputs, exclude=out, suffixes=RASTER_SUFFIXES)
    return [(path, rel) for path, rel in files if wanted(path)]


def predict_rasters(
    segmenter: Segmenter,
    files: Sequence[tuple[Path, Path]],
    out: str | Path,
    *,
    bands: Sequence[int] | None = None,
    output: RasterOutput | None = None,
    palette: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    report: Callable[[str, str], None] | None = None,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> PredictSummary:
    """`predict_raster` for each of `files` (from `collect_rasters`) into `out`, relative paths kept (NAME-2 for a
    second NAME, never over an input); this process takes files rank, rank + world, ... (`shard`, default
    torch.distributed's). A raster that fails is reported through `report(name, reason)` and skipped."""
    from tqdm import tqdm

    out = Path(out)
    rank, world = shard or rank_world()
    failed: list[tuple[str, str]] = []

    def fail(name: str, reason: str) -> None:
        failed.append((name, reason))
        (report or (lambda n, r: log.warning("%s: %s", n, r)))(name, reason)

    planning: list[tuple[str, str]] = []
    plan = plan_outputs(files, out, lambda n, r: planning.append((n, r)), endings=(".tif", "_overlay.png"))
    for name, reason in planning if rank == 0 else ():
        fail(name, reason)
    written: list[Path] = []
    for path, stem in tqdm(plan[rank::world], desc="rasters", unit="raster", disable=not progress):
        try:
            paths = predict_raster(
                segmenter, path, stem, bands=bands, output=output, palette=palette, class_names=class_names
            )
        except (RasterError, OSError, ValueError) as e:
            fail(str(path), str(e).removeprefix(f"{path}: "))
            continue
        written.append(paths[0])
    return PredictSummary(written, failed)
