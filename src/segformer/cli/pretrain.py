"""Pretrain a MiT encoder as an ImageNet-style classifier (PVTv2's recipe by default); every setting is a flag.

Data: a folder of class folders per split (ROOT/train/CLASS/*.jpg, ROOT/val/CLASS/*.jpg: ImageNet's layout), or
timm's readers with --dataset hfds/NAME (Hugging Face datasets) or wds/NAME (webdataset shards). RUN/final is an
encoder that `segformer train --pretrained RUN/final` takes, with its licence record ("pretrained by you on DATA").
Multi-GPU: torchrun --nproc-per-node N -m segformer pretrain ... (batch size is per process).

Example (a CPU smoke run):
  segformer pretrain --model b0 --data-root textures --epochs 2 --batch-size 8 --img-size 64 --eval-resize 72
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

HELP = {
    "model": "variant (b0..b5, b0-paper..b4-paper) or a SegFormerConfig .json/.yaml file",
    "dataset": "timm dataset name: empty = class folders under --data-root, hfds/NAME, wds/NAME",
    "lr": "peak learning rate (default: lr-base x global batch / lr-base-size)",
    "drop_path_rate": "stochastic depth (default: 0.1 for b0-b2, 0.3 for b3-b5)",
    "clip_grad": "gradient norm clipping (default: 1.0 for b3-b5, off for b0-b2; 0 = off)",
    "amp": "auto (fp16 on CUDA, none on CPU), none, bf16, fp16",
    "bad_images": "skip (name the file in the log, use the next image) or error",
    "resume": "continue from RUN/last.pt (or previous.pt) with the same settings",
    "deterministic": "deterministic algorithms: a resumed run ends bitwise equal to an uninterrupted one",
}


def _optional(parse: Any) -> Any:
    def parse_or_none(text: str) -> Any:
        return None if text.lower() in ("none", "null") else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")
    return parse_or_none


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..training.pretrain import PretrainConfig

    hints = typing.get_type_hints(PretrainConfig)
    for f in dataclasses.fields(PretrainConfig):
        hint, optional = hints[f.name], False
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
            (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = True
        flag = "--" + f.name.replace("_", "-")
        text = f"{HELP.get(f.name, f.name.replace('_', ' '))} (default: {f.default!r})"
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=text)
        else:
            parse = _optional(hint) if optional else hint
            parser.add_argument(flag, type=parse, default=f.default, metavar=f.name.upper(), help=text)


def run(args: argparse.Namespace) -> int:
    import os

    from ..training.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)})
    if config.bad_images not in ("skip", "error"):
        raise ValueError(f"--bad-images {config.bad_images!r} must be skip or error")
    result = pretrain(config)
    if int(os.environ.get("RANK", 0)) == 0:
        scores = f"top-1 {result.top1:.4f}, top-5 {result.top5:.4f}; " if result.top1 is not None else ""
        print(f"{scores}encoder in {result.out}/final (segformer train --pretrained {result.out}/final)")
    return 0
