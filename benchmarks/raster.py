"""Peak memory and megapixels/s of GeoTIFF prediction (`inference.raster.predict_raster`: windowed reads, blended
tiles, windowed writes, a Cloud-Optimized GeoTIFF with overviews) against the same tiles run one by one through
`Segmenter` with in-memory stitching (the whole raster read, full-size probability sums, labels written at the end).

The raster is a generated 4-band uint16 scene (`segformer synth --raster --scene`, EPSG:32633, nodata corner) of each
size asked for; the model a B0 with 4 input channels and 7 classes (random weights: speed and memory do not depend on
them), tiles of 512 every 384 pixels. Each run is a fresh process (peak RSS is that process's ru_maxrss); ours and
the baseline run one after the other at each size, in one invocation, and the class rasters are compared.

    python benchmarks/raster.py --sizes 20000                  # the issue's size (B0 on 2 CPU cores: hours)
    python benchmarks/raster.py --sizes 2048 4096 8192 --baseline-sizes 2048 4096
    python benchmarks/raster.py --sizes 1024x20000 --baseline-sizes   # a 20000-wide strip: 20000^2's peak memory

Peak memory depends on the raster's width (one row of tiles is held, up to `ACCUMULATOR_BYTES` of blended
probabilities, then column bands), not on its height: a 1024x20000 raster has the peak of a 20000x20000 one.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MEAN, STD = (4500.0, 4400.0, 4600.0, 3500.0), (2600.0, 2700.0, 2200.0, 2300.0)


def model() -> torch.nn.Module:
    from segformer import create_model

    torch.manual_seed(0)
    return create_model("b0", num_classes=7, in_channels=4, mean=MEAN, std=STD).eval()


def ours(path: str, out: str) -> None:
    from segformer.inference import Segmenter
    from segformer.inference.raster import RasterOutput, predict_raster

    predict_raster(Segmenter(model()), path, out, output=RasterOutput(overlay=True))


def baseline(path: str, out: str) -> None:
    """The same tile grid and blending, one tile at a time through `Segmenter`, everything held in memory."""
    import rasterio

    from segformer.inference import Segmenter
    from segformer.inference.raster import blend_window, starts, tile_grid, tile_segmenter

    segmenter = tile_segmenter(Segmenter(model()))
    with rasterio.open(path) as src:
        image = np.moveaxis(src.read(), 0, -1)  # (H, W, 4): the whole raster
        valid = src.dataset_mask() > 0
        profile = src.profile
    h, w = valid.shape
    (th, tw), (sh, sw) = tile_grid(Segmenter(model()).options, h, w)
    window = blend_window(th, th - sh)[:, None] * blend_window(tw, tw - sw)[None, :]
    total = np.zeros((7, h, w), np.float32)
    for y in starts(h, th, sh):
        for x in starts(w, tw, sw):
            tile = image[y : y + th, x : x + tw].astype(np.float32)
            tile[~valid[y : y + th, x : x + tw]] = MEAN
            probs = segmenter.segment(segmenter.prepare([tile]), probabilities=True).probabilities
            total[:, y : y + th, x : x + tw] += probs[0].numpy() * window
    labels = np.where(valid, total.argmax(0), 255).astype(np.uint8)
    profile.update(count=1, dtype="uint8", nodata=255, compress="deflate", tiled=True)
    with rasterio.open(f"{out}.tif", "w", **profile) as dst:
        dst.write(labels[None])


def worker(kind: str, path: str, out: str, threads: int) -> None:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    (ours if kind == "ours" else baseline)(path, out)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure(kind: str, path: Path, out: Path, threads: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", kind, str(path), str(out), "--threads", str(threads)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"{kind} failed on {path}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def agreement(a: Path, b: Path) -> float:
    import rasterio

    with rasterio.open(a) as x, rasterio.open(b) as y:
        return float((x.read(1) == y.read(1)).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["20000"], help="raster sizes, SIDE or HxW: ours")
    p.add_argument("--baseline-sizes", nargs="*", default=None, help="those the baseline runs too (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default=None, help="keep the generated rasters here (default: a temporary folder)")
    p.add_argument("--worker", nargs=3, default=None, metavar=("KIND", "RASTER", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(*args.worker, args.threads)
    from segformer.apps.benchmark import cpu_model
    from segformer.data.raster_synth import write_raster_scene

    baseline_sizes = args.sizes if args.baseline_sizes is None else args.baseline_sizes
    print(f"CPU {cpu_model()} ({platform.machine()}), torch {torch.__version__}, {args.threads} threads")
    columns = ["size", "MP", "ours s", "ours MP/s", "ours peak MB", "baseline s", "baseline MP/s", "baseline peak MB"]
    print("| " + " | ".join([*columns, "speed x", "same labels"]) + " |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for side in args.sizes:
            h, w = (int(v) for v in side.split("x")) if "x" in side else (int(side), int(side))
            raster = Path(tmp) / f"scene{side}.tif"
            write_raster_scene(raster, h, w)
            mp = h * w / 1e6
            a = measure("ours", raster, Path(tmp) / f"ours{side}", args.threads)
            row = f"| {side} | {mp:.1f} | {a['seconds']:.1f} | {mp / a['seconds']:.3f} | {a['rss_mb']:.0f} |"
            if side in baseline_sizes:
                b = measure("baseline", raster, Path(tmp) / f"base{side}", args.threads)
                same = agreement(Path(tmp) / f"ours{side}.tif", Path(tmp) / f"base{side}.tif")
                row += f" {b['seconds']:.1f} | {mp / b['seconds']:.3f} | {b['rss_mb']:.0f} |"
                row += f" {b['seconds'] / a['seconds']:.2f} | {100 * same:.3f}% |"
            else:
                row += " - | - | - | - | - |"
            print(row, flush=True)
            raster.unlink()


if __name__ == "__main__":
    main()
