"""Mix-FFN against a learned positional encoding when the test resolution grows (the paper's Table 1c), on this CPU.

The paper trains MiT-B2 on Cityscapes 768x768 crops both ways and tests at the training crop (768x768 slide windows)
and on whole 1024x2048 images: PE 77.3 -> 74.0 mIoU, Mix-FFN 80.5 -> 79.8. Its argument: a positional encoding
learned at one resolution has to be interpolated at another, and accuracy drops; Mix-FFN's 3x3 depthwise conv gives
position without a fixed grid.

Here, the same comparison at a size a CPU can train. Data: the built-in synthetic set (`segformer synth`) rendered
at 192x192 (300 train, 50 val). Both variants are B0 (`SegFormerConfig.pos_embed_size` off / (64, 64): FFNs without
the depthwise conv and a learned encoding after every patch embedding, resized bilinearly at other sizes), trained
from scratch the same way (`segformer train --schedule short`: 64x64 crops of the images at their own scale, no
scale jitter, batch 16, lr 1e-3, head lr x10, the same number of iterations), from the same initial weights where
the two share parameters (seeded per seed). Each is then evaluated on the val images at their own scale with the
network's input at 1x, 1.5x, 2x and 3x the training crop: windows of 64, 96, 128 and 192 pixels (slide inference,
stride = window; 192 = the whole image), as the paper's slide-against-whole comparison does
(`segformer.evaluation.sweep.window_points`, the same spine as `segformer eval --sweep-sizes`).

Each run is its own process (`--jobs` at a time, one thread each); the table gives val mIoU per seed, the mean and
the change from 1x.

    python benchmarks/mixffn_vs_pe.py --iters 1000 --seeds 0 1 2 --jobs 2 --plot docs/mixffn_vs_pe.png
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from job_pool import run_jobs  # noqa: E402

IMAGE, CROP, TRAIN, VAL = 192, 64, 300, 50
WINDOWS = (64, 96, 128, 192)  # 1x, 1.5x, 2x, 3x the training crop
VARIANTS = {"Mix-FFN": None, "PE": (CROP, CROP)}  # SegFormerConfig.pos_embed_size


def initial_model(variant: str, seed: int, num_classes: int, names: tuple[str, ...] | None) -> Any:
    """B0 for `variant`, seeded; the PE variant takes every tensor it shares with the Mix-FFN model of this seed."""
    import torch

    from segformer.model.loading import create_model

    torch.manual_seed(seed)
    mix = create_model("b0", num_classes=num_classes, class_names=names)
    if VARIANTS[variant] is None:
        return mix
    torch.manual_seed(seed)
    model = create_model("b0", num_classes=num_classes, class_names=names, pos_embed_size=VARIANTS[variant])
    own = model.state_dict()
    shared = {k: v for k, v in mix.state_dict().items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(shared, strict=False)
    return model


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one variant for one seed, then evaluate it at every window size."""
    import torch

    from segformer.data import build_dataset
    from segformer.evaluation.sweep import resolution_sweep, window_points
    from segformer.inference import InferenceOptions
    from segformer.training import TrainConfig, train
    from segformer.training.build import class_names

    torch.set_num_threads(job["threads"])
    config = TrainConfig.from_preset(
        "folder",
        schedule="short",
        model="b0",
        data_root=job["root"],
        out=job["out"],
        iters=job["iters"],
        batch_size=16,
        crop=(CROP, CROP),
        scale=(IMAGE, IMAGE),
        lr=job["lr"],
        num_workers=0,
        eval_every=0,
        save_every=0,
        log_every=max(1, job["iters"] // 5),
        seed=job["seed"],
        device="cpu",
    )
    train_ds = build_dataset("folder", job["root"], "train")
    val_ds = build_dataset("folder", job["root"], "val")
    model = initial_model(job["variant"], job["seed"], int(train_ds.num_classes), class_names(train_ds))
    start = time.perf_counter()
    result = train(config, model=model, train_dataset=train_ds)  # no val set: no evaluation inside training
    seconds_train = time.perf_counter() - start
    points = window_points(InferenceOptions(batch_size=16), [(w, w) for w in WINDOWS])
    rows = resolution_sweep(model, val_ds, points, device="cpu", progress=False)
    times = [r["sec_per_iter"] for r in result.history if "sec_per_iter" in r]
    return {
        **job,
        "mIoU": [r["mIoU"] for r in rows],
        "windows": list(WINDOWS),
        "params": sum(p.numel() for p in model.parameters()),
        "sec_per_iter": float(np.mean(times)) if times else None,
        "seconds_train": seconds_train,
        "seconds": time.perf_counter() - start,
    }


def run_all(jobs: list[dict[str, Any]], parallel: int, log_dir: Path) -> list[dict[str, Any]]:
    """`jobs` as subprocesses, `parallel` at a time (one torch thread each); their records, in order of ending."""

    def record(r: dict[str, Any]) -> None:
        curve = "  ".join(f"{100 * m:5.1f}" for m in r["mIoU"])
        print(f"{r['variant']:<8} seed {r['seed']}  mIoU at 1x..3x: {curve}  ({r['seconds']:.0f} s)")

    label = lambda job: f"{job['variant']} seed {job['seed']}"  # noqa: E731
    return run_jobs(__file__, jobs, parallel, log_dir, label, record)


def table(records: list[dict[str, Any]]) -> str:
    """Markdown: per variant and seed the mIoU at each window, then the mean and the change from 1x."""
    ratios = [f"{w / CROP:g}x ({w})" for w in WINDOWS]
    lines = ["| variant | seed | " + " | ".join(ratios) + " | 3x - 1x |", "|---|---|" + "---:|" * (len(WINDOWS) + 1)]
    for variant in VARIANTS:
        rs = sorted((r for r in records if r["variant"] == variant), key=lambda r: r["seed"])
        for r in rs:
            m = 100 * np.array(r["mIoU"])
            cells = " | ".join(f"{v:.1f}" for v in m)
            lines.append(f"| {variant} | {r['seed']} | {cells} | {m[-1] - m[0]:+.1f} |")
        if rs:
            m = 100 * np.array([r["mIoU"] for r in rs])  # (seeds, windows)
            mean, drop = m.mean(0), m[:, -1] - m[:, 0]
            lines.append(
                f"| **{variant}** | mean | " + " | ".join(f"**{v:.1f}**" for v in mean)
                + f" | **{drop.mean():+.1f}** ({drop.min():+.1f} to {drop.max():+.1f}) |"
            )  # fmt: skip
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """mIoU against the window / crop ratio: each variant's mean, with every seed as a thin line."""
    from segformer.visualize import plot_series

    series = {}
    for variant in VARIANTS:
        rs = [r for r in records if r["variant"] == variant]
        if rs:
            series[variant] = [[100 * m for m in r["mIoU"]] for r in rs]
    plot_series(path, [w / CROP for w in WINDOWS], series, "test input / training crop", "val mIoU (%)", title)


def machine() -> str:
    from segformer.apps.benchmark import cpu_model

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"CPU {cpu_model()}, {os.cpu_count()} cores visible, load average {load}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/mixffn-vs-pe"), help="data and run folders go here")
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--plot", type=Path, default=None, help="write the curves to this PNG")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.job:  # one run, in its own process
        print(json.dumps(run_job(json.loads(args.job))))
        return

    from segformer.data.synth import write_dataset

    start = time.time()
    root = write_dataset(args.root / "data" / f"synth{IMAGE}", TRAIN, VAL, IMAGE, seed=0)
    runs = args.root / f"runs-{time.strftime('%Y%m%d-%H%M%S')}"
    runs.mkdir(parents=True)
    print(machine(), flush=True)
    jobs = [
        {"variant": v, "seed": s, "root": str(root), "out": str(runs / f"{v.lower()}-s{s}"), "iters": args.iters,
         "lr": args.lr, "threads": 1}
        for s in args.seeds for v in VARIANTS
    ]  # fmt: skip
    records = run_all(jobs, args.jobs, runs)
    (runs / "results.json").write_text(json.dumps(records, indent=1) + "\n")
    about = f"B0 from scratch, {args.iters} iterations x 16 crops of {CROP}x{CROP}, seeds {args.seeds}"
    print(f"\n{about}; {machine()}; {time.time() - start:.0f} s in all")
    print(table(records))
    if args.plot:
        plot(records, args.plot, f"synthetic {IMAGE}x{IMAGE}, trained on {CROP}x{CROP} crops ({args.iters} it)")
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
