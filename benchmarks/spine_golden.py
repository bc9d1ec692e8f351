"""Record what test-time inference outputs, so that a refactor of the inference code can be checked bitwise.

    python benchmarks/spine_golden.py --out /tmp/before      # on the old tree
    python benchmarks/spine_golden.py --out /tmp/after       # on the new tree
    python benchmarks/spine_golden.py --compare /tmp/before/golden.json /tmp/after/golden.json

It writes a tiny 7-class model (fixed seed) and the synthetic dataset, then records the SHA-256 of: predict label
maps and probabilities on a folder (whole, slide, flip, multi-scale, a 12 MP photo), the eval metrics on the
synthetic val set, the INT8 agreement figures, the video label maps and the app's label map. Only public names
are used, so the script runs on the tree before and after a move of modules.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.simplefilter("ignore", DeprecationWarning)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _folder_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _array_digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _photos(folder: Path, synth_val: Path) -> None:
    """A few val images of assorted sizes, and one 12 MP photo (smooth colour noise)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    images = sorted(synth_val.glob("*"))[:4]
    for k, path in enumerate(images):
        image = Image.open(path).convert("RGB")
        size = (image.width + 17 * k, image.height + 9 * k)  # odd sizes exercise the resizes
        image.resize(size, Image.BILINEAR).save(folder / f"val{k}.png")
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(small).resize((4000, 3000), Image.BICUBIC).save(folder / "photo12mp.jpg", quality=92)


def record(out: Path) -> dict:
    import segformer
    from segformer import InferenceOptions, Segmenter, create_model, evaluate, load_model

    try:
        from segformer.inference import predict_files
    except ImportError:
        from segformer.predict import predict_files
    from segformer.synth import CLASS_NAMES, write_dataset

    from segformer.data import build_dataset

    torch.set_num_threads(2)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tiny = {"embed_dims": (8, 16, 40, 64), "depths": (1, 1, 1, 1), "decoder_dim": 32}
    create_model("b0", num_classes=len(CLASS_NAMES), class_names=CLASS_NAMES, **tiny).save_pretrained(out / "model")
    model = load_model(out / "model")
    synth = write_dataset(out / "synth", 2, 6, 96, 0)
    _photos(out / "photos", Path(synth) / "images" / "val")
    palette = np.random.default_rng(1).integers(0, 256, (len(CLASS_NAMES), 3), dtype=np.uint8)
    result: dict = {"version": segformer.__version__}

    modes = {
        "whole": InferenceOptions(scale=(256, 128)),
        "whole_own": InferenceOptions(),
        "aligned": InferenceOptions(scale=(200, 100), size_divisor=32),
        "slide": InferenceOptions(mode="slide", crop=(64, 64), stride=(48, 48)),
        "flip": InferenceOptions(scale=(256, 128), flip=True),
        "multiscale": InferenceOptions(scale=(256, 128), scales=(0.75, 1.25)),
    }
    for name, options in modes.items():
        folder = out / f"predict_{name}"
        predict_files(
            Segmenter(model, options), [out / "photos"], folder, palette=palette, progress=False, num_workers=0
        )
        result[f"predict_{name}"] = _folder_digests(folder)
    folder = out / "predict_probabilities"
    small = sorted((out / "photos").glob("val*"))
    predict_files(Segmenter(model, modes["whole"]), small, folder, palette=palette, progress=False, probabilities=True)
    result["predict_probabilities"] = _folder_digests(folder)
    folder = out / "predict_workers"
    predict_files(Segmenter(model, modes["whole"]), [out / "photos"], folder, palette=palette, progress=False)
    result["predict_workers"] = _folder_digests(folder)

    seg = Segmenter(model, modes["whole"])
    result["segmenter_probabilities"] = _array_digest(seg.probabilities(out / "photos" / "val1.png").numpy())

    val = build_dataset("folder", synth, "val")
    for name in ("whole_own", "slide", "flip"):
        metrics = evaluate(model, val, modes[name], progress=False)
        result[f"eval_{name}"] = json.loads(json.dumps(metrics, default=float))

    result.update(_int8(model, out))
    result.update(_video(model, out, palette))
    result.update(_app(model, out, palette))
    return result


def _int8(model, out: Path) -> dict:
    try:
        from segformer.export import export_int8
    except ImportError:
        from segformer.quantize import export_int8
    from segformer.data import build_dataset

    report = export_int8(
        model,
        out / "int8.onnx",
        out / "photos",
        calib_count=3,
        check_count=2,
        min_agreement=0.0,
        size=(128, 128),
    )
    val = build_dataset("folder", out / "synth", "val")
    report2 = export_int8(
        model,
        out / "int8_eval.onnx",
        out / "photos",
        calib_count=3,
        min_agreement=0.0,
        size=(128, 128),
        eval_dataset=val,
    )
    keys = ("agreement", "iou_vs_float", "float_miou", "int8_miou", "check_images")
    return {
        "int8_held_out": {k: getattr(report, k) for k in keys},
        "int8_eval": {k: getattr(report2, k) for k in keys},
    }


def _video(model, out: Path, palette: np.ndarray) -> dict:
    from segformer import InferenceOptions, Segmenter

    try:
        from segformer.inference.video import predict_video
    except ImportError:
        from segformer.video import predict_video
    import av

    path = out / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        rng = np.random.default_rng(2)
        for _ in range(6):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    summary = predict_video(
        Segmenter(model, InferenceOptions(batch_size=4)),
        path,
        out / "video",
        palette=palette,
        labels=True,
        progress=False,
    )
    return {"video_labels": _folder_digests(summary.labels)}


def _app(model, out: Path, palette: np.ndarray) -> dict:
    from segformer import InferenceOptions

    try:
        from segformer.apps.app import ModelEntry, segment
    except ImportError:
        from segformer.app import ModelEntry, segment
    from segformer.imageio import read_image

    entry = ModelEntry(model, "tiny", palette)
    image = read_image(out / "photos" / "val2.png")
    labels = segment(entry, image, InferenceOptions(scale=(256, 128), flip=True))
    return {"app_labels": _array_digest(np.asarray(labels, dtype=np.int64))}


def compare(a: Path, b: Path) -> int:
    before, after = json.loads(a.read_text()), json.loads(b.read_text())
    before.pop("version", None), after.pop("version", None)
    bad = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    for k in bad:
        print(f"DIFFERENT: {k}")
    print(f"{len(before) - len(bad)} of {len(before)} records equal" + ("" if bad else " (bitwise)"))
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="folder for the outputs and golden.json")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = p.parse_args()
    if args.compare:
        return compare(*args.compare)
    if args.out is None:
        p.error("--out or --compare")
    result = record(args.out)
    (args.out / "golden.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"wrote {args.out / 'golden.json'} ({len(result)} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
