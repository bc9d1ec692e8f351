"""Time and peak memory of a 12 MP phone photo (4032x3024 JPEG) against a 2048x512 image, in one process.

B0 with 150 classes (random weights, or `--model` a trained one) and the ADE20K test protocol stored with it
(whole image, keep-ratio rescale to (2048, 512), 32-aligned): the photo runs the network at 704x512 and its
labels are written at 4032x3024; the 2048x512 image runs at its own size. Measured for `Segmenter(model)(path)`
(read, EXIF-rotate, normalise, predict, labels) and for `predict_files` (that plus the label PNG and the overlay
JPEG). Latencies are medians of interleaved rounds (the two images take turns, so load on a shared machine slows
both alike); peak memory is resident-set growth during one call (`segformer.apps.benchmark.peak_memory_mb`). With
`--argmax`, the label step alone, on the same logits (150x176x128, the model's output for the photo):
`inference._argmax_resized(logits, size, via=(704, 512))` (for a photo this big: the first resize in full, then only
the pixels where several classes can win) against the implementation before issue 12, which resized all 150 classes
to the network input size 704x512 and then 16 classes at a time to full size.

    PYTHONPATH=src python benchmarks/big_photo.py --repeats 5 --threads 2 --argmax
    PYTHONPATH=src python benchmarks/big_photo.py --model nvidia/segformer-b0-finetuned-ade-512-512

Random weights are the label step's worst case: their logits are noise, so a large share of the cells have several
classes that can win (trained models: only cells on class boundaries) and must be blended per pixel.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from segformer import InferenceOptions, Segmenter, create_model, load_model
from segformer.apps.benchmark import device_name, environment_note, peak_memory_mb, time_interleaved
from segformer.imageio import default_palette
from segformer.inference import argmax_resized as _argmax_resized
from segformer.inference.files import predict_files

ADE20K = InferenceOptions(mode="whole", scale=(2048, 512), size_divisor=32)
EXIF_ROTATED = 6  # what most phones write: the pixels are stored sideways, the viewer turns them


def synthetic_jpeg(path: Path, width: int, height: int, orientation: int | None = None) -> Path:
    """A JPEG of smooth blobs and edges (decodes like a photo, unlike noise), optionally with an EXIF rotation."""
    rng = np.random.default_rng(width * height)
    small = rng.integers(0, 256, (max(height // 64, 2), max(width // 64, 2), 3)).astype(np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(path, quality=90, exif=exif)
    return path


def old_argmax_resized(logits: torch.Tensor, size: tuple[int, int], chunk: int = 16) -> torch.Tensor:
    """The former label step: each chunk of classes resized to full size, then a running max."""
    best = labels = None
    for start in range(0, logits.shape[1], chunk):
        value, index = F.interpolate(logits[:, start : start + chunk], size, mode="bilinear", align_corners=False).max(
            dim=1
        )
        if best is None:
            best, labels = value, index
        else:
            better = value > best
            best, labels = torch.where(better, value, best), torch.where(better, index + start, labels)
    return labels


def measure(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, float | None]]:
    """{name: (median seconds, peak MB)}: memory one call at a time, then the timed interleaved rounds."""
    peaks = {name: peak_memory_mb(fn, "cpu") for name, fn in fns.items()}
    times = time_interleaved(fns, repeats=repeats, warmup=1, sync=lambda: None)
    return {name: (statistics.median(times[name]), peaks[name]) for name in fns}


def report(title: str, results: dict[str, tuple[float, float | None]], baseline: str) -> None:
    base_s, base_mb = results[baseline]
    print(f"\n{title}\n\n| input | s (median) | x {baseline} | peak MB | mem x |\n|---|---|---|---|---|")
    for name, (sec, mb) in results.items():
        mem = f"{mb:.0f} | {mb / base_mb:.2f}" if mb is not None and base_mb else "- | -"
        print(f"| {name} | {sec:.2f} | {sec / base_s:.2f} | {mem} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--argmax", action="store_true", help="also time the label step alone, new against old")
    parser.add_argument("--model", help="a trained 150-class model (file, folder or hub id); default random B0")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = (load_model(args.model) if args.model else create_model("b0", num_classes=150)).eval()
    model.config = model.config.replace(test_protocol=ADE20K)
    segmenter = Segmenter(model)
    folder = Path(tempfile.mkdtemp())
    images = {
        "2048x512": synthetic_jpeg(folder / "wide.jpg", 2048, 512),
        "4032x3024 (EXIF-rotated)": synthetic_jpeg(folder / "photo.jpg", 4032, 3024, EXIF_ROTATED),
    }
    palette = default_palette(150)
    print(f"{device_name('cpu')}, {args.threads} threads, {environment_note()}")
    seg = {name: (lambda p=path: segmenter(p)) for name, path in images.items()}
    report("Segmenter(model)(path)", measure(seg, args.repeats), "2048x512")
    files = {
        name: (lambda p=path, o=folder / f"out{i}": predict_files(segmenter, [p], o, palette=palette, progress=False))
        for i, (name, path) in enumerate(images.items())
    }
    report("predict_files (label PNG + overlay JPEG)", measure(files, args.repeats), "2048x512")
    if args.argmax:
        with torch.inference_mode():
            logits = model(torch.randn(1, 3, 704, 512))  # (1, 150, 176, 128)
            steps = {
                "now": lambda: _argmax_resized(logits, (4032, 3024), via=(704, 512)),
                "input size, then 16 classes at a time (before)": lambda: old_argmax_resized(
                    F.interpolate(logits, (704, 512), mode="bilinear", align_corners=False), (4032, 3024)
                ),
            }
            title = "label step alone, 150x176x128 logits -> 704x512 -> 4032x3024"
            report(title, measure(steps, args.repeats), "now")


if __name__ == "__main__":
    main()
