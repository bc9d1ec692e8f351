"""Argument helpers shared by the verbs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..data.labels import LabelConvention


def load_for_inference(spec: str) -> Any:
    """What predict, eval and the app run: the model `load_model` reads from `spec`, or for an exported .onnx / .pte
    file its runtime as a forward with the model's config (`export.runtimes.load_runtime`)."""
    from ..export.runtimes import is_runtime_file, load_runtime

    if is_runtime_file(spec):
        return load_runtime(spec)
    from ..model.loading import load_model

    return load_model(spec)


def parse_size(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '512x1024' -> (512, 1024) as (H, W)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must look like 512 or 512x1024 (HxW)") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must look like 512 or 512x1024 (HxW)")
    return parts[0], parts[1]


def add_label_arguments(p: argparse.ArgumentParser, palette_help: str | None = None) -> None:
    """--ignore-index, --reduce-zero-label, --label-map, --palette (segformer.data.labels.LabelConvention)."""
    g = p.add_argument_group("labels", "how mask values become class ids (default: the model's, else as stored)")
    g.add_argument("--ignore-index", type=int, default=None, metavar="N", help="mask value of unlabelled pixels")
    g.add_argument(
        "--reduce-zero-label",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ADE-style masks: 0 = other (ignored), 1..K become classes 0..K-1",
    )
    g.add_argument("--label-map", default=None, metavar="A:B,...", help="remap mask values first, e.g. 255:1")
    g.add_argument(
        "--palette",
        default=None,
        metavar="FILE",
        help=palette_help or "colour masks: CSV with one 'name,r,g,b' line per class (row i = class i)",
    )


def label_convention(args: argparse.Namespace, base: dict[str, Any] | None = None) -> LabelConvention:
    """The LabelConvention of the label flags, each given flag replacing that part of `base` (a model's stored
    `config.labels`)."""
    from ..data.labels import LabelConvention

    return LabelConvention.from_options(
        ignore_index=args.ignore_index,
        reduce_zero_label=args.reduce_zero_label,
        label_map=args.label_map,
        palette=args.palette,
        base=base,
    )


def add_column_arguments(p: argparse.ArgumentParser) -> None:
    """--image-column / --mask-column for --dataset hf."""
    p.add_argument("--image-column", default=None, help="--dataset hf: the image column (default: detected)")
    p.add_argument("--mask-column", default=None, help="--dataset hf: the mask column (default: detected)")


def in_process_group(run: Callable[[argparse.Namespace, Any], int], args: argparse.Namespace, device: Any) -> int:
    """`run(args, device)` inside torchrun's process group when launched by it (joined here, left after), so that
    each process takes its share and rank 0 reports; as it is otherwise."""
    from ..training import distributed as D

    own_group = D.init_distributed(device)
    try:
        return run(args, device)
    finally:
        if own_group:
            D.cleanup()
