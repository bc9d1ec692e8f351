"""All-MLP decoder: unify channels per level, upsample to 1/4, fuse, classify (paper section 3.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import to_map, to_tokens


class AllMLPHead(nn.Module):
    """Per-level Linear(C_i -> C), bilinear upsample to the stride-4 size, concat [c4, c3, c2, c1],
    1x1 conv (no bias) + BN + ReLU, Dropout2d, 1x1 classifier. Logits come out at 1/4 of the input size."""

    def __init__(self, in_dims: tuple[int, ...], dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(c, dim) for c in in_dims)
        self.fuse = nn.Conv2d(dim * len(in_dims), dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        size = features[0].shape[-2:]
        levels = []
        for feature, proj in zip(features, self.proj, strict=True):
            x = to_map(proj(to_tokens(feature)), feature.shape[-2:])  # (B, C, h_i, w_i)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            levels.append(x)
        x = torch.cat(levels[::-1], dim=1)  # (B, 4C, H/4, W/4) in the original order c4, c3, c2, c1
        x = F.relu(self.bn(self.fuse(x)))
        return self.classifier(self.dropout(x))
