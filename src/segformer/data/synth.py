"""A built-in, procedural segmentation dataset, so the demo and tests need no download.

Every class differs from the others by shape AND texture, while colours are drawn from one distribution for all
classes: a model has to learn texture and shape, not colour. Scenes have random scale, rotation, occlusion
(objects drawn over each other and over the surfaces), a lighting gradient and sensor noise. Generation is seeded
and deterministic (the same seed, size and index give the same pixels) and vectorised numpy only.

The output is the custom-folder layout `segformer.data.build_dataset("folder", ...)` reads:
`ROOT/classes.txt`, `ROOT/images/{train,val}/NAME.png`, `ROOT/masks/{train,val}/NAME.png` (palette PNG of ids).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..imageio import write_label_png

log = logging.getLogger("segformer")

CLASS_NAMES = (
    "background",  # smooth, low-frequency two-tone blotches
    "striped disk",  # ellipse, straight stripes
    "dotted square",  # rotated rectangle, grid of dots
    "checkered triangle",  # triangle, checkerboard
    "hatched ring",  # annulus, crosshatch lines
    "wavy ground",  # half-plane surface with a wavy edge, wavy lines
    "grass",  # half-plane surface with a ragged edge, fine vertical noise
)
PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [145, 30, 180], [70, 240, 240]],
    dtype=np.uint8,
)
MANIFEST = "synth.json"
BACKGROUND, DISK, SQUARE, TRIANGLE, RING, WAVY, GRASS = range(len(CLASS_NAMES))


@dataclass(frozen=True)
class SynthSpec:
    """What a generated dataset was built from; stored as ROOT/synth.json so re-runs can reuse or refuse it."""

    train: int = 400
    val: int = 100
    size: int = 256
    seed: int = 0
    version: int = 2  # bump when the generator changes, so stale data is never silently reused


# ---------------------------------------------------------------------------------------------------- textures
# Each texture maps rotated pixel coordinates (u, v) (float (H, W)) to a blend weight t in [0, 1] between two
# random colours. Periods are in pixels and scale with the image size.


def _rotated(yy: np.ndarray, xx: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    return xx * c + yy * s, -xx * s + yy * c


def _stripes(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)


def _dots(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    du = np.mod(u, period) - period / 2
    dv = np.mod(v, period) - period / 2
    return (du * du + dv * dv < (0.32 * period) ** 2).astype(np.float32)


def _checker(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return np.mod(np.floor(u / (period / 2)) + np.floor(v / (period / 2)), 2).astype(np.float32)


def _hatch(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    width = 0.28 * period
    return ((np.mod(u, period) < width) | (np.mod(v, period) < width)).astype(np.float32)


def _wavy(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    amp, wavelength = period * rng.uniform(0.4, 0.7), period * rng.uniform(3.0, 5.0)
    return 0.5 + 0.5 * np.sin(2 * np.pi * (v + amp * np.sin(2 * np.pi * u / wavelength)) / period)


def _grass(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    # White noise smeared along one image axis: short random blades, no regular period.
    h, w = u.shape
    blade = max(2, int(round(period * 0.6)))
    noise = rng.random((h + blade, w), dtype=np.float32)
    csum = np.cumsum(noise, axis=0)
    smeared = (csum[blade:] - csum[:-blade]) / blade  # (H, W) vertical box filter
    return np.clip((smeared - 0.5) * 4.0 + 0.5, 0.0, 1.0)


def _smooth_noise(shape: tuple[int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid bilinearly upsampled (vectorised)."""
    h, w = shape
    grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
    y = np.linspace(0, cells, h, dtype=np.float32)
    x = np.linspace(0, cells, w, dtype=np.float32)
    y0 = np.minimum(y.astype(int), cells - 1)
    x0 = np.minimum(x.astype(int), cells - 1)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    a, b = grid[y0][:, x0], grid[y0][:, x0 + 1]
    c, d = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


