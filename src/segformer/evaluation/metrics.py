"""Segmentation metrics from one confusion matrix, with the mmseg definitions the paper's numbers use.

Over the whole set (never averaged per image), with ``I`` = pixels of class c predicted as c, ``T`` = pixels
labelled c and ``P`` = pixels predicted as c (ignore pixels left out everywhere):

- ``aAcc`` = sum(I) / sum(T)                     (overall pixel accuracy)
- ``IoU_c`` = I / (T + P - I)   NaN when the class is absent from both ground truth and prediction
- ``Acc_c`` = I / T             NaN when the class is absent from the ground truth (as mmseg)
- ``Dice_c`` = 2 I / (T + P)    NaN when the class is absent from both
- ``mIoU`` / ``mAcc`` / ``mDice`` = means over the classes that are not NaN.

All values are fractions in 0..1. Under torch.distributed every rank fills its own matrix and `all_reduce`
sums them once, so the result is exactly that of one process seeing every sample.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor


class ConfusionMatrix:
    """A (K, K) int64 count matrix; rows are ground-truth classes, columns are predicted classes."""

    def __init__(
        self, num_classes: int, ignore_index: int = 255, class_names: tuple[str, ...] | list[str] | None = None
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names) if class_names is not None else None
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix = torch.zeros_like(self.matrix)

    def update(self, pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> None:
        """Count one prediction/label pair of equal shape, (H, W) or (B, H, W); labels equal to ignore_index
        are skipped. A label outside 0..K-1 raises ValueError: it would silently distort every metric."""
        pred = torch.as_tensor(pred)
        target = torch.as_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match label shape {tuple(target.shape)}")
        k = self.num_classes
        target = target.to(device=pred.device, dtype=torch.int64).flatten()
        pred = pred.to(torch.int64).flatten()
        valid = target != self.ignore_index
        target, pred = target[valid], pred[valid]
        if target.numel() == 0:
            return
        bad = (target < 0) | (target >= k)
        if bool(bad.any()):
            value = int(target[bad][0])
            raise ValueError(f"label value {value} is outside 0..{k - 1} (and is not ignore_index {self.ignore_index})")
        bad = (pred < 0) | (pred >= k)
        if bool(bad.any()):
            raise ValueError(f"predicted class {int(pred[bad][0])} is outside 0..{k - 1}")
        counts = torch.bincount(target * k + pred, minlength=k * k).view(k, k)
        if self.matrix.device != counts.device:
            self.matrix = self.matrix.to(counts.device)
        self.matrix += counts

    def all_reduce(self) -> None:
        """Sum the matrices of all torch.distributed ranks (no-op without an initialised process group).
        Call it exactly once, after every rank has finished its share."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        m = self.matrix
        if dist.get_backend() == "nccl" and m.device.type != "cuda":
            m = m.cuda()
        dist.all_reduce(m, op=dist.ReduceOp.SUM)
        self.matrix = m.to(self.matrix.device)

    def compute(self) -> dict[str, Any]:
        """{"aAcc", "mIoU", "mAcc", "mDice": fractions, "per_class": {name-or-index: {"IoU", "Acc", "Dice"}}}."""
        m = self.matrix.detach().cpu().to(torch.float64).numpy()
        inter = np.diag(m)
        label_area = m.sum(axis=1)
        pred_area = m.sum(axis=0)
        union = label_area + pred_area - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, inter / union, np.nan)
            acc = np.where(label_area > 0, inter / label_area, np.nan)
            dice = np.where(label_area + pred_area > 0, 2 * inter / (label_area + pred_area), np.nan)
        total = label_area.sum()
        names = self.class_names
        if names is None or len(set(names)) != len(names):  # duplicate names would merge classes in a dict
            names = tuple(range(self.num_classes))
        return {
            "aAcc": float(inter.sum() / total) if total > 0 else math.nan,
            "mIoU": _nanmean(iou),
            "mAcc": _nanmean(acc),
            "mDice": _nanmean(dice),
            "per_class": {
                name: {"IoU": float(iou[i]), "Acc": float(acc[i]), "Dice": float(dice[i])}
                for i, name in enumerate(names)
            },
        }


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan
