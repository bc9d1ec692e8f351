"""Parameters, GMACs and licence of a variant or a checkpoint, beside the paper's figures and the variant's twin
(b2 <-> b2-paper: the released code's Mix-FFN widths against the paper's, PVTv2's)."""

from __future__ import annotations

import argparse

from .common import parse_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        help="a variant (b0..b5, b0-paper..b4-paper) or any checkpoint load_model accepts (file, folder, hub id)",
    )
    p.add_argument("--size", type=parse_size, default=None, help="input HxW (default: the paper's ADE20K size)")
    p.add_argument("--num-classes", type=int, default=None, help="classes for a variant (default 150, ADE20K)")


def run(args: argparse.Namespace) -> int:
    from ..model.config import PAPER, SegFormerConfig, paper_twin, variant_key
    from ..model.flops import count_macs, count_params
    from ..model.licence import summary
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
    for line in _imagenet_lines(config.name):
        print(line)
    twin = paper_twin(config.name)
    if twin:
        other = SegFormerConfig.from_name(twin, num_classes=config.num_classes, in_channels=config.in_channels)
        p, g = count_params(other), count_macs(other, size) / 1e9
        print(
            f"  {twin} (Mix-FFN {','.join(map(str, other.mlp_ratios))}): encoder {p['encoder']:,}  total "
            f"{p['total']:,}  GMACs at {size[0]}x{size[1]}: {g:.2f}"
        )
    print(f"  licence: {summary(config.licence)}")
    return 0


def _imagenet_lines(name: str) -> list[str]:
    """Paper Table 7 (ImageNet) for the rows whose shapes it counts, and where Apache-2.0 weights of them are."""
    from ..model.config import IMAGENET

    if name not in IMAGENET:
        return []
    params_m, gflops, top1 = IMAGENET[name]
    pvt = "pvt_v2_" + name.removesuffix("-paper")
    return [
        f"  paper (Table 7, ImageNet 224x224, 1000 classes): {params_m}M params, {gflops} GFLOPs, top-1 {top1}",
        f"  = PVTv2-{name[:2].upper()}: Apache-2.0 ImageNet weights timm/{pvt}.in1k or whai362's {pvt}.pth",
    ]
