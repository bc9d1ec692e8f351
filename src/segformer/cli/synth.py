"""Write the built-in synthetic dataset (7 classes that differ by shape and texture) in the folder layout.

Example: segformer synth --out data/synth --train 400 --val 100 --size 256
Then: build_dataset("folder", "data/synth", "train") reads it, as does any --dataset folder command.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (created; reused if it holds the same spec)")
    p.add_argument("--train", type=int, default=400, help="number of training images (default 400)")
    p.add_argument("--val", type=int, default=100, help="number of validation images (default 100)")
    p.add_argument("--size", type=int, default=256, help="square image side in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed; the same seed and size give the same pixels")
    p.add_argument("--overwrite", action="store_true", help="regenerate a synthetic dataset made with another spec")


def run(args: argparse.Namespace) -> int:
    from ..data.synth import CLASS_NAMES, write_dataset

    out = write_dataset(args.out, args.train, args.val, args.size, args.seed, overwrite=args.overwrite, progress=True)
    print(
        f"{out}: {args.train} train + {args.val} val images, {args.size}x{args.size}, classes: {', '.join(CLASS_NAMES)}"
    )
    return 0
