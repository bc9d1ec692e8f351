"""Export a model for deployment, every format behind one accuracy gate.

`--format onnx` (default): ONNX with dynamic batch/height/width, checked in ONNX Runtime against PyTorch;
`--format int8` (or `--int8` with onnx): ONNX Runtime static INT8 calibrated on your images; `--format executorch`:
an ExecuTorch .pte with the XNNPACK delegate (`--int8`: PT2E int8 calibrated on your images); `--format tensorrt`: a
TensorRT fp16 engine with LayerNorm and Softmax in fp32 (NVIDIA GPUs; untested here).

Before the file is written, the export runs through the inference spine next to the float PyTorch model, on held-out
images (--check-images, or those held out from --calibrate), or --eval-dataset (which also gives the mIoU change),
or a few synthetic scenes; below --min-agreement of equal label pixels it is refused (one line, exit code 1,
nothing written) unless --force. The report says what was kept in higher precision and why.

Examples:
  segformer export nvidia/segformer-b0-finetuned-ade-512-512 b0.onnx
  segformer export run/best b0_app.onnx --with-preprocess --with-postprocess --label-dtype uint8
  segformer export runs/demo/model b0_int8.onnx --int8 --calibrate data/synth/images/train --calib-count 64
  segformer export runs/demo/model b0.pte --format executorch --check-images data/synth/images/val
  segformer export runs/demo/model b0_int8.pte --format executorch --int8 --calibrate data/synth/images/train
"""

from __future__ import annotations

import argparse
from typing import Any

from ..data.layouts import DATASET_NAMES
from ..export.formats import FORMATS
from .common import parse_size

KEEP_FLOAT_HELP = (
    "ONNX INT8: comma-separated node groups left in float (default: the measured choice; see BENCHMARKS.md); "
    "'none' quantises everything"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="any checkpoint load_model accepts (file, folder, hub id); b0..b5 = random weights")
    p.add_argument("out", help="the file to write (.onnx, .pte, .engine)")
    p.add_argument("--format", choices=tuple(FORMATS), default="onnx", help="what to write (default onnx)")
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
    e = p.add_argument_group("ExecuTorch")
    e.add_argument("--max-size", type=int, default=1024, help="largest height/width the .pte takes (default 1024)")
    e.add_argument("--fixed-size", action="store_true", help="a .pte for --size inputs only (run as slide windows)")
    q = p.add_argument_group("INT8 (onnx: ONNX Runtime static quantisation; executorch: PT2E with XNNPACK)")
    q.add_argument("--int8", action="store_true", help="write an INT8 model")
    q.add_argument("--calibrate", metavar="IMAGES", default=None, help="folder of typical images (needed by --int8)")
    q.add_argument("--calib-count", type=int, default=64, help="images used for calibration (default 64)")
    q.add_argument("--keep-float", default=None, help=KEEP_FLOAT_HELP)
    q.add_argument("--calibration", choices=("minmax", "entropy", "percentile"), default="minmax", help="ranges")
    q.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per channel")
    g = p.add_argument_group("the accuracy gate (every format)")
    g.add_argument("--check-images", metavar="IMAGES", default=None, help="images to check a float export on")
    g.add_argument("--check-count", type=int, default=32, help="held-out images for the check (default 32)")
    g.add_argument(
        "--min-agreement", type=float, default=0.99, help="least fraction of equal label pixels (default 0.99)"
    )
    g.add_argument("--force", action="store_true", help="write the export even below --min-agreement")
    g.add_argument(
        "--eval-dataset",
        choices=DATASET_NAMES,
        default=None,
        help="check on this labelled dataset instead of held-out images, and report the mIoU change",
    )
    g.add_argument("--eval-root", default=None, help="root folder of --eval-dataset")
    g.add_argument("--eval-split", default="val", help="split of --eval-dataset (default val)")
    g.add_argument("--eval-max-samples", type=int, default=None, help="check on the first N samples only")


