"""Evaluate weights on a dataset: mIoU/aAcc/mAcc/mDice table, metrics.json and a confusion-matrix PNG.

Defaults follow the paper's test protocol for the dataset (ADE20K: whole image at (2048, 512), sides aligned to
32; Cityscapes: slide 1024 / stride 768); `--tta` adds multi-scale + flip with the dataset's ratios.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..constants import AMP_DTYPES
from ..protocol import MODES
from .common import add_column_arguments, add_label_arguments, label_convention, parse_size

if TYPE_CHECKING:
    from ..data import DatasetInfo
    from ..inference import InferenceOptions
    from ..model.config import SegFormerConfig

DEFAULT_TTA_SCALES = (0.75, 0.875, 1.0, 1.125, 1.25)  # --tta without a dataset preset or --scales (ADE20K's)


def add_inference_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by `eval` and `predict`: mode, test scale, window, TTA, device, batch."""
    p.add_argument("--mode", choices=tuple(MODES), default=None, help="inference mode (default: the preset's)")
    p.add_argument(
        "--scale",
        type=_parse_scale,
        default=None,
        help="test scale LONGxSHORT, e.g. 2048x512 (mmseg img_scale), or 'original' to run at each image's size",
    )
    p.add_argument("--crop", type=parse_size, default=None, help="slide window, e.g. 1024 or 512x1024 (HxW)")
    p.add_argument("--stride", type=parse_size, default=None, help="slide step, e.g. 768 (default: the crop)")
    p.add_argument("--size-divisor", type=int, default=None, help="round resized sides up to a multiple (ADE: 32)")
    p.add_argument(
        "--native-size",
        action="store_true",
        help="run each image at its own size, ignoring the test protocol stored with the model",
    )
    p.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation")
    p.add_argument("--scales", type=float, nargs="+", default=None, help="TTA ratios, e.g. 0.75 1.0 1.25")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--batch-size", type=int, default=8, help="images (whole) or windows (slide) per forward")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", choices=tuple(AMP_DTYPES), default="none", help="autocast the model (GPU speed)")


def _parse_scale(text: str) -> tuple[int, int] | str:
    if text.lower() in ("original", "none", "native"):
        return "original"
    long_side, short_side = parse_size(text)
    return (long_side, short_side)


def inference_options(
    args: argparse.Namespace, info: DatasetInfo | None = None, model_config: SegFormerConfig | None = None
) -> InferenceOptions:
    """InferenceOptions from the preset of `info` (a DatasetInfo), else the test protocol stored with the model
    (`model_config`; not with --native-size), else each image at its own size; overridden by the flags."""
    from ..inference import InferenceOptions, options_for_model

    overrides = {
        "mode": args.mode,
        "crop": args.crop,
        "stride": args.stride,
        "size_divisor": args.size_divisor,
        "batch_size": args.batch_size,
        "amp": args.amp,
    }
    if args.scales:
        overrides["scales"] = tuple(args.scales)
    if args.flip or (args.tta and info is None):
        overrides["flip"] = True
    if args.tta and info is None and not args.scales:
        overrides["scales"] = DEFAULT_TTA_SCALES
    if info is not None:
        options = InferenceOptions.for_dataset(info, tta=args.tta, **overrides)
    elif model_config is not None and not args.native_size:
        options = options_for_model(model_config, **overrides)
    else:
        options = InferenceOptions(**{k: v for k, v in overrides.items() if v is not None})
    if args.scale == "original":
        options = options.replace(scale=None)
    elif args.scale is not None:
        options = options.replace(scale=args.scale)
    return options


def describe(options: InferenceOptions) -> str:
    scale = f"scale {options.scale[0]}x{options.scale[1]}" if options.scale else "original size"
    text = f"{options.mode}, {scale}"
    if options.size_divisor:
        text += f", aligned to {options.size_divisor}"
    if options.mode == "slide":
        text += f", crop {options.crop[0]}x{options.crop[1]} stride {options.stride[0]}x{options.stride[1]}"
    if options.scales:
        text += f", scales {list(options.scales)}"
    if options.flip:
        text += ", flip"
    if options.amp != "none":
        text += f", {options.amp} autocast"
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="anything load_model accepts: file, folder or hub id")
    from ..data.layouts import DATASET_NAMES

    p.add_argument("--dataset", required=True, choices=DATASET_NAMES, help="dataset layout and test preset")
    p.add_argument("--data-root", required=True, help="dataset root folder (--dataset hf: hub id or local folder)")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    add_label_arguments(p)
    add_column_arguments(p)
    add_inference_arguments(p)
    p.add_argument("--out", default=None, help="folder for metrics.json, confusion.png (default: eval-DATASET-SPLIT)")
    p.add_argument("--max-samples", type=int, default=None, help="evaluate only the first N samples")
    p.add_argument("--num-workers", type=int, default=2, help="processes reading images ahead (0 = none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data import LAYOUTS, build_dataset
    from ..evaluation.evaluate import evaluate_confusion, format_table, write_report
    from ..model.loading import load_model
    from ..runtime import resolve_device

    model = load_model(args.weights)
    labels = label_convention(args, base=model.config.labels)  # the model's convention unless flags change it
    layout = LAYOUTS[args.dataset]
    # No class names with the data: the model's classes.
    num_classes = None if layout.names_classes(args.data_root, labels) else model.config.num_classes
    dataset = build_dataset(
        args.dataset,
        args.data_root,
        args.split,
        num_classes=num_classes,
        labels=labels,
        image_column=args.image_column,
        mask_column=args.mask_column,
        channels=model.config.in_channels,
    )
    if len(dataset) == 0:
        raise ValueError(f"{args.data_root}: no samples in split {args.split!r}")
    options = inference_options(args, layout.info, model.config)
    print(f"evaluating {args.weights} on {args.dataset}/{args.split} ({len(dataset)} images): {describe(options)}")
    if not labels.is_default:
        print(f"labels: {labels.describe()}")
    cm = evaluate_confusion(
        model,
        dataset,
        options,
        device=resolve_device(args.device),
        progress=not args.no_progress,
        max_samples=args.max_samples,
        num_workers=args.num_workers,
    )
    metrics = cm.compute()
    print(format_table(metrics))
    out = Path(args.out or f"eval-{args.dataset}-{args.split}")
    paths = write_report(out, metrics, cm)
    print(f"wrote {paths['metrics']} and {paths['png']}")
    return 0
