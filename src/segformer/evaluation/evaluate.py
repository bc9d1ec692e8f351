"""Evaluate a model on a segmentation dataset: inference at the original size, one confusion matrix, mmseg metrics.

Under torch.distributed each rank takes samples rank, rank + world, ... (no padded sampler, so no sample counts
twice) and the matrices are summed once at the end: every rank returns the same, exact result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.base import SampleSource, as_dataset
from ..data.raster import RasterDataset
from ..fileio import write_json, write_npy
from ..inference import InferenceOptions, Segmenter, iter_same_size
from ..runtime import rank_world
from .metrics import ConfusionMatrix
from .raster import raster_confusion

log = logging.getLogger("segformer")


class _Samples(torch.utils.data.Dataset):
    """The dataset's `load(i)` for a subset of indices, so a DataLoader can read ahead in worker processes."""

    def __init__(self, dataset: SampleSource, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, np.ndarray, np.ndarray, str]:
        i = self.indices[k]
        image, mask, name = self.dataset.load(i)
        return i, image, mask, name


def _identity(x: Any) -> Any:
    return x


def check_labels(mask: np.ndarray, num_classes: int, ignore_index: int, where: str) -> None:
    """Raise a one-line ValueError naming `where` when a label is neither a class id nor ignore_index."""
    values = mask[(mask != ignore_index)]
    if values.size and (int(values.max()) >= num_classes or int(values.min()) < 0):
        bad = int(values.max()) if int(values.max()) >= num_classes else int(values.min())
        raise ValueError(
            f"{where}: label value {bad} is outside the model's {num_classes} classes (0..{num_classes - 1}, "
            f"{ignore_index} = ignore); use a model trained for this dataset or fix the mask"
        )


def evaluate_confusion(
    model: nn.Module,
    dataset: SampleSource,
    options: InferenceOptions | None = None,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    max_samples: int | None = None,
    num_workers: int = 0,
    compile: bool = False,
) -> ConfusionMatrix:
    """The all-reduced confusion matrix of `model` over `dataset` (a `Dataset`, or anything with `len`, `load(i)` ->
    (image (H, W, C): uint8 RGB, or the bands of a multi-band model; mask (H, W), name): see `data.as_dataset`).
    Images are normalised with the statistics in the model's config.

    The model is put in eval mode and given back in the mode it had (training calls this periodically). `model` may
    also be an exported runtime (`export.runtimes.load_runtime`: a forward with a `config`); `compile` runs a PyTorch
    model through `torch.compile` (`Segmenter`).
    """
    from tqdm import tqdm

    options = options or InferenceOptions()
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module  # each rank runs its own share: no gradient sync, no collective inside forward
    dataset = as_dataset(dataset)
    num_classes = model.config.num_classes
    ignore_index = dataset.ignore_index
    names = dataset.class_names
    if names is None or len(names) != num_classes:
        names = model.config.class_names
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index, class_names=names)

    total = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    rank, world = rank_world()
    indices = range(rank, total, world)
    module = isinstance(model, nn.Module)
    was_training = module and model.training
    if device is not None and module:
        model.to(device)
    if isinstance(dataset, RasterDataset):  # whole rasters, tiled as predict writes them
        return raster_confusion(model, dataset, options, progress=progress, max_samples=max_samples)
    segmenter = Segmenter(model, options, compile=compile)  # eval mode
    loader = torch.utils.data.DataLoader(
        _Samples(dataset, indices), batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_identity
    )
    # Whole-image batches of equal-sized images; slide mode already batches the windows of one image.
    limit = options.batch_size if options.mode == "whole" else 1
    bar = tqdm(total=len(indices), desc="eval", unit="img", disable=not progress or rank != 0, leave=False)
    try:
        for group in iter_same_size(loader, lambda s: s[1].shape, limit):
            for i, _, mask, name in group:
                check_labels(np.asarray(mask), num_classes, ignore_index, dataset.path_of(i) or name)
            preds = segmenter.segment(segmenter.prepare([s[1] for s in group])).labels  # (B, H, W)
            for k, (_, _, mask, _) in enumerate(group):
                cm.update(
                    preds[k], torch.from_numpy(np.array(mask)).to(segmenter.device)
                )  # copy: read-only arrays warn
            bar.update(len(group))
    finally:
        bar.close()
        if module:
            model.train(was_training)
    cm.all_reduce()
    return cm


def evaluate(
    model: nn.Module,
    dataset: SampleSource,
    options: InferenceOptions | None = None,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    max_samples: int | None = None,
    num_workers: int = 0,
    compile: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """aAcc, mIoU, mAcc, mDice (fractions) and per-class IoU/Acc/Dice of `model` on `dataset`.

    `options`/`overrides` as `InferenceOptions.build`: by default every image runs at its own size; the paper's
    protocol for a dataset is `evaluate(model, ds, InferenceOptions.for_dataset(ds.info))` (ADE20K: whole at
    (2048, 512), aligned to 32; Cityscapes: slide 1024/768).
    """
    options = InferenceOptions.build(options, **overrides)
    cm = evaluate_confusion(
        model,
        dataset,
        options,
        device=device,
        progress=progress,
        max_samples=max_samples,
        num_workers=num_workers,
        compile=compile,
    )
    return cm.compute()


def _percent(value: float) -> str:
    return "    -" if value != value else f"{100 * value:6.2f}"  # NaN: class absent from labels and predictions


def format_table(metrics: dict[str, Any]) -> str:
    """Per-class IoU / Acc / Dice and the means, in percent, as a plain-text table ('-' = absent class)."""
    per_class = metrics["per_class"]
    width = max([len(str(n)) for n in per_class] + [5])
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}  {'Dice':>6}", "-" * (width + 24)]
    for name, m in per_class.items():
        lines.append(f"{str(name):<{width}}  {_percent(m['IoU'])}  {_percent(m['Acc'])}  {_percent(m['Dice'])}")
    lines.append("-" * (width + 24))
    lines.append(
        f"aAcc {_percent(metrics['aAcc']).strip()}  mIoU {_percent(metrics['mIoU']).strip()}  "
        f"mAcc {_percent(metrics['mAcc']).strip()}  mDice {_percent(metrics['mDice']).strip()}"
    )
    return "\n".join(lines)


def write_report(folder: str | Path, metrics: dict[str, Any], cm: ConfusionMatrix) -> dict[str, Path]:
    """metrics.json (fractions; NaN written as null), confusion.npy (raw counts, rows = ground truth) and
    confusion.png (row-normalised heatmap) in `folder`."""
    from ..visualize import save_confusion

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": folder / "metrics.json", "matrix": folder / "confusion.npy", "png": folder / "confusion.png"}
    write_json(paths["metrics"], metrics)
    matrix = cm.matrix.cpu().numpy()
    write_npy(paths["matrix"], matrix)
    save_confusion(paths["png"], matrix, cm.class_names)
    return paths
