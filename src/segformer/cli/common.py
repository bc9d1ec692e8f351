"""Argument helpers shared by the verbs."""

from __future__ import annotations

import argparse


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
