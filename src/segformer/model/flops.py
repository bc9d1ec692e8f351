"""Parameter and multiply-accumulate counts, measured on the meta device (no memory, no compute).

MACs include the attention matmuls (QK^T and AV), the paper's convention for its "GFLOPs" column.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import SegFormerConfig
from .segformer import SegFormer


def count_macs(config: SegFormerConfig, size: tuple[int, int], batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass at `size` (H, W), as the paper counts them: the decoder in its
    literal order (not the folded one this library runs). FlopCounterMode counts 2 FLOPs per MAC."""
    with torch.device("meta"):
        model = SegFormer(config).eval()
        model.head.fold = False
        x = torch.empty(batch, config.in_channels, *size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def count_params(config: SegFormerConfig) -> dict[str, int]:
    with torch.device("meta"):
        return SegFormer(config).num_parameters()