TEXTURES: dict[int, Callable[..., np.ndarray]] = {
    DISK: _stripes,
    SQUARE: _dots,
    TRIANGLE: _checker,
    RING: _hatch,
    WAVY: _wavy,
    GRASS: _grass,
}


# ---------------------------------------------------------------------------------------------------- shapes
# Each shape returns a boolean (H, W) region.


def _disk(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, angle: float, rng) -> np.ndarray:
    u, v = _rotated(yy - cy, xx - cx, angle)
    aspect = rng.uniform(0.7, 1.0)
    return (u / r) ** 2 + (v / (r * aspect)) ** 2 <= 1.0


def _square(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, angle: float, rng) -> np.ndarray:
    u, v = _rotated(yy - cy, xx - cx, angle)
    half = r * 0.85
    return (np.abs(u) <= half) & (np.abs(v) <= half * rng.uniform(0.75, 1.0))


def _triangle(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, angle: float, rng) -> np.ndarray:
    inside = np.ones(yy.shape, bool)
    for k in range(3):  # intersection of three half-planes, normals 120 degrees apart
        a = angle + 2 * np.pi * k / 3
        inside &= (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a) <= 0.7 * r
    return inside


def _ring(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, angle: float, rng) -> np.ndarray:
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    return (d2 <= r * r) & (d2 >= (r * rng.uniform(0.35, 0.45)) ** 2)


SHAPES = {DISK: _disk, SQUARE: _square, TRIANGLE: _triangle, RING: _ring}


def _surface(yy: np.ndarray, xx: np.ndarray, size: int, cls: int, rng: np.random.Generator) -> np.ndarray:
    """A half-plane entering from a random side; its edge is wavy (ground) or ragged (grass)."""
    angle = rng.uniform(0, 2 * np.pi)
    u, v = _rotated(yy - size / 2, xx - size / 2, angle)
    offset = rng.uniform(0.05, 0.3) * size
    if cls == WAVY:
        edge = 0.05 * size * np.sin(2 * np.pi * v / (rng.uniform(0.3, 0.6) * size) + rng.uniform(0, 2 * np.pi))
    else:
        edge = 0.03 * size * (_smooth_noise(yy.shape, 12, rng) - 0.5) * 2
    return u > offset + edge


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random RGB colours far enough apart that the texture is visible."""
    while True:
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        if np.abs(a - b).sum() > 150:
            return a.astype(np.float32), b.astype(np.float32)


def _paint(image: np.ndarray, region: np.ndarray, t: np.ndarray, rng: np.random.Generator) -> None:
    a, b = _colours(rng)
    image[region] = a * (1 - t[region, None]) + b * t[region, None]


def render_scene(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (RGB uint8 (size, size, 3), class ids uint8 (size, size)) with ids indexing CLASS_NAMES."""
    if size < 32:
        raise ValueError(f"synthetic image size {size} is too small; use at least 32")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period_scale = size / 128.0
    image = np.empty((size, size, 3), np.float32)
    mask = np.zeros((size, size), np.uint8)

    _paint(image, np.ones_like(mask, bool), _smooth_noise((size, size), int(rng.integers(2, 5)), rng), rng)
    surfaces = [c for c in (WAVY, GRASS) if rng.random() < 0.55]
    for cls in surfaces:
        region = _surface(yy, xx, size, cls, rng)
        u, v = _rotated(yy, xx, rng.uniform(0, np.pi))
        _paint(image, region, TEXTURES[cls](u, v, rng.uniform(8, 11) * period_scale, rng), rng)
        mask[region] = cls
    for _ in range(int(rng.integers(2, 5))):  # later objects occlude earlier ones
        cls = int(rng.choice(list(SHAPES)))
        r = rng.uniform(0.13, 0.26) * size
        cy, cx = rng.uniform(0, size, 2)
        region = SHAPES[cls](yy, xx, cy, cx, r, rng.uniform(0, 2 * np.pi), rng)
        u, v = _rotated(yy, xx, rng.uniform(0, np.pi))
        _paint(image, region, TEXTURES[cls](u, v, rng.uniform(7, 10) * period_scale, rng), rng)
        mask[region] = cls

    # Lighting: a linear gradient in a random direction, then sensor noise.
    gu, _ = _rotated(yy - size / 2, xx - size / 2, rng.uniform(0, 2 * np.pi))
    gain = rng.uniform(0.85, 1.1) + rng.uniform(0.1, 0.4) * gu / size
    image = image * gain[:, :, None] + rng.normal(0.0, rng.uniform(2.0, 10.0), image.shape).astype(np.float32)
    return np.clip(image, 0, 255).round().astype(np.uint8), mask


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, {"train": 0, "val": 1}[split], index])


