"""Does `--class-weights auto` help a rare class? Plain cross-entropy against ENet-weighted cross-entropy on an
imbalanced synthetic set, same model, data, seed and number of iterations.

The set (written under --root): 64x64 scenes of a noisy background (~62% of the pixels), a "road" band at the
bottom (~34%), a disc (~4%) and, in half of the images, a 6x6 "sign" (~0.4%), each class with its own texture;
colours are drawn per image, so only shape and texture tell the classes apart. Prints the per-class IoU of both runs
for each seed.

    python benchmarks/class_weights.py --iters 400 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("background", "road", "disc", "sign")
TINY = {"embed_dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 4], "decoder_dim": 64}


def scene(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.uint8)
    top = int(rng.integers(size * 0.6, size * 0.75))
    mask[top:] = 1
    cy, cx, r = rng.integers(12, top - 4), rng.integers(12, size - 12), rng.integers(6, 10)
    mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 2
    if rng.random() < 0.5:
        y, x = int(rng.integers(2, size - 8)), int(rng.integers(2, size - 8))
        mask[y : y + 6, x : x + 6] = 3
    base = rng.uniform(60, 190, 3)
    texture = {
        0: rng.normal(0, 12, (size, size)),
        1: 25.0 * (np.sin(xx / 2.0) > 0),
        2: 25.0 * ((yy + xx) % 6 < 3),
        3: 45.0 * ((yy + xx) % 2),
    }
    image = np.repeat(base[None, None], size, 0).repeat(size, 1)
    for c, t in texture.items():
        image[mask == c] += t[mask == c][:, None]
    image += rng.normal(0, 6, image.shape)
    return image.clip(0, 255).astype(np.uint8), mask


def write(root: Path, n_train: int, n_val: int) -> np.ndarray:
    counts = np.zeros(len(CLASSES), np.int64)
    rng = np.random.default_rng(1234)
    for split, n in (("train", n_train), ("val", n_val)):
        for sub in ("images", "masks"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, mask = scene(rng)
            Image.fromarray(image).save(root / "images" / split / f"{i:04d}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i:04d}.png")
            if split == "train":
                counts += np.bincount(mask.ravel(), minlength=len(CLASSES))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "tiny.json").write_text(json.dumps(TINY))
    return counts


def run(root: Path, out: Path, seed: int, iters: int, class_weights: str | None) -> dict:
    from segformer.training import TrainConfig, train

    config = TrainConfig(
        model=str(root / "tiny.json"), dataset="folder", data_root=str(root), out=str(out), iters=iters,
        batch_size=8, crop=(64, 64), scale=(64, 64), ratio_range=(0.75, 1.5), photometric=False, lr=2e-3,
        head_lr_mult=1.0, warmup_iters=20, num_workers=0, eval_every=0, save_every=iters, log_every=50,
        seed=seed, class_weights=class_weights, device="cpu",
    )  # fmt: skip
    start = time.perf_counter()
    result = train(config)
    metrics = result.final_metrics
    return {
        "iou": {name: metrics["per_class"][name]["IoU"] for name in CLASSES},
        "mIoU": metrics["mIoU"],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/class-weights"))
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--val", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    data = args.root / "data"
    counts = write(data, args.train, args.val)
    share = counts / counts.sum()
    print("training pixel share: " + ", ".join(f"{n} {100 * s:.2f}%" for n, s in zip(CLASSES, share, strict=True)))
    rows = []
    for seed in args.seeds:
        for label, weights in (("plain CE", None), ("auto weights", "auto")):
            tag = "auto" if weights else "plain"
            r = run(data, args.root / f"{tag}-seed{seed}", seed, args.iters, weights)
            rows.append((seed, label, r))
            ious = "  ".join(f"{n} {100 * r['iou'][n]:5.1f}" for n in CLASSES)
            print(f"seed {seed}  {label:<12}  IoU %: {ious}  mIoU {100 * r['mIoU']:5.1f}  ({r['seconds']:.0f} s)")
    for label in ("plain CE", "auto weights"):
        signs = [100 * r["iou"]["sign"] for _, lab, r in rows if lab == label]
        print(f"{label:<12} sign IoU mean {np.mean(signs):5.1f} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
