"""Images/s of `segformer predict` on a folder of mixed-size JPEGs, against a loop over transformers'
`pipeline("image-segmentation")` with the same weights, the same test scale and label maps at the original size.

Ours: `segformer.inference.files.predict_files` (readers decode and resize in worker processes, batches by model input
size, writers compute the label maps and write NAME.png + NAME_overlay.jpg). Theirs: for each file, the pipeline
(its SegformerImageProcessor set to the size our test scale gives that image: (2048, 512), sides aligned to 32, the
official ADE20K protocol), its masks assembled into the label map, written as the same palette PNG (no overlay: the
pipeline side does less writing than ours).

The weights are a random B0 with 150 classes, saved with `save_pretrained` and loaded by transformers. Its classifier
bias favours 12 classes so that a photo holds about as many classes as a real ADE20K prediction (a random head
spreads ~130 classes over every image, and the pipeline makes one full-size mask per class present).

The two take turns (A B, then B A, ...) in one process; the ratio is the median over rounds of their times on the
whole folder. Everything is written under a temporary folder in /tmp, removed at the end.

    python benchmarks/predict_folder.py                      # 104 images, 3 rounds
    python benchmarks/predict_folder.py --images 40 --rounds 2 --workers 2
    python benchmarks/predict_folder.py --breakdown           # also: where our time goes, stage by stage
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from segformer import InferenceOptions, Segmenter, create_model
from segformer.apps.benchmark import cpu_model
from segformer.imageio import default_palette, write_label_png
from segformer.inference import resized_size
from segformer.inference.files import default_num_workers, predict_files
from segformer.runtime import import_torchvision

# (H, W, share of the images): phone and camera sizes, landscape and portrait, a few 12 MP photos.
SIZES = [(480, 640, 0.25), (600, 800, 0.25), (768, 1024, 0.2), (960, 1280, 0.15), (640, 480, 0.12), (3024, 4032, 0.03)]
OPTIONS = InferenceOptions(scale=(2048, 512), size_divisor=32, batch_size=8)  # ADE20K's official test protocol


def photo(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """Gradients, polygons and mild noise: JPEG sizes and decode times like a photo's, not like pure noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=-1) * 255
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        points = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(5)]
        draw.polygon(points, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noise = rng.integers(-6, 7, (height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(image).astype(np.int16) + noise, 0, 255).astype(np.uint8))


def write_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    sizes = [(h, w) for h, w, share in SIZES for _ in range(max(1, round(share * count)))]
    paths = []
    for i, (h, w) in enumerate(sizes):
        paths.append(folder / f"{i:04d}_{w}x{h}.jpg")
        photo(rng, h, w).save(paths[-1], quality=90)
    return paths


def build_model(folder: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("b0", num_classes=150).eval()
    with torch.no_grad():
        favoured = torch.randperm(150)[:12]
        model.head.classifier.bias[favoured] += 4.0  # about a dozen classes per image, as a trained model
    model.save_pretrained(folder)
    return model


def build_pipeline(folder: Path):
    import_torchvision()  # transformers' image code imports it; see runtime.import_torchvision
    import transformers

    transformers.logging.set_verbosity_error()  # no torchvision here: the processor says it falls back to PIL
    model = transformers.SegformerForSemanticSegmentation.from_pretrained(folder).eval()
    processor = transformers.SegformerImageProcessor()  # ImageNet mean/std, bilinear resize, as ours
    return transformers.pipeline("image-segmentation", model=model, image_processor=processor, device="cpu")


def run_pipeline(pipe, paths: list[Path], out: Path, palette: np.ndarray) -> None:
    """Label maps at the original size from transformers' pipeline, one file at a time, written as palette PNGs."""
    out.mkdir(exist_ok=True)
    ids = {name: int(i) for i, name in pipe.model.config.id2label.items()}
    for path in paths:
        with Image.open(path) as img:
            width, height = img.size
        h, w = resized_size(height, width, OPTIONS.scale, 1.0, OPTIONS.size_divisor)
        pipe.image_processor.size = {"height": h, "width": w}  # our test scale for this image
        labels = np.zeros((height, width), np.uint8)
        for segment in pipe(str(path), subtask="semantic"):
            labels[np.asarray(segment["mask"]) > 0] = ids[segment["label"]]
        write_label_png(out / f"{path.stem}.png", labels, palette)


def run_ours(model, paths: list[Path], out: Path, palette: np.ndarray, workers: int) -> None:
    summary = predict_files(Segmenter(model, OPTIONS), paths, out, palette=palette, progress=False, num_workers=workers)
    assert not summary.failed, summary.failed


def breakdown(model, paths: list[Path], out: Path, palette: np.ndarray) -> dict[str, float]:
    """Seconds per stage of ours, one image at a time in this process (no overlap): where the time goes."""
    from segformer.inference.files import OutputStyle, _predict_prepared, _Reader, _write

    segmenter, style = Segmenter(model, OPTIONS), OutputStyle(palette)
    reader, plan = _Reader(paths, segmenter, prepare=True), [(p, out / p.stem) for p in paths]
    seconds = dict.fromkeys(("read + resize", "model", "label maps (1 thread)", "label maps + PNG + overlay"), 0.0)
    for i in range(len(paths)):
        start = time.perf_counter()
        item = reader[i]
        seconds["read + resize"] += (mid := time.perf_counter()) - start
        (job,) = _predict_prepared(segmenter, [item], plan)
        seconds["model"] += (start := time.perf_counter()) - mid
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a writer process
        job.finish()  # stage 3, as a writer runs it
        seconds["label maps (1 thread)"] += (mid := time.perf_counter()) - start
        _write(job, style)
        seconds["label maps + PNG + overlay"] += time.perf_counter() - mid
        torch.set_num_threads(threads)
    return seconds


def agreement(ours: Path, theirs: Path) -> float:
    """Share of pixels where the two label maps agree (the inputs differ: PIL resizes uint8, ours float)."""
    same = total = 0
    for png in sorted(theirs.glob("*.png")):
        with Image.open(png) as a, Image.open(ours / png.name) as b:
            x, y = np.asarray(a), np.asarray(b)
        same, total = same + int((x == y).sum()), total + x.size
    return same / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=104)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=default_num_workers(), help="ours: readers and writers each")
    p.add_argument("--breakdown", action="store_true", help="also time our stages one by one (one more pass)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="predict-folder-", dir="/tmp") as tmp:
        root = Path(tmp)
        paths = write_photos(root / "photos", args.images)
        megapixels = sum(Image.open(q).size[0] * Image.open(q).size[1] for q in paths) / 1e6
        model, palette = build_model(root / "weights"), default_palette(150)
        pipe = build_pipeline(root / "weights")
        print(f"{len(paths)} JPEGs ({megapixels:.0f} MP), {cpu_model()}, torch threads {torch.get_num_threads()}, "
              f"ours: {args.workers} reader + {args.workers} writer processes, batch {OPTIONS.batch_size}")  # fmt: skip
        warm = [paths[0], paths[-1]]
        run_ours(model, warm, root / "warm-ours", palette, args.workers)
        run_pipeline(pipe, warm, root / "warm-theirs", palette)

        times: dict[str, list[float]] = {"ours": [], "pipeline": []}
        runners = {
            "ours": lambda out: run_ours(model, paths, out, palette, args.workers),
            "pipeline": lambda out: run_pipeline(pipe, paths, out, palette),
        }
        for r in range(args.rounds):
            for name in ("ours", "pipeline") if r % 2 == 0 else ("pipeline", "ours"):
                start = time.perf_counter()
                runners[name](root / f"{name}-{r}")
                times[name].append(time.perf_counter() - start)
                print(f"round {r + 1} {name:9s} {times[name][-1]:7.1f} s  {len(paths) / times[name][-1]:6.2f} img/s")
        ratios = [b / a for a, b in zip(times["ours"], times["pipeline"], strict=True)]
        ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["pipeline"])
        print(f"ours {len(paths) / ours_s:.2f} img/s, transformers pipeline {len(paths) / theirs_s:.2f} img/s")
        rounds = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"ratio (median of rounds): {statistics.median(ratios):.2f}x  (rounds: {rounds})")
        print(f"label agreement with the pipeline: {100 * agreement(root / 'ours-0', root / 'pipeline-0'):.2f}%")
        if args.breakdown:
            (root / "stages").mkdir()
            for stage, sec in breakdown(model, paths, root / "stages", palette).items():
                print(f"ours, {stage:28s} {sec:7.1f} s")


if __name__ == "__main__":
    main()