def run(args: argparse.Namespace) -> int:
    """Write the export if it passes the gate; below it, the report, one line on stderr and exit 1."""
    import sys

    from ..export.gate import ExportRejected

    int8_onnx = args.format == "int8" or (args.format == "onnx" and args.int8)
    if not int8_onnx:
        if args.int8 and args.format != "executorch":
            raise ValueError(f"--int8 applies to --format onnx and executorch, not {args.format}")
        for flag in ("calibrate", "keep_float"):
            if getattr(args, flag) is not None and not (flag == "calibrate" and args.int8):
                raise ValueError(f"--{flag.replace('_', '-')} only applies with --int8")
    try:
        report = _run_int8(args) if int8_onnx else _run_gated(args)
    except ExportRejected as e:  # INT8 ONNX's QuantizationRejected too
        print(e.report.summary())
        print(f"segformer export: refused: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    if not report.passed:
        print(f"segformer export: warning: written below --min-agreement {args.min_agreement} (--force)")
    return 0


def _run_gated(args: argparse.Namespace) -> Any:
    """Any format but INT8 ONNX: written by `export_model` if it passes the gate (its GateReport)."""
    from ..export.formats import GateSettings, export_model

    model = _model(args)
    dataset, eval_options = _eval_dataset(args, model.config.num_classes)
    settings = GateSettings(
        min_agreement=args.min_agreement,
        force=args.force,
        check_images=args.check_images,
        check_count=args.check_count,
        eval_dataset=dataset,
        eval_options=eval_options,
        eval_max_samples=args.eval_max_samples,
        size=args.size,
    )
    return export_model(
        model,
        args.out,
        args.format,
        settings=settings,
        int8=args.int8,
        calibrate=args.calibrate,
        calib_count=args.calib_count,
        **_format_options(args),
    )


def _format_options(args: argparse.Namespace) -> dict[str, Any]:
    """The writer's own options (`export_model(**options)`)."""
    if args.format == "onnx":
        return {"sample_size": args.size, "onnxruntime_ops": args.onnxruntime_ops, **_export_flags(args)}
    if args.format == "executorch":
        return {"sample_size": args.size, "max_size": args.max_size, "dynamic": not args.fixed_size}
    return {}


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


def _run_int8(args: argparse.Namespace) -> Any:
    """INT8 ONNX: ONNX Runtime's quantiser, then the same gate (its QuantizationReport)."""
    from ..export.int8 import (
        DEFAULT_KEEP_FLOAT,
        QuantizeOptions,
        export_int8,
        require_quantization,
    )

    require_quantization()
    if args.calibrate is None:
        raise ValueError("--int8 needs --calibrate IMAGES: a folder of images like those the model will see")
    keep = DEFAULT_KEEP_FLOAT
    if args.keep_float is not None:
        keep = () if args.keep_float.strip().lower() == "none" else tuple(g.strip() for g in args.keep_float.split(","))
    options = QuantizeOptions(keep_float=keep, per_channel=not args.per_tensor, calibrate_method=args.calibration)

    model = _model(args)
    dataset, eval_options = _eval_dataset(args, model.config.num_classes)
    return export_int8(
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


def _eval_dataset(args: argparse.Namespace, num_classes: int):
    if args.eval_dataset is None:
        return None, None
    if args.eval_root is None:
        raise ValueError("--eval-dataset needs --eval-root (the dataset's root folder)")

    from ..data import LAYOUTS, LabelConvention, build_dataset
    from ..inference import InferenceOptions

    layout = LAYOUTS[args.eval_dataset]
    classes = None if layout.names_classes(args.eval_root, LabelConvention()) else num_classes
    dataset = build_dataset(args.eval_dataset, args.eval_root, args.eval_split, num_classes=classes)
    if len(dataset) == 0:
        raise ValueError(f"{args.eval_root}: no samples in split {args.eval_split!r}")
    options = InferenceOptions.for_dataset(layout.info) if layout.info is not None else InferenceOptions()
    return dataset, options
