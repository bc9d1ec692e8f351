"""Short runs from scratch on small datasets: a plain training loop against `segformer train`, side by side.

The plain loop is what people write first: squash-resize every image to the crop size, random horizontal flip, AdamW
with one learning rate for every parameter, the learning rate decayed linearly to 0, cross-entropy. It is evaluated
the way it trained (each val image squashed to the crop size, the logits resized back to the image). Ours is
`segformer.training.train` with a recipe: the paper's (`paper`: scale jitter 0.5-2.0, crops, photometric distortion,
head lr x10, warmup 1500), `--schedule short` (`short`), or the ablations in between (`--ablation`); it is evaluated
as training does (whole images at the training scale). Every run of a seed starts from the same initial weights,
sees the same data and trains for the same number of iterations at the same batch size and learning rate.

Two datasets, built differently: `synth`, the built-in synthetic set (`segformer synth`: square 160x160 images,
7 classes told apart by shape and texture, colour random) and `street`, generated street scenes
(`benchmarks/street_scenes.py`: 180x240, CamVid's 11 classes and a void label, colour and position informative,
very imbalanced, per-image lighting). Crops are 128x128; the plain loop squashes to 128x128.

Each run is its own process (`--jobs` at a time, `--threads` each); the table gives val mIoU (mean and spread over
the seeds) and seconds per training iteration (data loading included).

    python benchmarks/short_runs.py --iters 1000 --seeds 0 1 2 --jobs 2
    python benchmarks/short_runs.py --iters 1000 --seeds 0 1 2 --jobs 12 --device cuda --workers 1 --ablation
    python benchmarks/short_runs.py --datasets street --recipes plain short "short, whole images at short side = crop"
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from job_pool import run_jobs  # noqa: E402


@dataclass(frozen=True)
class DataSpec:
    size: tuple[int, int]  # image (H, W)
    train: int
    val: int
    whole_crop: tuple[int, int]  # the whole image at the crop's long side (keeping aspect)


DATASETS = {
    "synth": DataSpec(size=(160, 160), train=300, val=100, whole_crop=(128, 128)),
    "street": DataSpec(size=(180, 240), train=360, val=100, whole_crop=(96, 128)),
}
CROP = (128, 128)

# Recipes of ours: TrainConfig fields over the paper's recipe (the TrainConfig defaults), and where they train:
# 128x128 crops of the images at their own size, or "whole": True, whole images rescaled to fit in the crop (keeping
# aspect), or "fit": rescaled so that the short side is 128, then cropped to 128x128 ("short") or taken whole
# ("whole", e.g. 128x171 for 180x240 images).
RECIPES: dict[str, dict[str, Any] | None] = {
    "plain": None,  # the plain loop
    "paper": {},
    "short": {"schedule": "short"},
}
_T = {"warmup_iters": 100, "ratio_range": (1.0, 1.0), "photometric": False}
ABLATION: dict[str, dict[str, Any]] = {
    # One part of the paper's recipe at a time, towards the plain loop.
    "paper, warmup 1500 -> 100": {"warmup_iters": 100},
    "paper, head lr x10 -> x1": {"head_lr_mult": 1.0},
    "paper, jitter 0.5-2.0 -> 0.75-1.5": {"ratio_range": (0.75, 1.5)},
    "paper, jitter 0.5-2.0 -> none": {"ratio_range": (1.0, 1.0)},
    "paper, photometric off": {"photometric": False},
    "paper, whole images": {"whole": True},
    "paper, all five towards plain": {
        "warmup_iters": 0, "head_lr_mult": 1.0, "ratio_range": (1.0, 1.0), "photometric": False, "whole": True,
    },
    # From a candidate short recipe (S), one part at a time.
    "S = warmup 100, x1, jitter 0.75-1.5": {"warmup_iters": 100, "head_lr_mult": 1.0, "ratio_range": (0.75, 1.5)},
    "S, photometric off": {"warmup_iters": 100, "head_lr_mult": 1.0, "ratio_range": (0.75, 1.5), "photometric": False},
    "S, jitter 0.5-2.0": {"warmup_iters": 100, "head_lr_mult": 1.0},
    "S, jitter none": {"warmup_iters": 100, "head_lr_mult": 1.0, "ratio_range": (1.0, 1.0)},
    "S, whole images": {"warmup_iters": 100, "head_lr_mult": 1.0, "ratio_range": (0.75, 1.5), "whole": True},
    "S, head lr x10": {"warmup_iters": 100, "ratio_range": (0.75, 1.5)},
    "S, warmup 0": {"warmup_iters": 0, "head_lr_mult": 1.0, "ratio_range": (0.75, 1.5)},
    "S, drop path 0": {"warmup_iters": 100, "head_lr_mult": 1.0, "ratio_range": (0.75, 1.5), "drop_path_rate": 0.0},
    # T: no jitter, no photometric distortion, head lr x10, warmup 100; one part at a time.
    "T = warmup 100, x10, no jitter, no photometric": _T,
    "T, warmup 0": {**_T, "warmup_iters": 0},
    "T, head lr x1": {**_T, "head_lr_mult": 1.0},
    "T, photometric on": {**_T, "photometric": True},
    "T, jitter 0.75-1.25": {**_T, "ratio_range": (0.75, 1.25)},
    "T, short side = crop": {**_T, "fit": "short"},
    "T, whole images": {**_T, "whole": True},
    "T, short side = crop, jitter 1.0-1.4": {**_T, "fit": "short", "ratio_range": (1.0, 1.4)},
    # The short schedule on other geometries.
    "short, whole images": {"schedule": "short", "whole": True},
    "short, short side = crop": {"schedule": "short", "fit": "short"},
    "short, whole images at short side = crop": {"schedule": "short", "fit": "whole"},
    "short, drop path 0": {"schedule": "short", "drop_path_rate": 0.0},
}  # fmt: skip


# ------------------------------------------------------------------------------------------------------ data


def make_data(name: str, root: Path) -> Path:
    """The dataset `name` under root/name (generated once; kept when it is already there)."""
    spec = DATASETS[name]
    folder = root / name
    if name == "synth":
        from segformer.data.synth import write_dataset

        write_dataset(folder, spec.train, spec.val, spec.size[0], seed=0, progress=False)
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from street_scenes import write_street

        write_street(folder, spec.train, spec.val, *spec.size)
    return folder


# ------------------------------------------------------------------------------------------------ plain loop


class SquashedSet:
    """Training samples of the plain loop: the image squashed (bilinear) and the mask (nearest) to `size`, a random
    horizontal flip, ImageNet normalisation."""

    def __init__(self, dataset: Any, size: tuple[int, int]) -> None:
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        import torch
        from PIL import Image

        from segformer.constants import MEAN, STD

        image, mask, _ = self.dataset.load(i)
        h, w = self.size
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR), np.float32)
        mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))
        if torch.rand(()) < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        x = (torch.from_numpy(image.copy()) - torch.tensor(MEAN)) / torch.tensor(STD)
        return x.permute(2, 0, 1).contiguous(), torch.from_numpy(mask.astype(np.int64))


def squashed(model: Any, size: tuple[int, int]) -> Any:
    """`model` run on the input squashed to `size` (for evaluating the plain loop as it trained)."""
    from torch import nn
    from torch.nn import functional as F

    class Squashed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.config = model, model.config

        def forward(self, x: Any) -> Any:  # logits at size/4; evaluation resizes them to the image
            return self.inner(F.interpolate(x, size=size, mode="bilinear", align_corners=False))

    return Squashed()


def train_plain(config: Any, model: Any, train_ds: Any) -> float:
    """The plain loop; returns seconds per iteration."""
    import torch
    from torch.nn import functional as F

    device = torch.device(config.device)
    model.to(device).train()
    loader = torch.utils.data.DataLoader(
        SquashedSet(train_ds, config.crop),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),
        persistent_workers=config.num_workers > 0,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0 - it / config.iters)
    batches = iter(loader)
    start = time.perf_counter()
    for _ in range(config.iters):
        try:
            images, masks = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, masks = next(batches)
        images, masks = images.to(device), masks.to(device)
        logits = F.interpolate(model(images), size=masks.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, masks, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / config.iters


# ------------------------------------------------------------------------------------------------------ jobs


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One training run (plain loop or ours) and its val metrics."""
    import torch

    from segformer.data import build_dataset
    from segformer.evaluation import evaluate
    from segformer.training import TrainConfig, train
    from segformer.training.build import build_model, class_names

    torch.set_num_threads(job["threads"])
    spec = DATASETS[job["dataset"]]
    recipe = dict(RECIPES.get(job["recipe"]) or ABLATION.get(job["recipe"]) or {})
    crop, scale = CROP, (max(spec.size), min(spec.size))  # crops at the images' own scale
    if recipe.pop("whole", False):
        crop, scale = spec.whole_crop, (max(spec.whole_crop), min(spec.whole_crop))
    fit = recipe.pop("fit", None)
    if fit is not None:  # rescaled so that the short side is the crop's, then cropped ("short") or whole ("whole")
        scale = (round(max(spec.size) * min(CROP) / min(spec.size)), min(CROP))
        if fit == "whole":
            crop = tuple(round(side * min(CROP) / min(spec.size)) for side in spec.size)
    config = TrainConfig.from_preset(
        "folder",
        **recipe,
        model="b0",
        data_root=job["root"],
        out=job["out"],
        iters=job["iters"],
        batch_size=8,
        crop=crop,
        scale=scale,
        lr=job["lr"],
        num_workers=job["workers"],
        eval_every=0,
        save_every=0,
        log_every=max(1, job["iters"] // 10),
        seed=job["seed"],
        device=job["device"],
    )
    train_ds = build_dataset("folder", job["root"], "train")
    val_ds = build_dataset("folder", job["root"], "val")
    torch.manual_seed(job["seed"])  # the same initial weights for every recipe of a seed
    model = build_model(config, int(train_ds.num_classes), class_names(train_ds))
    start = time.perf_counter()
    if RECIPES.get(job["recipe"], {}) is None:
        sec_per_iter = train_plain(config, model, train_ds)
        metrics = evaluate(squashed(model, crop), val_ds, mode="whole", device=config.device, progress=False)
    else:
        result = train(config, model=model, train_dataset=train_ds, val_dataset=val_ds)
        metrics = result.final_metrics
        times = [r["sec_per_iter"] for r in result.history if "sec_per_iter" in r]
        sec_per_iter = float(np.mean(times))
    return {
        **job,
        "mIoU": metrics["mIoU"],
        "aAcc": metrics["aAcc"],
        "per_class": {k: v["IoU"] for k, v in metrics["per_class"].items()},
        "sec_per_iter": sec_per_iter,
        "seconds": time.perf_counter() - start,
    }


def run_all(jobs: list[dict[str, Any]], parallel: int, log_dir: Path, results: Path, deadline: float) -> list[dict]:
    """Run `jobs` as subprocesses, `parallel` at a time; results appended to `results` (JSON lines) as they end.
    Jobs not started by `deadline` (time.time()) are skipped."""

    def record(r: dict[str, Any]) -> None:
        with results.open("a") as f:
            f.write(json.dumps(r) + "\n")
        print(
            f"{r['dataset']:<7} {r['recipe']:<38} seed {r['seed']}  mIoU {100 * r['mIoU']:5.1f}"
            f"  {r['sec_per_iter']:.3f} s/it  ({r['seconds']:.0f} s)",
            flush=True,
        )

    threads = jobs[0]["threads"] if jobs else 1
    label = lambda job: f"{job['dataset']} {job['recipe']} seed {job['seed']}"  # noqa: E731
    return run_jobs(__file__, jobs, parallel, log_dir, label, record, threads, deadline)


def table(records: list[dict], recipes: list[str], datasets: list[str]) -> str:
    """Markdown: per recipe and dataset, mean val mIoU (min-max over seeds) and mean s/it."""
    header = "| recipe | " + " | ".join(f"{d} mIoU % (min-max) | {d} s/it" for d in datasets) + " |"
    lines = [header, "|---|" + "---:|---:|" * len(datasets)]
    for recipe in recipes:
        cells = []
        for d in datasets:
            rs = [r for r in records if r["recipe"] == recipe and r["dataset"] == d]
            if not rs:
                cells += ["-", "-"]
                continue
            m = [100 * r["mIoU"] for r in rs]
            spread = f" ({min(m):.1f}-{max(m):.1f})" if len(m) > 1 else ""
            cells += [f"{np.mean(m):.1f}{spread}", f"{np.mean([r['sec_per_iter'] for r in rs]):.3f}"]
        lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    from segformer.apps.benchmark import cpu_model

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"CPU {cpu_model()}, {os.cpu_count()} cores visible, load average {load}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/short-runs"), help="data and run folders go here")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), help="names in RECIPES or ABLATION")
    parser.add_argument("--ablation", action="store_true", help="also run every recipe of the ablation")
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes per run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--time-limit", type=float, default=math.inf, help="start no run after this many seconds")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    if args.job:  # one run, in its own process
        print(json.dumps(run_job(json.loads(args.job))))
        return
    recipes = list(args.recipes) + (list(ABLATION) if args.ablation else [])
    for name in recipes:
        if name not in RECIPES and name not in ABLATION:
            parser.error(f"unknown recipe {name!r}; choose from {', '.join([*RECIPES, *ABLATION])}")
    deadline = time.time() + args.time_limit
    roots = {d: make_data(d, args.root / "data") for d in args.datasets}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = args.root / f"runs-{stamp}"
    runs.mkdir(parents=True)
    print(machine(), flush=True)
    jobs = [
        {
            "dataset": d, "recipe": r, "seed": s, "root": str(roots[d]), "out": str(runs / f"{d}-{i:02d}-s{s}"),
            "iters": args.iters, "lr": args.lr, "workers": args.workers, "threads": args.threads,
            "device": args.device,
        }
        for s in args.seeds for d in args.datasets for i, r in enumerate(recipes)
    ]  # fmt: skip
    records = run_all(jobs, args.jobs, runs, runs / "results.jsonl", deadline)
    print(f"\n{args.iters} iterations, batch 8, lr {args.lr:g}, B0 from scratch, seeds {args.seeds}; {machine()}")
    print(table(records, recipes, args.datasets))


if __name__ == "__main__":
    main()
