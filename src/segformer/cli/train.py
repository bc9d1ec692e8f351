"""Train a SegFormer (the paper's recipe by default); every TrainConfig field is a flag.

Settings are layered: the dataset's preset (ade20k, cityscapes, coco-stuff, voc), then the settings of --schedule
(short), then RUN_DIR/config.yaml when resuming, then --config FILE (YAML), then flags. The resolved config is written
to RUN_DIR/config.yaml.
Multi-GPU: torchrun --nproc-per-node N -m segformer train ... (batch size is per process).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any


def _optional(parse: Any) -> Any:
    def parse_or_none(text: str) -> Any:
        return None if text.lower() in ("none", "null") else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")
    return parse_or_none


def _pair_of_floats(text: str) -> tuple[float, float]:
    try:
        parts = tuple(float(p) for p in text.replace(":", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must look like 0.5,2.0") from None
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"{text!r} must look like 0.5,2.0")
    return parts  # type: ignore[return-value]


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} must be numbers separated by commas, e.g. 120.5,98,87.2,60"
        ) from None


HELP = {
    "dataset": "ade20k, cityscapes, voc, coco-stuff, folder (ROOT/images/SPLIT, ROOT/masks/SPLIT), hf, or raster "
    "(GeoTIFF image and label rasters in the folder layout; needs segformer[geo])",
    "data_root": "dataset root folder (--dataset hf: hub id, save_to_disk folder or folder of parquet files)",
    "ignore_index": "mask value that marks unlabelled pixels (becomes the internal 255)",
    "reduce_zero_label": "ADE-style masks: 0 = other (ignored), 1..K become classes 0..K-1",
    "label_map": "remap mask values first, e.g. 255:1 for 0/255 binary masks (FROM:TO,...)",
    "palette": "colour masks: CSV file with one 'name,r,g,b' line per class (row i = class i)",
    "image_column": "--dataset hf: the image column (default: image, pixel_values, ...)",
    "mask_column": "--dataset hf: the mask column (default: label, annotation, semantic_map, mask, ...)",
    "out": "run folder (checkpoints, config.yaml, metrics.jsonl, best/, final/, curves.png)",
    "model": "variant (b0..b5 released, b0-paper..b4-paper = PVTv2 shapes), auto (the variant of --pretrained), or a "
    "SegFormerConfig .json/.yaml file",
    "pretrained": "ImageNet encoder weights: file, folder or hub id such as nvidia/mit-b0 (non-commercial), "
    "timm/pvt_v2_b2.in1k (Apache-2.0, with --model b2-paper or auto), or RUN/final of segformer pretrain",
    "pretrained_partial": "load what fits of an encoder with other FFN widths (PVTv2-B0..B4 into the released "
    "B0..B4) and re-initialise the rest, listing it",
    "crop": "training crop, 512 or HxW",
    "scale": "resize img_scale LONGxSHORT, e.g. 2048x512",
    "batch_size": "per process; global batch = batch size x processes x grad accumulation",
    "global_batch": "keep this global batch for any number of processes: grad accumulation adapts (elastic runs)",
    "num_workers": "DataLoader workers per process (default: the cores of this machine per process, less one, max 8)",
    "amp": "mixed precision: none, bf16, fp16 (with a grad scaler)",
    "compile": "torch.compile the training forward and backward (runs eagerly, with a note, where it cannot)",
    "eval_every": "evaluate (whole-image) every N iterations, keeping best/ by mIoU; 0 = only at the end",
    "resume": "continue from RUN_DIR/last.pt, or previous.pt when last.pt is unreadable (settings from "
    "RUN_DIR/config.yaml unless overridden); a torchrun restart of the same run continues without it",
    "deterministic": "deterministic algorithms: a resumed run ends with the same weights as an uninterrupted one",
    "tensorboard": "also log to RUN_DIR/tensorboard (needs the tensorboard package)",
    "device": "auto, cpu, cuda, cuda:1",
    "loss": "NAME[:WEIGHT],... summed; names: ce, ohem, dice, focal, lovasz (e.g. ce:1.0,dice:0.5)",
    "class_weights": "auto (ENet: 1/ln(1.02 + class pixel share)), w1,w2,... (one per class), or a FILE of numbers",
    "avg_non_ignore": "cross-entropy mean over labelled pixels (mmseg avg_non_ignore=True) or over all pixels",
    "ohem_thresh": "OHEM: pixels whose true-class probability is below this are hard",
    "ohem_min_kept": "OHEM: keep at least this many hardest pixels per image",
    "in_channels": "image channels; other than 3: multi-band TIFF or .npy images",
    "mean": "per-channel mean of the raw pixel values, comma-separated (default: ImageNet for 3, else computed)",
    "std": "per-channel std of the raw pixel values, comma-separated (default: ImageNet for 3, else computed)",
    "freeze_encoder": "freeze the whole encoder: only the decoder head trains",
    "freeze_stages": "freeze the first K encoder stages (0..4)",
    "schedule": "short: for a few thousand iterations or fewer on a small dataset (no scale jitter, no photometric "
    "distortion, no warmup); its settings go over the dataset preset, under --config and flags",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..training.config import TrainConfig  # light: dataclasses and yaml only
    from .common import parse_size

    parser.add_argument("--config", type=Path, default=None, metavar="FILE", help="YAML file of TrainConfig fields")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        hint = hints[f.name]
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
        if optional:
            (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        flag = "--" + f.name.replace("_", "-")
        default_text = f"default: {f.default}" if f.default is not None else "default: from the dataset/preset"
        help_text = f"{HELP[f.name]} ({default_text})" if f.name in HELP else default_text
        if f.name in ("num_workers", "global_batch"):
            help_text = HELP[f.name]
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
            continue
        if typing.get_origin(hint) is tuple and typing.get_args(hint)[-1] is Ellipsis:
            parse: Any = _floats
        elif typing.get_origin(hint) is tuple:
            parse = parse_size if typing.get_args(hint)[0] is int else _pair_of_floats
        else:
            parse = hint
        parser.add_argument(
            flag,
            type=_optional(parse) if optional else parse,
            default=argparse.SUPPRESS,  # absent unless given, so an explicit "none" can override a preset
            metavar=f.name.upper(),
            help=help_text,
        )


def resolve_config(args: argparse.Namespace) -> Any:
    """The TrainConfig the layers (preset < schedule < run config.yaml on resume < --config < flags) add up to."""
    from ..training.config import TrainConfig, read_yaml

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    file_values = read_yaml(args.config) if args.config is not None else {}
    run_values: dict[str, Any] = {}
    if flags.get("resume", file_values.get("resume", False)):
        out = flags.get("out", file_values.get("out"))
        if out and (Path(out) / "config.yaml").is_file():
            run_values = read_yaml(Path(out) / "config.yaml")
    merged = {**run_values, **file_values, **flags}
    dataset = merged.get("dataset", TrainConfig.dataset)
    return TrainConfig.from_preset(dataset, **merged)


def run(args: argparse.Namespace) -> int:
    from ..training import train

    config = resolve_config(args)
    result = train(config)
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun only rank 0 reports
        return 0
    if result.final_metrics is not None:
        print(
            f"final mIoU {result.final_metrics['mIoU']:.4f} (best {result.best_miou:.4f}); model in {result.out}/final"
        )
    else:
        print(f"model in {result.out}/final")
    return 0
