"""Images/s of `segformer data check`, beside decoding alone: is the check limited by decoding or by Python?

Writes a synthetic ADE20K-sized folder dataset (JPEG images around 683x512, PNG masks with 150 classes) to a
temporary folder (or checks --data-root), then times, for each worker count:

- decode only: open and decode every image and mask in the same worker pool (nothing else);
- check: the whole `check_dataset` call (listing the files, decode, per-channel and label histograms, summing).

check / decode near 1 means the check costs little beyond decoding (decode-bound); the per-image CPU split of one
process says where the rest goes.

    python benchmarks/data_check.py                      # 400 images, workers 1 and 2
    python benchmarks/data_check.py --count 1000 --workers 1 2 4
    python benchmarks/data_check.py --data-root data/mine --dataset folder
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data_throughput import write_dataset  # noqa: E402

from segformer.apps.benchmark import cpu_model  # noqa: E402
from segformer.data import build_dataset, check_dataset  # noqa: E402
from segformer.data.check import scan, summarize  # noqa: E402


def timed(fn, repeats: int = 1) -> float:
    """The best of `repeats` wall-clock runs (the least disturbed by other processes on shared cores)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def one_process_split(ds, count: int) -> dict[str, float]:
    """CPU ms per image in this process: decoding alone, and the whole per-image summary."""
    count = min(count, len(ds))
    t0 = time.process_time()
    for i in range(count):
        summarize(ds, i, mode="decode")
    t1 = time.process_time()
    for i in range(count):
        summarize(ds, i)
    t2 = time.process_time()
    return {"decode_ms": 1000 * (t1 - t0) / count, "summary_ms": 1000 * (t2 - t1) / count}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None, help="check this dataset instead of a synthetic one")
    p.add_argument("--dataset", default="folder", help="layout of --data-root (default folder)")
    p.add_argument("--split", default="train", help="split to time (default train)")
    p.add_argument("--count", type=int, default=400, help="synthetic images (default 400)")
    p.add_argument("--size", default="512x683", help="synthetic image HxW (default 512x683, ADE20K-like)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time (default 1 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the best is kept (default 3)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.data_root is None:
            h, w = (int(v) for v in args.size.split("x"))
            root = Path(tmp) / "synthetic"
            t = timed(lambda: write_dataset(root, args.count, (h, w), 150))
            (root / "classes.txt").write_text("".join(f"class_{i}\n" for i in range(150)))
            print(f"wrote {args.count} synthetic images ({h}x{w} JPEG + PNG mask) in {t:.1f}s")
        else:
            root = Path(args.data_root)
        ds = build_dataset(args.dataset, root, args.split)
        n = len(ds)
        print(f"{cpu_model()}, {os.cpu_count()} logical CPUs visible, Python {platform.python_version()}")
        split = one_process_split(ds, min(n, 100))
        print(
            f"one process, CPU per image: decode {split['decode_ms']:.1f} ms, whole summary "
            f"{split['summary_ms']:.1f} ms ({100 * split['decode_ms'] / split['summary_ms']:.0f}% of it decoding)"
        )
        print(f"{'workers':>8} {'decode img/s':>13} {'check img/s':>12} {'check/decode':>13}")
        for workers in args.workers:
            decode = timed(
                lambda w=workers: sum(1 for _ in scan(ds, workers=w, progress=False, mode="decode")), args.repeats
            )
            check = timed(
                lambda w=workers: check_dataset(args.dataset, root, [args.split], workers=w, progress=False),
                args.repeats,
            )
            print(f"{workers:>8} {n / decode:>13.1f} {n / check:>12.1f} {decode / check:>13.2f}")


if __name__ == "__main__":
    main()
