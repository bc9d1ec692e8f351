"""Export a model to ONNX (dynamic batch/height/width), then check it in ONNX Runtime against PyTorch.

With --int8, the export is quantised to INT8 (ONNX Runtime static QDQ) calibrated on your images, compared with the
float export on held-out images (or --eval-dataset, which also gives the mIoU change), and written only if the label
maps agree on at least --min-agreement of the pixels (exit code 1 otherwise, nothing written) unless --force.

Examples:
  segformer export nvidia/segformer-b0-finetuned-ade-512-512 b0.onnx
  segformer export run/best b0_app.onnx --with-preprocess --with-postprocess --label-dtype uint8
  segformer export runs/demo/model b0_int8.onnx --int8 --calibrate data/synth/images/train --calib-count 64
"""

from __future__ import annotations

import argparse
from typing import Any

from ..data.layouts import DATASET_NAMES
from .common import parse_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="any checkpoint load_model accepts (file, folder, hub id); b0..b5 = random weights")
    p.add_argument("out", help="the .onnx file to write")
    p.add_argument("--with-preprocess", action="store_true", help="take uint8 RGB (B, H, W, 3); normalise inside")
    p.add_argument("--with-postprocess", action="store_true", help="upsample to the input size and argmax: labels")
    p.add_argument("--label-dtype", choices=("int64", "uint8"), default="int64", help="label map type (postprocess)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17; default 17)")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript", help="torch.onnx path")
    p.add_argument(
        "--size",
        type=parse_size,
        default=(512, 512),
        help="HxW of the tracing sample (default 512); with --int8, larger images are shrunk to fit it",
    )
    p.add_argument("--num-classes", type=int, default=None, help="classes for a random b0..b5 model (default 150)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    p.add_argument("--atol", type=float, default=1e-4, help="largest accepted |ORT - PyTorch| on logits")
    p.add_argument(
        "--onnxruntime-ops",
        action="store_true",
        help="attention as ONNX Runtime's fused MultiHeadAttention: faster there; the file then runs in ORT only",
    )
    q = p.add_argument_group("INT8 (ONNX Runtime static quantisation, checked against the float export)")
    q.add_argument("--int8", action="store_true", help="write an INT8 model")
    q.add_argument("--calibrate", metavar="IMAGES", default=None, help="folder of typical images (needed by --int8)")
    q.add_argument("--calib-count", type=int, default=64, help="images used for calibration (default 64)")
    q.add_argument("--check-count", type=int, default=32, help="held-out images for the check (default 32)")
    q.add_argument(
        "--min-agreement", type=float, default=0.99, help="least fraction of equal label pixels (default 0.99)"
    )
    q.add_argument("--force", action="store_true", help="write the INT8 model even below --min-agreement")
    q.add_argument(
        "--eval-dataset",
        choices=DATASET_NAMES,
        default=None,
        help="check on this labelled dataset instead of held-out images, and report the mIoU change",
    )
    q.add_argument("--eval-root", default=None, help="root folder of --eval-dataset")
    q.add_argument("--eval-split", default="val", help="split of --eval-dataset (default val)")
    q.add_argument("--eval-max-samples", type=int, default=None, help="check on the first N samples only")
    q.add_argument(
        "--keep-float",
        default=None,
        help="comma-separated node groups left in float (default: the measured choice; see BENCHMARKS.md); "
        "'none' quantises everything",
    )
    q.add_argument("--calibration", choices=("minmax", "entropy", "percentile"), default="minmax", help="ranges")
    q.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per channel")


def run(args: argparse.Namespace) -> int:
    if args.int8:
        return _run_int8(args)
    for flag in ("calibrate", "eval_dataset", "keep_float"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag.replace('_', '-')} only applies with --int8")
    from ..export.onnx import export_onnx

    model = _model(args)
    report = export_onnx(
        model, args.out, sample_size=args.size, onnxruntime_ops=args.onnxruntime_ops, **_export_flags(args)
    )
    print(report.summary())
    return 0


def _model(args: argparse.Namespace) -> Any:
    """The model to export (any spec `model_from_spec` takes), in eval mode; says so when its weights are random."""
    from ..model.loading import model_from_spec, random_weights_note

    model = model_from_spec(args.weights, num_classes=args.num_classes)
    note = random_weights_note(args.weights, model)
    if note:
        print(note)
    return model.eval()


def _export_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The export settings the float and the INT8 export share."""
    return {
        "with_preprocess": args.with_preprocess,
        "with_postprocess": args.with_postprocess,
        "label_dtype": args.label_dtype,
        "opset": args.opset,
        "exporter": args.exporter,
        "check": not args.no_check,
        "atol": args.atol,
    }


def _run_int8(args: argparse.Namespace) -> int:
    import sys

    from ..export.int8 import (
        DEFAULT_KEEP_FLOAT,
        QuantizationRejected,
        QuantizeOptions,
        export_int8,
        require_quantization,
    )

    require_quantization()
    if args.calibrate is None:
        raise ValueError("--int8 needs --calibrate IMAGES: a folder of images like those the model will see")
    if args.eval_dataset is not None and args.eval_root is None:
        raise ValueError("--eval-dataset needs --eval-root (the dataset's root folder)")
    keep = DEFAULT_KEEP_FLOAT
    if args.keep_float is not None:
        keep = () if args.keep_float.strip().lower() == "none" else tuple(g.strip() for g in args.keep_float.split(","))
    options = QuantizeOptions(keep_float=keep, per_channel=not args.per_tensor, calibrate_method=args.calibration)

    model = _model(args)
    dataset, eval_options = _eval_dataset(args, model.config.num_classes)
    try:
        report = export_int8(
            model,
            args.out,
            args.calibrate,
            calib_count=args.calib_count,
            check_count=args.check_count,
            min_agreement=args.min_agreement,
            force=args.force,
            eval_dataset=dataset,
            eval_options=eval_options,
            eval_max_samples=args.eval_max_samples,
            options=options,
            size=args.size,
            **_export_flags(args),
        )
    except QuantizationRejected as e:
        print(e.report.summary())
        print(f"segformer export: refused: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    if not report.passed:
        print(f"segformer export: warning: written below --min-agreement {args.min_agreement} (--force)")
    return 0


def _eval_dataset(args: argparse.Namespace, num_classes: int):
    if args.eval_dataset is None:
        return None, None

    from ..data import LAYOUTS, LabelConvention, build_dataset
    from ..inference import InferenceOptions

    layout = LAYOUTS[args.eval_dataset]
    classes = None if layout.names_classes(args.eval_root, LabelConvention()) else num_classes
    dataset = build_dataset(args.eval_dataset, args.eval_root, args.eval_split, num_classes=classes)
    if len(dataset) == 0:
        raise ValueError(f"{args.eval_root}: no samples in split {args.eval_split!r}")
    options = InferenceOptions.for_dataset(layout.info) if layout.info is not None else InferenceOptions()
    return dataset, options
