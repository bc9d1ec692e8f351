"""Reading the files of `data check`: each sample decoded once, in worker processes, down to a small `Summary`.

Workers (a process pool) decode the files and send back per-image summaries: the mask's value histogram or colours,
size, modes and per-channel histograms, counted by PIL's C histograms (numpy's bincount for unusual modes), so the
scan costs little beyond decoding. Rasters (`scan_rasters`) are read whole, pair by pair, in strips: label values
where the label has data, band sums where the image has data, the nodata share and the grid. `aggregate.Totals` adds
them up.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...imageio import ImageReadError, to_rgb
from ..datasets import SegmentationDataset
from ..labels import raw_mask_array
from ..raster import RasterDataset, RasterError, scan_pair


@dataclass
class Summary:
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
    raster: dict[str, Any] | None = None  # a raster pair: name, crs, resolution, units, size, bands, nodata share
    band_sums: np.ndarray | None = None  # (3, C): sum, sum of squares and count of the pixels with data, per band


_WORKER: dict[str, Any] = {}


def _init_worker(dataset: SegmentationDataset, mode: str) -> None:
    _WORKER["dataset"] = dataset
    _WORKER["mode"] = mode
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def _scan_chunk(indices: Sequence[int]) -> list[Summary]:
    dataset, mode = _WORKER["dataset"], _WORKER["mode"]
    return [summarize(dataset, i, mode) for i in indices]


def summarize(dataset: SegmentationDataset, index: int, mode: str = "full") -> Summary:
    """Decode one sample and reduce it to histograms. PIL's C histograms (`Image.histogram`, `getcolors`) do the
    counting for the usual modes, so the check costs little beyond decoding; other modes go through numpy.

    `mode`: "full"; "decode" (decode both files, nothing else: the benchmark's baseline); "masks" (the mask only)."""
    s = Summary(index, str(index))
    masks_only = mode == "masks"
    try:
        image, mask, s.name, where = dataset.open_raw(index, masks_only)
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
        s.error, s.error_kind = f"{where}: {e}", "value" if isinstance(e, BadValues) else "unreadable"
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


def _mask_summary(mask: Any, colour: bool, s: Summary) -> tuple[str, tuple[int, int]]:
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
            raise BadValues("mask holds negative or fractional values; class ids are integers 0..255")
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


class BadValues(ValueError):
    """A mask that decodes but holds values no class id can be (negative, fractional)."""


def scan(
    dataset: SegmentationDataset,
    *,
    workers: int | None = None,
    progress: bool = True,
    mode: str = "full",
    desc: str = "check",
    chunk: int = 8,
) -> Iterator[Summary]:
    """Per-sample summaries of `dataset` (any order), decoded in `workers` processes (None: one per CPU core;
    0: in this process); `mode` as `summarize`'s."""
    from tqdm import tqdm

    n = len(dataset)
    workers = default_workers() if workers is None else workers
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


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def colour_text(code: int) -> str:
    """r<<16|g<<8|b -> "r,g,b"."""
    return f"{(code >> 16) & 255},{(code >> 8) & 255},{code & 255}"


def scan_rasters(dataset: RasterDataset, *, progress: bool = True, desc: str = "check") -> Iterator[Summary]:
    """One summary per image/label raster pair of `dataset` (every pair listed, the ones it left out too), each read
    whole in strips in this process (GDAL reads in blocks; the pairs are few and large)."""
    from tqdm import tqdm

    for index, (image, label) in enumerate(
        tqdm(dataset.samples, desc=desc, unit="raster", disable=not progress, leave=False)
    ):
        yield raster_summary(index, image, label)


def raster_summary(index: int, image: Any, label: Any) -> Summary:
    """The summary of one raster pair: label values as a mask histogram (values > 255 in `big`), the raster's
    facts in `raster`, its band sums; a pair GDAL cannot read or a label on another grid is an error."""
    s = Summary(index, image.name)
    try:
        scan = scan_pair(image, label)
    except RasterError as e:
        s.error, s.error_kind = str(e), "size" if "another grid" in str(e) else "unreadable"
        return s
    g = scan.grid
    s.image_mode, s.mask_mode, s.size = scan.bands, scan.labels, (g.height, g.width)
    s.hist = np.zeros(256, np.int64)
    for value, n in scan.values.items():
        if 0 <= value <= 255:
            s.hist[value] += n
        else:
            s.big = {**(s.big or {}), value: n}
    nodata = 1 - scan.valid / (g.height * g.width)
    s.raster = {"name": image.name, "crs": g.crs_name, "resolution": [float(v) for v in g.resolution],
                "units": g.units, "size": [g.height, g.width], "bands": scan.bands, "nodata": round(nodata, 6),
                "path": str(image)}  # fmt: skip
    s.band_sums = np.stack([scan.sums, scan.sums_sq, np.full(len(scan.sums), float(scan.valid))])
    return s
