"""Pretraining images/s: `segformer pretrain` against a loop built from timm's public API, same model shapes and data.

timm's own train.py is not in its wheel (it lives in the repository only), so the reference is a plain loop over
timm's parts as train.py wires them: `create_dataset`, `create_transform` (rand-m9-mstd0.5-inc1, bicubic, random
erasing 0.25), `RepeatAugSampler` (x3), `Mixup` + `SoftTargetCrossEntropy`, `create_optimizer_v2` (AdamW), timm's
`pvt_v2_b0` (= our b0-paper, key for key). Ours runs the whole `pretrain` (its per-sample seeding, checkpoints off).
Both time each step from asking the loader for a batch to the optimiser step; the median step gives images/s.
Runs alternate (ours, timm, ours, timm) on the same cores.

    python benchmarks/pretrain_throughput.py --make-data data/textures        # the class-folder set alone
    python benchmarks/pretrain_throughput.py --data data/textures --steps 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segformer.runtime import import_timm
from segformer.training import pretrain as P

KINDS = ("hstripes", "vstripes", "checks", "rings")
COLOURS = ((200, 60, 60), (60, 200, 60), (60, 60, 200), (200, 200, 60))


def make_textures(root: Path, per_class: int = 64, val: int = 16, size: int = 128, seed: int = 0) -> Path:
    """Four texture classes in ROOT/{train,val}/CLASS/*.png, each in shades of its own colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    waves = {
        "hstripes": lambda f, p: np.sin(yy * f + p),
        "vstripes": lambda f, p: np.sin(xx * f + p),
        "checks": lambda f, p: np.sign(np.sin(yy * f + p) * np.sin(xx * f + p)),
        "rings": lambda f, p: np.sin(np.hypot(yy - size / 2, xx - size / 2) * f + p),
    }
    for split, n in (("train", per_class), ("val", val)):
        for kind, colour in zip(KINDS, COLOURS, strict=True):
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                wave = (waves[kind](rng.uniform(0.25, 0.6), rng.uniform(0, 6.3))[..., None] + 1) / 2
                dark, light = np.array(colour) * rng.uniform(0.3, 0.6), np.array(colour) * rng.uniform(0.9, 1.2)
                image = dark + (light - dark) * wave + rng.normal(0, 12, (size, size, 3))
                Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def ours(data: Path, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as out:
        config = P.PretrainConfig(
            model=args.model, data_root=str(data), out=out, epochs=1, batch_size=args.batch_size,
            img_size=args.img_size, eval_resize=int(args.img_size / 0.875), num_workers=args.workers,
            log_every=1, save_every=10**9, eval_every=0,
        )  # fmt: skip
        result = P.pretrain(config)
    times = [r["sec_per_iter"] for r in result.history if "sec_per_iter" in r][1 : args.steps + 1]
    return args.batch_size / statistics.median(times)


def timm_loop(data: Path, args: argparse.Namespace) -> float:
    timm = import_timm()
    from timm.data import Mixup, create_dataset, create_transform
    from timm.data.distributed_sampler import RepeatAugSampler
    from timm.loss import SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2

    torch.manual_seed(0)
    model = timm.create_model("pvt_v2_" + args.model.removesuffix("-paper"), num_classes=len(KINDS), drop_path_rate=0.1)
    transform = create_transform(
        args.img_size, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic",
        re_prob=0.25, re_mode="pixel", re_count=1,
    )  # fmt: skip
    dataset = create_dataset("", root=str(data), split="train", is_training=True, transform=transform)
    sampler = RepeatAugSampler(dataset, num_replicas=1, rank=0, num_repeats=3)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers, drop_last=True
    )
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=len(KINDS))
    criterion = SoftTargetCrossEntropy()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    model.train()
    times, batches = [], iter(loader)
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        x, y = next(batches)
        x, y = mixup(x, y)
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return args.batch_size / statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/textures"))
    parser.add_argument("--make-data", type=Path, default=None, help="write the texture set here and stop")
    parser.add_argument("--model", default="b0-paper", help="a paper-spec row (timm has its twin) or b5")
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers (0: on 2 busy cores 7x faster than 1)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.make_data is not None:
        print(f"wrote {make_textures(args.make_data)}")
        return
    if not args.data.is_dir():
        make_textures(args.data)
    torch.set_num_threads(args.threads)
    results: dict[str, list[float]] = {"segformer pretrain": [], "timm API loop": []}
    for _ in range(args.rounds):
        results["segformer pretrain"].append(ours(args.data, args))
        results["timm API loop"].append(timm_loop(args.data, args))
    summary = {k: round(statistics.median(v), 2) for k, v in results.items()}
    ratio = summary["segformer pretrain"] / summary["timm API loop"]
    print(json.dumps({"images_per_s": summary, "runs": results, "ratio_ours_over_timm": round(ratio, 3)}, indent=1))
    print(f"| {args.model} {args.img_size}px batch {args.batch_size} | {summary['segformer pretrain']} | "
          f"{summary['timm API loop']} | {ratio:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
