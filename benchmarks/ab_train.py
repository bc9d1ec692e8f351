"""Training-step time (forward, loss, backward, AdamW) of this tree, another checkout and transformers, interleaved.

The three start from the same weights and batch and run the step functions of `segformer.apps.peers` (each tree
its own, with its own optimiser options; an older tree's from wherever it kept them) in alternating order, so the
ratios hold on a busy machine. Besides wall-clock medians it prints process CPU-time medians: at `--threads 1` those
measure work and barely move with the load of other processes (at 2 threads they also count spinning threads, so
prefer the wall clock on a quiet machine).

    git worktree add /tmp/main main
    python benchmarks/ab_train.py /tmp/main --batch 8 --size 256 --threads 2
    python benchmarks/ab_train.py /tmp/main --batch 2 --size 512 --threads 1    # work ratio on a shared machine
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import segformer
from segformer.apps.benchmark import sample_image, sample_labels
from segformer.apps.peers import train_step_fn, transformers_model, transformers_train_step_fn

# Where a tree keeps `train_step_fn`: this layout, the role packages before peers.py, the flat layout before those.
STEP_MODULES = ("apps.peers", "apps.benchmark", "benchmark")


def other_train_step_fn(package: str):
    """`train_step_fn` of the other tree, imported as `package`."""
    for module in STEP_MODULES:
        try:
            return importlib.import_module(f"{package}.{module}").train_step_fn
        except (ImportError, AttributeError):
            continue
    raise SystemExit(f"{package}: no train_step_fn in any of {', '.join(STEP_MODULES)}")


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="a checkout of another version (its src/segformer is used)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    shutil.copytree(args.other / "src" / "segformer", folder / "segformer_other")
    sys.path.insert(0, str(folder))
    import segformer_other

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = segformer.SegFormerConfig.from_name("b0", layer_norm_eps=1e-5)
    this = segformer.SegFormer(config)
    other = segformer_other.create_model("b0", num_classes=config.num_classes, layer_norm_eps=1e-5)
    other.load_state_dict(this.state_dict())
    hf = transformers_model(this)
    x = sample_image((args.size, args.size), args.batch)
    y = sample_labels((args.size, args.size), args.batch, config.num_classes)
    fns = {
        "transformers": transformers_train_step_fn(hf, x, y),
        "other": other_train_step_fn("segformer_other")(other, x, y),
        "this": train_step_fn(this, x, y),
    }
    names = list(fns)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for r in range(args.rounds + 1):
        for name in names[r % 3 :] + names[: r % 3]:  # rotate the order every round
            t = _timed(fns[name])
            if r:  # one warm-up round (optimiser state)
                times[name].append(t)
    wall = {n: statistics.median(w for w, _ in v) for n, v in times.items()}
    cpu = {n: statistics.median(c for _, c in v) for n, v in times.items()}
    print(f"b0 batch {args.batch} {args.size}x{args.size} fp32, {args.threads} threads, {args.rounds} rounds")
    for n in names:
        print(
            f"  {n:12s} wall {wall[n] * 1e3:8.0f} ms ({wall['transformers'] / wall[n]:.2f}x transformers)   "
            f"cpu {cpu[n] * 1e3:8.0f} ms ({cpu['transformers'] / cpu[n]:.2f}x transformers)"
        )
    print(f"  this/other: wall {wall['this'] / wall['other']:.3f}, cpu {cpu['this'] / cpu['other']:.3f}")
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
