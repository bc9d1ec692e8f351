"""Write the built-in synthetic dataset (7 classes that differ by shape and texture) in the folder layout.

Example: segformer synth --out data/synth --train 400 --val 100 --size 256
Then: build_dataset("folder", "data/synth", "train") reads it, as does any --dataset folder command.

Rasters (needs rasterio: pip install 'segformer[geo]'): `segformer synth --raster --out data/geo --train 4 --val 1
--size 512` writes 4-band uint16 GeoTIFF scenes with label rasters in the --dataset raster layout;
`segformer synth --raster --scene 4096x4096 --out scene.tif` writes one large scene (window by window).
"""

from __future__ import annotations

import argparse

from .common import parse_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (created; reused if it holds the same spec)")
    p.add_argument("--train", type=int, default=None, help="number of training images (default 400; rasters: 4)")
    p.add_argument("--val", type=int, default=None, help="number of validation images (default 100; rasters: 1)")
    p.add_argument("--size", type=int, default=None, help="square image side in pixels (default 256; rasters: 512)")
    p.add_argument("--seed", type=int, default=0, help="seed; the same seed and size give the same pixels")
    p.add_argument("--overwrite", action="store_true", help="regenerate a synthetic dataset made with another spec")
    p.add_argument("--raster", action="store_true", help="4-band GeoTIFF scenes and label rasters (--dataset raster)")
    p.add_argument(
        "--scene",
        type=parse_size,
        default=None,
        metavar="HxW",
        help="with --raster: one large scene of HxW pixels written to --out (a .tif file), labels beside it",
    )


def run(args: argparse.Namespace) -> int:
    from ..data.synth import CLASS_NAMES, write_dataset

    if args.raster:
        return _rasters(args)
    if args.scene is not None:
        raise ValueError("--scene writes a raster scene; add --raster")
    train, val, size = _or(args.train, 400), _or(args.val, 100), _or(args.size, 256)
    out = write_dataset(args.out, train, val, size, args.seed, overwrite=args.overwrite, progress=True)
    print(f"{out}: {train} train + {val} val images, {size}x{size}, classes: {', '.join(CLASS_NAMES)}")
    return 0


def _rasters(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data.raster_synth import write_raster_dataset, write_raster_scene
    from ..data.synth import CLASS_NAMES

    if args.scene is not None:
        out = Path(args.out)
        if out.suffix.lower() not in (".tif", ".tiff"):
            raise ValueError(f"--scene writes one GeoTIFF: --out {out} must end in .tif")
        label = out.with_name(f"{out.stem}_labels{out.suffix}")
        write_raster_scene(out, *args.scene, seed=args.seed, label=label)
        print(f"{out}: {args.scene[0]}x{args.scene[1]} 4-band uint16 scene (EPSG:32633, 10 m); labels in {label}")
        return 0
    train, val, size = _or(args.train, 4), _or(args.val, 1), _or(args.size, 512)
    out = write_raster_dataset(args.out, train, val, size, args.seed, overwrite=args.overwrite)
    print(f"{out}: {train} train + {val} val 4-band GeoTIFF scenes, {size}x{size}, classes: {', '.join(CLASS_NAMES)}")
    return 0


def _or(value: int | None, default: int) -> int:
    return default if value is None else value
