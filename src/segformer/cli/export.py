"""Export a model to ONNX (dynamic batch/height/width), then check it in ONNX Runtime against PyTorch.

Examples:
  segformer export nvidia/segformer-b0-finetuned-ade-512-512 b0.onnx
  segformer export run/best b0_app.onnx --with-preprocess --with-postprocess --label-dtype uint8
"""

from __future__ import annotations

import argparse

from .common import parse_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="any checkpoint load_model accepts (file, folder, hub id); b0..b5 = random weights")
    p.add_argument("out", help="the .onnx file to write")
    p.add_argument("--with-preprocess", action="store_true", help="take uint8 RGB (B, H, W, 3); normalise inside")
    p.add_argument("--with-postprocess", action="store_true", help="upsample to the input size and argmax: labels")
    p.add_argument("--label-dtype", choices=("int64", "uint8"), default="int64", help="label map type (postprocess)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17; default 17)")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript", help="torch.onnx path")
    p.add_argument("--size", type=parse_size, default=(512, 512), help="HxW of the tracing sample (default 512)")
    p.add_argument("--num-classes", type=int, default=None, help="classes for a random b0..b5 model (default 150)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    p.add_argument("--atol", type=float, default=1e-4, help="largest accepted |ORT - PyTorch| on logits")


def run(args: argparse.Namespace) -> int:
    from ..export import export_onnx
    from ..loading import model_from_spec, random_weights_note

    model = model_from_spec(args.weights, num_classes=args.num_classes)
    note = random_weights_note(args.weights, model)
    if note:
        print(note)
    report = export_onnx(
        model.eval(),
        args.out,
        with_preprocess=args.with_preprocess,
        with_postprocess=args.with_postprocess,
        label_dtype=args.label_dtype,
        opset=args.opset,
        exporter=args.exporter,
        sample_size=args.size,
        check=not args.no_check,
        atol=args.atol,
    )
    print(report.summary())
    return 0
