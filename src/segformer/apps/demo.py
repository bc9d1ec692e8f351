"""`make demo`: SegFormer-B0 learns the built-in synthetic scenes from scratch on a laptop CPU, in minutes.

Every step is the library's own code: `synth.write_dataset` makes the data (folder layout), `training.train` trains
(paper loop, from-scratch learning rate), `evaluation.evaluate` measures val mIoU, `visualize` draws the pictures
and `export.export_onnx` writes ONNX when the extra is installed. Nothing is downloaded.

>>> from segformer.demo import run_demo
>>> summary = run_demo("runs/demo", "data/synth")
>>> summary["metrics"]["mIoU"], summary["paths"]["predictions"]
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.datasets import SegmentationDataset
from ..fileio import write_json

log = logging.getLogger("segformer")


@dataclass(frozen=True)
class DemoConfig:
    """The demo recipe. Defaults reach >= 80% val mIoU in under 10 minutes on 2 CPU cores (see README).

    From scratch (no ImageNet weights exist offline) B0 needs a much higher learning rate than the paper's 6e-5
    fine-tuning rate, a short warmup, and no head multiplier (encoder and head both start random).
    """

    train_images: int = 1000
    val_images: int = 100
    size: int = 128  # synthetic images are size x size
    crop: int = 96  # training crops: 0.56x the compute of whole images, so more iterations fit in the time
    iters: int = 2000
    batch_size: int = 16
    lr: float = 2e-3
    head_lr_mult: float = 1.0
    weight_decay: float = 0.01
    warmup_iters: int = 50
    ratio_range: tuple[float, float] = (1.0, 1.25)
    drop_path_rate: float = 0.0
    eval_every: int = 500
    eval_samples: int = 50  # val images per evaluation during training; the final table uses all of them
    num_workers: int = 0
    seed: int = 0
    device: str = "cpu"
    grid_images: int = 6
    onnx: bool = True

    def __post_init__(self) -> None:
        for name in ("train_images", "val_images", "iters", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"demo: {name.replace('_', '-')}={getattr(self, name)} must be >= 1")
        if min(self.size, self.crop) < 32:
            raise ValueError(f"demo: size={self.size} and crop={self.crop} must be at least 32")
        if self.lr <= 0:
            raise ValueError(f"demo: lr={self.lr} must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def run_demo(
    out: str | os.PathLike = "runs/demo",
    data: str | os.PathLike = "data/synth",
    config: DemoConfig | None = None,
) -> dict[str, Any]:
    """Generate data (if absent), train B0 from scratch, evaluate, draw, export; return a summary dict.

    Writes OUT/model/ (hub layout, `load_model` and transformers read it), OUT/metrics.json, OUT/predictions.png
    (val image | ground truth | prediction), OUT/curves.png (loss and mIoU), OUT/model.onnx (with the onnx extra),
    and the training run itself in OUT/train/ (config.yaml, metrics.jsonl, last.pt). A previous demo run in OUT is
    replaced; DATA is reused when it holds the same synthetic spec.
    """
    from ..data.synth import CLASS_NAMES, PALETTE, write_dataset
    from ..evaluation.evaluate import evaluate
    from ..model.loading import create_model
    from ..model.modelcard import training_card
    from ..training import TrainConfig, train

    config = config or DemoConfig()
    out, data = Path(out), Path(data)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    # 1. Data.
    write_dataset(data, config.train_images, config.val_images, config.size, config.seed, progress=True)
    timings["data_s"] = time.perf_counter() - start

    # 2. Train with the library's loop.
    _clear_previous(out)
    size = (config.size, config.size)
    train_config = TrainConfig(
        model="b0",
        dataset="folder",
        data_root=str(data),
        out=str(out / "train"),
        iters=config.iters,
        batch_size=config.batch_size,
        crop=(config.crop, config.crop),
        scale=size,
        ratio_range=config.ratio_range,
        photometric=False,  # colours are random per object already; saves CPU time
        drop_path_rate=config.drop_path_rate,
        lr=config.lr,
        weight_decay=config.weight_decay,
        head_lr_mult=config.head_lr_mult,
        warmup_iters=config.warmup_iters,
        num_workers=config.num_workers,
        eval_every=config.eval_every,
        eval_max_samples=config.eval_samples,
        save_every=0,
        log_every=10,
        seed=config.seed,
        device=config.device,
    )
    torch.manual_seed(config.seed)
    model = create_model(
        "b0", num_classes=len(CLASS_NAMES), class_names=CLASS_NAMES, drop_path_rate=config.drop_path_rate
    )
    tick = time.perf_counter()
    result = train(train_config, model=model)
    timings["train_s"] = time.perf_counter() - tick

    # 3. Evaluate on val with the library's evaluation, at each image's own size.
    from ..data import build_dataset

    val_ds = build_dataset("folder", data, "val")
    tick = time.perf_counter()
    metrics = evaluate(model, val_ds, mode="whole", device=config.device, progress=False)
    timings["eval_s"] = time.perf_counter() - tick

    # 4. Save and draw.
    # The model card: the recipe, and the metrics above (every val image, not the training-time subset).
    card = {**training_card(train_config.replace(eval_max_samples=None), config.iters, metrics), "palette": PALETTE}
    paths: dict[str, Path] = {"data": data, "model": model.save_pretrained(out / "model", card=card)}
    paths["predictions"] = save_predictions(model, val_ds, out / "predictions.png", config.grid_images)
    from ..visualize import plot_curves

    curves = plot_curves(result.history, out / "curves.png")
    if curves is not None:
        paths["curves"] = curves

    # 5. ONNX when the extra is installed.
    if config.onnx:
        onnx_path = _export(model, out / "model.onnx", size)
        if onnx_path is not None:
            paths["onnx"] = onnx_path
    timings["total_s"] = time.perf_counter() - start

    summary = {
        "metrics": metrics,
        "timings": timings,
        "paths": {k: str(v) for k, v in paths.items()},
        "config": config.to_dict(),
        "threads": torch.get_num_threads(),
    }
    paths["metrics"] = out / "metrics.json"
    summary["paths"]["metrics"] = str(paths["metrics"])
    write_json(paths["metrics"], summary)
    return summary


def _clear_previous(out: Path) -> None:
    """Remove an earlier demo's training run (OUT/train), so re-running the demo retrains instead of refusing."""
    previous = out / "train"
    if previous.is_dir():
        if not (previous / "config.yaml").is_file():
            raise ValueError(f"{previous} exists but is not a training run folder; move it or choose another --out")
        shutil.rmtree(previous)


def save_predictions(model: torch.nn.Module, dataset: SegmentationDataset, path: Path, count: int = 6) -> Path:
    """A grid of `count` val samples: image | ground-truth overlay | prediction overlay."""
    from ..inference import Segmenter
    from ..visualize import overlay, save_grid

    segmenter = Segmenter(model)
    from ..data.synth import PALETTE

    names = list(dataset.class_names)
    palette = PALETTE if len(names) == len(PALETTE) else np.asarray(dataset.palette)
    rows = []
    for i in range(min(count, len(dataset))):
        image, mask, _ = dataset.load(i)
        pred = segmenter(image)
        rows.append(
            [
                image,
                overlay(image, mask, palette, names, alpha=0.6, legend=False),
                overlay(image, pred, palette, names, alpha=0.6, legend=False),
            ]
        )
    return save_grid(rows, path, titles=["image", "ground truth", "prediction"])


def _export(model: torch.nn.Module, path: Path, size: tuple[int, int]) -> Path | None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        log.info("onnx/onnxruntime not installed: no ONNX export (pip install 'segformer[onnx]')")
        return None
    from ..export.onnx import export_onnx

    return export_onnx(model, path, sample_size=size).path
