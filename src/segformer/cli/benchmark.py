"""Measure inference latency and peak memory; with --compare, beside transformers and ONNX Runtime; with --train, a
training step beside transformers'.

Examples:
  segformer benchmark --model b0 --size 512x512 --threads 2 --compare
  segformer benchmark --train --model b0 --batch 8 --size 256x256 --threads 2
  segformer benchmark --model b0 --dtype bf16 --compile
  segformer benchmark --model runs/demo/model --exported runs/demo/model.onnx runs/demo/model.pte
  segformer benchmark --model nvidia/segformer-b2-finetuned-ade-512-512 --device cuda --dtype fp16 --compare
"""

from __future__ import annotations

import argparse

from ..constants import AMP_DTYPES
from .common import parse_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="b0", help="b0..b5 (random weights) or any checkpoint load_model accepts")
    p.add_argument("--size", type=parse_size, default=(512, 512), help="input HxW (default 512x512)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    dtypes = ("fp32", *(m for m in AMP_DTYPES if m != "none"))
    p.add_argument("--dtype", choices=dtypes, default="fp32", help="also time autocast at this dtype (AMP mode)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(model)")
    p.add_argument("--compare", action="store_true", help="beside transformers eager and ONNX Runtime (both exports)")
    p.add_argument("--unfolded", action="store_true", help="also time the paper-order (unfolded) decoder")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime rows")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--repeats", type=int, default=10, help="timed interleaved rounds (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    p.add_argument("--num-classes", type=int, default=None, help="classes for a random b0..b5 model (default 150)")
    p.add_argument(
        "--exported",
        nargs="+",
        default=(),
        metavar="FILE",
        help="also time these files of `segformer export` (.onnx: ONNX Runtime, .pte: ExecuTorch) on the same input; "
        "give the model they came from as --model",
    )
    p.add_argument("--json", default=None, help="also write the result as JSON to this file")
    p.add_argument(
        "--train",
        action="store_true",
        help="time a training step (forward, loss, backward, AdamW step) against transformers' instead; "
        "checks that losses and gradients agree first (--model b0..b5, --batch, --size, --dtype)",
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from ..apps.benchmark import BenchmarkOptions, run_benchmark, run_train_benchmark
    from ..fileio import write_json

    if args.repeats < 1 or args.batch < 1:
        raise ValueError("--repeats and --batch must be at least 1")
    say = lambda s: print(f"... {s}", file=sys.stderr)  # noqa: E731
    options = BenchmarkOptions(
        size=args.size,
        batch=args.batch,
        threads=args.threads,
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        compare=args.compare,
        unfolded=args.unfolded,
        onnx=not args.no_onnx,
        memory=not args.no_memory,
        repeats=args.repeats,
        warmup=args.warmup,
        num_classes=args.num_classes,
        exported=tuple(args.exported),
    )
    run_one = run_train_benchmark if args.train else run_benchmark
    result = run_one(args.model, options, say)
    print(result.table())
    if args.json:
        write_json(args.json, result.to_dict())
    return 0
