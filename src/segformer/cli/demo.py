"""Generate synthetic data, train SegFormer-B0 from scratch on the CPU, evaluate, and draw the results.

The whole pipeline of `make demo`, with nothing to download: data/synth (built-in generator) -> runs/demo/
(model/ in hub layout, metrics.json, predictions.png, curves.png, model.onnx with the onnx extra).
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..apps.demo import DemoConfig  # light: dataclasses only

    d = DemoConfig()
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo; an earlier demo is replaced)")
    p.add_argument("--data", default="data/synth", help="synthetic data folder (default data/synth; made if absent)")
    p.add_argument("--train-images", type=int, default=d.train_images, help=f"default {d.train_images}")
    p.add_argument("--val-images", type=int, default=d.val_images, help=f"default {d.val_images}")
    p.add_argument("--size", type=int, default=d.size, help=f"synthetic image side in pixels (default {d.size})")
    p.add_argument("--crop", type=int, default=d.crop, help=f"training crop side in pixels (default {d.crop})")
    p.add_argument("--iters", type=int, default=d.iters, help=f"training iterations (default {d.iters})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate, from scratch (default {d.lr})")
    p.add_argument(
        "--head-lr-mult", type=float, default=d.head_lr_mult, help=f"decoder lr factor (default {d.head_lr_mult})"
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=d.eval_every,
        help=f"val mIoU every N iterations (default {d.eval_every}; 0 = end only)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"data and training seed (default {d.seed})")
    p.add_argument("--device", default=d.device, help=f"cpu, cuda, auto (default {d.device})")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export even when onnx is installed")


def run(args: argparse.Namespace) -> int:
    from ..apps.demo import DemoConfig, run_demo
    from ..evaluation.evaluate import format_table

    config = DemoConfig(
        train_images=args.train_images,
        val_images=args.val_images,
        size=args.size,
        crop=args.crop,
        iters=args.iters,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr_mult=args.head_lr_mult,
        eval_every=args.eval_every,
        seed=args.seed,
        device=args.device,
        onnx=not args.no_onnx,
    )
    summary = run_demo(args.out, args.data, config)
    t = summary["timings"]
    print(format_table(summary["metrics"]))
    print(
        f"val mIoU {100 * summary['metrics']['mIoU']:.2f}% after {config.iters} iterations; "
        f"{t['total_s'] / 60:.1f} min in all (data {t['data_s']:.0f}s, train {t['train_s']:.0f}s, "
        f"eval {t['eval_s']:.0f}s) on {summary['threads']} CPU threads"
    )
    for name, path in summary["paths"].items():
        print(f"  {name:<12} {path}")
    return 0
