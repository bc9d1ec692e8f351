"""Effective receptive fields of a model (the paper's Fig. 3): per encoder stage and for the decoder's fused features.

The gradient of the output at the centre (and, with --points centre,corner, the top-left corner) with respect to the
input, averaged over the images; heat maps on a log scale (white = the maximum, black = 1/1000 of it).

Example: segformer erf runs/demo/model data/synth/images/val --out erf --size 256 --points centre,corner
Writes OUT/erf.png (side by side), OUT/erf_TARGET_POINT.png, OUT/erf.npz (the arrays) and OUT/erf.json (radii
holding 50% and 90% of each map).
"""

from __future__ import annotations

import argparse

from .common import parse_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="anything load_model accepts: file, folder or hub id")
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=parse_size, default=(256, 256), help="input size the images are resized to (HxW)")
    p.add_argument("--points", default="centre", help="output positions: centre, corner or centre,corner")
    p.add_argument("--targets", default="all", help="stage1,stage2,stage3,stage4,head or all (default)")
    p.add_argument("--max-images", type=int, default=100, help="use at most this many images (default 100)")
    p.add_argument("--batch-size", type=int, default=4, help="images per backward pass")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")


def run(args: argparse.Namespace) -> int:
    from ..analysis.erf import TARGETS, effective_receptive_fields, save_erf
    from ..inference.files import collect_images
    from ..model.loading import load_model
    from ..runtime import resolve_device

    targets = tuple(TARGETS) if args.targets == "all" else tuple(t.strip() for t in args.targets.split(","))
    points = tuple(p.strip() for p in args.points.split(","))
    if args.max_images < 1 or args.batch_size < 1:
        raise ValueError(f"--max-images {args.max_images} and --batch-size {args.batch_size} must be >= 1")
    found, missing = collect_images(args.images)
    if missing:
        raise FileNotFoundError(f"{missing[0][0]}: {missing[0][1]}")
    if not found:
        raise ValueError(f"no images in {', '.join(args.images)}")
    files = [path for path, _ in found[: args.max_images]]
    model = load_model(args.weights).to(resolve_device(args.device))
    size = tuple(args.size)
    print(f"effective receptive fields of {args.weights}: {len(files)} images at {size[0]}x{size[1]}")
    maps = effective_receptive_fields(model, files, size, targets, points, args.batch_size)
    stats = save_erf(maps, args.out, images=len(files))
    for key, radius in stats["radius"].items():
        print(f"{key:<16} 50% of the gradient within {radius['50%']:>3} px, 90% within {radius['90%']:>3} px")
    print(f"wrote {args.out}/erf.png, erf_*.png, erf.npz and erf.json")
    return 0
