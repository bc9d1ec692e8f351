"""mIoU against test resolution: one evaluation per `InferenceOptions`, the same spine as every eval.

Two ways to change the resolution the network sees (the paper's Table 1c compares a model at its training crop with
the same model on whole, larger images):

- `scale_points(options, ratios)`: every test scale (and TTA ratio) multiplied by a ratio: the image itself is
  resized, so objects grow with the input (`segformer eval --sweep-scales 0.5,1,1.5,2`);
- `window_points(options, sizes)`: the images stay at the test scale and the network runs on windows of each size
  (slide mode, stride = window, so windows do not overlap except the last one, which ends at the border): the input
  grows, the objects do not, as in the paper's "768x768 slide" against "1024x2048 whole" (`--sweep-sizes`).

`resolution_sweep` evaluates each point with `evaluate_confusion`, so under torchrun every point's matrix is summed
over the processes exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..protocol import InferenceOptions
from .evaluate import evaluate_confusion


@dataclass(frozen=True)
class SweepPoint:
    """One test resolution: a label for tables and plots, its x value (ratio or window side) and the options."""

    label: str
    x: float
    options: InferenceOptions


def scale_points(options: InferenceOptions, ratios: Sequence[float]) -> list[SweepPoint]:
    """`options` with the test scale multiplied by each ratio (each TTA ratio too; scale None: the image size)."""
    if not ratios or min(ratios) <= 0:
        raise ValueError(f"resolution ratios {list(ratios)} must be positive numbers such as 0.5,1,1.5,2")
    return [
        SweepPoint(f"{r:g}x", float(r), options.replace(scales=tuple(r * s for s in options.ratios))) for r in ratios
    ]


def window_points(options: InferenceOptions, sizes: Sequence[tuple[int, int]]) -> list[SweepPoint]:
    """`options` in slide mode with windows (and strides) of each (H, W) size, at the options' test scale. A window
    larger than the image pads it with the mean colour, as mmseg's slide inference does."""
    if not sizes or min(min(s) for s in sizes) < 1:
        raise ValueError(f"window sizes {list(sizes)} must be positive, such as 128,192,256")
    return [
        SweepPoint(f"{h}x{w}", float(h), options.replace(mode="slide", crop=(h, w), stride=(h, w))) for h, w in sizes
    ]


def resolution_sweep(
    model: nn.Module,
    dataset: Any,
    points: Sequence[SweepPoint],
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    max_samples: int | None = None,
    num_workers: int = 0,
) -> list[dict[str, Any]]:
    """One row per point: {"label", "x", "options" (protocol dict), "mIoU", "aAcc", "metrics" (full)}."""
    rows = []
    for point in points:
        cm = evaluate_confusion(
            model,
            dataset,
            point.options,
            device=device,
            progress=progress,
            max_samples=max_samples,
            num_workers=num_workers,
        )
        metrics = cm.compute()
        rows.append(
            {
                "label": point.label,
                "x": point.x,
                "options": point.options.to_dict(),
                "mIoU": metrics["mIoU"],
                "aAcc": metrics["aAcc"],
                "metrics": metrics,
            }
        )
    return rows


def format_sweep(rows: Sequence[dict[str, Any]], title: str = "resolution") -> str:
    """A text table: resolution, mIoU % and its change from the reference row (the "1x" point of a scale sweep,
    else the first row)."""
    ref = next((r for r in rows if r["label"] == "1x"), rows[0] if rows else None)
    base = ref["mIoU"] if ref is not None else float("nan")
    head = f"change from {ref['label']}" if ref is not None else "change"
    lines = [f"{title:<12}  {'mIoU':>6}  {head:>16}", "-" * 38]
    for row in rows:
        lines.append(f"{row['label']:<12}  {100 * row['mIoU']:6.2f}  {100 * (row['mIoU'] - base):+16.2f}")
    return "\n".join(lines)
