"""Convert any supported checkpoint (official .pth, HF folder or hub id, smp, ours) to a saved folder."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="file, folder or hub id (e.g. nvidia/segformer-b0-finetuned-ade-512-512)")
    p.add_argument("out", help="output folder: config.json + model.safetensors (Hugging Face hub layout)")


def run(args: argparse.Namespace) -> int:
    from ..model.loading import load_model

    model = load_model(args.source)
    folder = model.save_pretrained(args.out)
    print(f"wrote {folder} ({model.config.name}, {model.config.num_classes} classes)")
    return 0
