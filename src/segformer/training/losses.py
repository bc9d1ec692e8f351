"""Training losses. `segmentation_loss` is the paper's: cross-entropy over labelled pixels at label resolution."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..constants import IGNORE_INDEX


def segmentation_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Cross-entropy over labelled pixels, logits upsampled (bilinear) to the label size, as the original.

    A batch without any labelled pixel gives 0 (not NaN), so a crop of pure 'ignore' cannot stop a run.
    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    count = (target != ignore_index).sum().clamp(min=1)
    return total / count
