"""Parameters and GMACs of a variant or a checkpoint, beside the paper's figures."""

from __future__ import annotations

import argparse

from .common import parse_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a variant (b0..b5) or any checkpoint load_model accepts (file, folder, hub id)")
    p.add_argument("--size", type=parse_size, default=None, help="input HxW (default: the paper's ADE20K size)")
    p.add_argument("--num-classes", type=int, default=None, help="classes for a variant (default 150, ADE20K)")


def run(args: argparse.Namespace) -> int:
    from ..model.config import PAPER, variant_key
    from ..model.flops import count_macs, count_params
    from ..model.loading import model_from_spec

    config = model_from_spec(args.model, num_classes=args.num_classes).config
    source = f"variant {config.name}" if variant_key(args.model) else f"checkpoint {args.model} (variant {config.name})"
    paper = PAPER.get(config.name)
    size = args.size or ((paper["ade_size"],) * 2 if paper else (512, 512))
    params = count_params(config)
    gmacs = count_macs(config, size) / 1e9
    print(f"{source}: {config.num_classes} classes, in_channels {config.in_channels}")
    print(f"  parameters  encoder {params['encoder']:,}  decoder {params['decoder']:,}  total {params['total']:,}")
    if paper:
        print(f"  paper (Table 1a): encoder {paper['enc_params_m']}M  decoder {paper['dec_params_m']}M")
    line = f"  GMACs at {size[0]}x{size[1]}: {gmacs:.2f} (incl. attention matmuls)"
    if paper and size == (paper["ade_size"],) * 2:
        line += f"; paper (ADE20K, {paper['ade_size']}x{paper['ade_size']}): {paper['ade_gflops']}"
    print(line)
    if paper:
        print(f"  paper mIoU (single scale): ADE20K {paper['ade_miou']}, Cityscapes {paper['city_miou']}")
    return 0