def read_spec(root: str | os.PathLike) -> SynthSpec | None:
    """The spec a folder was generated with, or None if it is not (a complete) synthetic dataset."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        return SynthSpec(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None


def write_dataset(
    out: str | os.PathLike,
    train: int = 400,
    val: int = 100,
    size: int = 256,
    seed: int = 0,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Generate the dataset into `out` (folder layout) and return its path.

    If `out` already holds a synthetic dataset with the same spec it is reused as is. A folder holding anything
    else is never touched unless it is a synthetic dataset and `overwrite` is set. The data is written to a
    temporary folder next to `out` and renamed at the end, so an interrupted run leaves no half dataset.
    """
    if train < 1 or val < 1:
        raise ValueError(f"--train {train} and --val {val} must both be >= 1")
    if size < 32:
        raise ValueError(f"--size {size} is too small; use at least 32 (the model needs 29 px)")
    spec = SynthSpec(train=train, val=val, size=size, seed=seed)
    out = Path(out)
    existing = read_spec(out)
    if reuse_existing(out, existing, spec, overwrite, _describe(existing) if existing else ""):
        log.info("synthetic data already in %s (%s); reusing it", out, _describe(spec))
        return out

    def fill(tmp: Path) -> None:
        start = time.perf_counter()
        (tmp / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
        for split, count in (("train", train), ("val", val)):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "masks" / split).mkdir(parents=True)
            for i in range(count):
                image, mask = render_scene(_scene_rng(seed, split, i), size)
                name = f"{split}_{i:05d}.png"
                _save_rgb(tmp / "images" / split / name, image)
                write_label_png(tmp / "masks" / split / name, mask, PALETTE)
            if progress:
                log.info("synth: %d %s images in %.1fs", count, split, time.perf_counter() - start)

    return replace_folder(out, fill, asdict(spec))


def reuse_existing(out: Path, existing: object, spec: object, overwrite: bool, described: str) -> bool:
    """Whether `out` already holds a synthetic dataset of `spec` (`existing`: the spec read from it, None if none) to
    reuse. Raises, leaving it untouched, when `out` holds anything else, or another spec without `overwrite`."""
    if not out.exists():
        return False
    if existing == spec:
        return True
    if existing is None:
        if not out.is_dir() or any(out.iterdir()):
            raise ValueError(f"{out} exists and is not a synthetic dataset; choose another output folder")
        return False  # an empty folder
    if not overwrite:
        raise ValueError(
            f"{out} holds synthetic data made with {described}; pass overwrite (--overwrite) "
            "to regenerate it or choose another folder"
        )
    return False


def replace_folder(out: Path, fill: Callable[[Path], None], manifest: dict[str, Any]) -> Path:
    """`fill(tmp)` writes a temporary folder beside `out`, `manifest` is written last (a folder without one is not a
    complete dataset), then it replaces `out`: an interrupted run leaves no half dataset."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _save_rgb(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, compress_level=1)


def _describe(spec: SynthSpec) -> str:
    return f"train={spec.train} val={spec.val} size={spec.size} seed={spec.seed} version={spec.version}"
