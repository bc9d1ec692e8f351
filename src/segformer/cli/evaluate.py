"""Evaluate weights on a dataset: mIoU/aAcc/mAcc/mDice table, metrics.json and a confusion-matrix PNG.

Defaults follow the paper's test protocol for the dataset (ADE20K: whole image at (2048, 512), sides aligned to
32; Cityscapes: slide 1024 / stride 768); `--tta` adds multi-scale + flip with the dataset's ratios.
`--sweep-scales 0.5,1,1.5,2` or `--sweep-sizes 64,96,128` evaluate at several test resolutions (sweep.json,
sweep.png); `--corruption all --severity all` on corrupted copies of the images (robustness.json, robustness.png;
the `robustness` extra). Under torchrun the processes share the images and the confusion matrices are summed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..constants import AMP_DTYPES
from ..protocol import MODES
from .common import add_column_arguments, add_label_arguments, in_process_group, label_convention, parse_size

if TYPE_CHECKING:
    from ..data import DatasetInfo
    from ..inference import InferenceOptions
    from ..model.config import SegFormerConfig

DEFAULT_TTA_SCALES = (0.75, 0.875, 1.0, 1.125, 1.25)  # --tta without a dataset preset or --scales (ADE20K's)


def add_inference_arguments(p: argparse.ArgumentParser, compile: bool = True) -> None:
    """Options shared by `eval`, `predict` and `app`: mode, test scale, window, TTA, device, batch (and --compile)."""
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
    if compile:
        p.add_argument(
            "--compile", action="store_true", help="torch.compile the model (same labels; eager where it cannot)"
        )


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
    p.add_argument("weights", help="anything load_model accepts (file, folder, hub id), or an exported .onnx / .pte")
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
    g = p.add_argument_group("claims", "mIoU against test resolution, and under image corruptions (paper 1c, 5)")
    g.add_argument(
        "--sweep-scales",
        type=_parse_floats,
        default=None,
        metavar="R,R,...",
        help="evaluate with the test scale (the images) multiplied by each ratio, e.g. 0.5,1,1.5,2",
    )
    g.add_argument(
        "--sweep-sizes",
        type=_parse_sizes,
        default=None,
        metavar="S,S,...",
        help="evaluate on windows of each size at the test scale (slide, no overlap), e.g. 64,96,128,192",
    )
    g.add_argument("--corruption", default=None, metavar="NAME|all", help="corruption name(s), comma-separated, or all")
    g.add_argument("--severity", default="all", metavar="1..5|all", help="severities with --corruption (default all)")
    g.add_argument("--corruption-seed", type=int, default=0, help="seed of the corrupted images (default 0)")


def _parse_floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive ratios such as 0.5,1,1.5,2")
    return values


def _parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    return tuple(parse_size(v) for v in text.split(",") if v.strip())


def run(args: argparse.Namespace) -> int:
    """Join torchrun's process group when launched by it (the images are shared out), evaluate, report on rank 0."""
    from ..runtime import resolve_device

    return in_process_group(_run, args, resolve_device(args.device))


def _run(args: argparse.Namespace, device: object) -> int:
    from ..data import LAYOUTS, build_dataset
    from ..evaluation.evaluate import evaluate_confusion, format_table, write_report
    from ..export.runtimes import runtime_options
    from ..training import distributed as D
    from .common import load_for_inference

    chosen = [flag for flag, value in _CLAIM_FLAGS.items() if getattr(args, value) is not None]
    if len(chosen) > 1:
        raise ValueError(f"{' and '.join(chosen)} are separate evaluations; give one of them")
    if args.corruption is not None:  # bad names, severities or a missing extra fail before anything is read
        from ..evaluation.robustness import corruption_module, parse_corruptions, parse_severities

        parse_corruptions(args.corruption)
        parse_severities(args.severity)
        corruption_module()
    model = load_for_inference(args.weights)
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
    options = runtime_options(model, inference_options(args, layout.info, model.config))
    main = D.is_main()
    if main:
        print(f"evaluating {args.weights} on {args.dataset}/{args.split} ({len(dataset)} images): {describe(options)}")
        if not labels.is_default:
            print(f"labels: {labels.describe()}")
    run = {
        "device": device,
        "progress": not args.no_progress,
        "max_samples": args.max_samples,
        "num_workers": args.num_workers,
    }
    out = Path(args.out or f"eval-{args.dataset}-{args.split}")
    if args.sweep_scales is not None or args.sweep_sizes is not None:
        return _sweep(args, model, dataset, options, run, out, main)
    if args.corruption is not None:
        return _robustness(args, model, dataset, options, run, out, main)
    cm = evaluate_confusion(model, dataset, options, compile=args.compile, **run)
    metrics = cm.compute()
    if main:
        print(format_table(metrics))
        paths = write_report(out, metrics, cm)
        print(f"wrote {paths['metrics']} and {paths['png']}")
    return 0


_CLAIM_FLAGS = {"--sweep-scales": "sweep_scales", "--sweep-sizes": "sweep_sizes", "--corruption": "corruption"}


def _sweep(args: argparse.Namespace, model: Any, dataset: Any, options: Any, run: dict, out: Path, main: bool) -> int:
    """mIoU at each test resolution: table, sweep.json and sweep.png (with the plot extra)."""
    from ..evaluation.sweep import format_sweep, resolution_sweep, scale_points, window_points
    from ..fileio import write_json
    from ..visualize import plot_series

    if args.sweep_scales is not None:
        points, xlabel = scale_points(options, args.sweep_scales), "test scale (x the protocol's)"
    else:
        points, xlabel = window_points(options, args.sweep_sizes), "window side (px) at the test scale"
    rows = resolution_sweep(model, dataset, points, **run)
    if main:
        print(format_sweep(rows, "scale" if args.sweep_scales is not None else "window"))
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "sweep.json", {"weights": str(args.weights), "rows": rows})
        curve = {str(args.weights): [[100 * r["mIoU"] for r in rows]]}
        png = plot_series(out / "sweep.png", [p.x for p in points], curve, xlabel, "mIoU (%)", "mIoU vs resolution")
        print(f"wrote {out / 'sweep.json'}" + (f" and {png}" if png else ""))
    return 0


def _robustness(
    args: argparse.Namespace, model: Any, dataset: Any, options: Any, run: dict, out: Path, main: bool
) -> int:
    """mIoU per corruption and severity: table, robustness.json and robustness.png (with the plot extra)."""
    import numpy as np

    from ..evaluation.robustness import (
        evaluate_robustness,
        format_robustness,
        parse_corruptions,
        parse_severities,
        to_json,
    )
    from ..fileio import write_json
    from ..visualize import plot_heatmap

    names, severities = parse_corruptions(args.corruption), parse_severities(args.severity)
    result = evaluate_robustness(model, dataset, options, names, severities, seed=args.corruption_seed, **run)
    if main:
        print(format_robustness(result))
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "robustness.json", {"weights": str(args.weights), **to_json(result)})
        values = np.array([[100 * result["table"][n][s] for s in severities] for n in names])
        title = f"mIoU (%) under corruption, clean {100 * result['clean']:.1f}"
        columns = [str(s) for s in severities]
        png = plot_heatmap(out / "robustness.png", values, names, columns, title, "mIoU (%)", 0, 100, "severity")
        print(f"wrote {out / 'robustness.json'}" + (f" and {png}" if png else ""))
    return 0
