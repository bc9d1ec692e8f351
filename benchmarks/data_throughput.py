"""Images/s of the training data pipeline (decode + rescale + crop + flip + photometric + normalise + pad).

Writes a synthetic ADE20K-sized dataset (JPEG images around 683x512, PNG masks with 150 classes) to a temporary
folder, then times what training runs: `SampleStream` positions in one process (= one DataLoader worker, torch at
1 thread as in workers), with the decode and augment stages separately, and `train_loader` (DataLoader over a
`BatchPlan`) with several workers.

    python benchmarks/data_throughput.py                        # ADE recipe: scale (2048, 512), crop 512
    python benchmarks/data_throughput.py --scale 2048 1024 --crop 1024 --size 2048x1024   # Cityscapes-like
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from segformer.data import BatchPlan, SampleStream, TrainTransform, build_dataset, train_loader


def synthetic_pair(
    rng: np.random.Generator, height: int, width: int, num_classes: int
) -> tuple[Image.Image, Image.Image]:
    """A smooth photo-like image (gradients + shapes + mild noise, so JPEG sizes are realistic) and a mask of
    polygons, with the same shapes in both."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width * 255, yy / height * 255, (xx + yy) / (width + height) * 255], axis=-1)
    image = Image.fromarray(base.astype(np.uint8))
    mask = Image.new("L", (width, height), int(rng.integers(0, num_classes)))
    draw_i, draw_m = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    for _ in range(12):
        points = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(5)]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw_i.polygon(points, fill=colour)
        draw_m.polygon(points, fill=int(rng.integers(0, num_classes)))
    noisy = np.asarray(image).astype(np.int16) + rng.integers(-8, 9, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), mask


def write_dataset(root: Path, count: int, size: tuple[int, int], num_classes: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "images" / "train").mkdir(parents=True)
    (root / "masks" / "train").mkdir(parents=True)
    h, w = size
    for i in range(count):
        jitter = rng.uniform(0.8, 1.2)  # ADE images vary in size; keep the short side near `h`
        image, mask = synthetic_pair(rng, int(h * jitter), int(w * jitter), num_classes)
        image.save(root / "images" / "train" / f"{i:05d}.jpg", quality=90)
        mask.save(root / "masks" / "train" / f"{i:05d}.png")


class TimedLoads:
    """A dataset whose `load` adds up the CPU time it takes (the decode stage of the stream)."""

    def __init__(self, dataset) -> None:
        self.dataset, self.cpu = dataset, 0.0

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int):
        t0 = time.process_time()
        try:
            return self.dataset.load(index)
        finally:
            self.cpu += time.process_time() - t0


def per_worker(ds, transform: TrainTransform, count: int) -> dict[str, float]:
    """Throughput of this one process over stream positions 0..count-1: wall clock, and CPU time (what a worker
    gets from a core of its own; the two differ when other processes compete for the cores)."""
    ds.load(0)  # warm up imports and caches
    timed = TimedLoads(ds)
    stream = SampleStream(timed, transform, seed=0)
    wall, cpu = time.perf_counter(), time.process_time()
    for g in range(count):
        _ = stream[g]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "wall_rate": count / wall,
        "cpu_rate": count / cpu,
        "ms_decode": 1000 * timed.cpu / count,
        "ms_aug": 1000 * (cpu - timed.cpu) / count,
    }


def with_loader(ds, transform: TrainTransform, workers: int, batch_size: int, batches: int) -> float:
    """images/s through training's DataLoader with `workers` worker processes (after the first batch)."""
    stream = SampleStream(ds, transform, seed=0)
    loader = iter(train_loader(stream, BatchPlan(0, batches + 1, batch_size), num_workers=workers))
    next(loader)
    start = time.perf_counter()
    for _ in loader:
        pass
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, nargs=2, default=(2048, 512), help="img_scale (long short)")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--size", default="512x683", help="typical source image HxW")
    parser.add_argument("--images", type=int, default=40, help="synthetic images to write")
    parser.add_argument("--samples", type=int, default=120, help="samples timed in one process")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))

    torch.set_num_threads(1)  # what a DataLoader worker runs with
    transform = TrainTransform(tuple(args.scale), crop=(args.crop, args.crop))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root, args.images, size, num_classes=150)
        ds = build_dataset("folder", root, "train", num_classes=150)
        r = per_worker(ds, transform, args.samples)
        print(f"pipeline: {transform}")
        print(f"source images ~{size[0]}x{size[1]} JPEG, {args.samples} samples in one process (1 torch thread)")
        print(f"  decode (image + mask + checks): {r['ms_decode']:6.1f} ms CPU/sample")
        print(f"  augment + normalise + pad:      {r['ms_aug']:6.1f} ms CPU/sample (the rest of stream[g])")
        print(f"  per worker (CPU time):          {r['cpu_rate']:6.1f} images/s")
        print(f"  per worker (wall clock):        {r['wall_rate']:6.1f} images/s")
        if args.workers > 0:
            batches = max(1, args.samples // args.batch_size)
            total = with_loader(ds, transform, args.workers, args.batch_size, batches)
            print(f"  DataLoader, {args.workers} workers (wall):  {total:6.1f} images/s")


if __name__ == "__main__":
    main()
