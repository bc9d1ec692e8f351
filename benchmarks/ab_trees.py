"""Forward latency of this tree's model against another checkout's, in one process, interleaved rounds.

Both models get the same weights and input; their logits must agree within 1e-4 (the line says whether they are
bitwise equal). The other checkout's src/segformer is copied to a temporary folder as package `segformer_other` (it
uses relative imports), so both run side by side under the same load: the ratio holds on a busy machine where
absolute times do not. With
`--transformers`, transformers' SegformerForSemanticSegmentation (same weights) takes its turn in the same rounds,
so "this / transformers" and "other / transformers" come from one run.

    git worktree add --detach /tmp/pre 72f8434     # the tree before the redesign (issue 9)
    python benchmarks/ab_trees.py /tmp/pre --transformers    # medians, this/other, each/transformers
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import segformer
from segformer.apps.benchmark import cpu_model
from segformer.runtime import import_torchvision

CASES = {"b0-512": ("b0", (512, 512), 15), "b2-512": ("b2", (512, 512), 7), "b0-1024x2048": ("b0", (1024, 2048), 5)}


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median ms of each fn over `rounds`, taking turns in a rotating order after `warmup` rounds."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds + warmup):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) * 1e3 for n, t in times.items()}


def run_case(name: str, other_pkg: object, threads: int, with_hf: bool, tmp: Path) -> str:
    variant, size, rounds = CASES[name]
    torch.manual_seed(0)
    this = segformer.create_model(variant, num_classes=150).eval()
    other = other_pkg.create_model(variant, num_classes=150).eval()
    other.load_state_dict(this.state_dict())
    x = torch.randn(1, 3, *size)
    models: dict[str, Callable[[], object]] = {"other": lambda: other(x), "this": lambda: this(x)}
    if with_hf:
        import_torchvision()  # transformers' image code imports it; see runtime.import_torchvision
        import transformers

        hf = transformers.SegformerForSemanticSegmentation.from_pretrained(this.save_pretrained(tmp / name)).eval()
        models["transformers"] = lambda: hf(pixel_values=x)
    with torch.inference_mode():
        diff = float((other(x) - this(x)).abs().max())
        if diff > 1e-4:
            raise SystemExit(f"{name}: the two trees compute different logits (max abs diff {diff:.1e})")
        ms = interleaved(models, rounds)
    line = (
        f"{name} fp32 eager, {threads} threads, {rounds} interleaved rounds: other {ms['other']:.1f} ms, "
        f"this {ms['this']:.1f} ms, this/other {ms['this'] / ms['other']:.3f}"
    )
    if with_hf:
        hf_ms = ms["transformers"]
        line += (
            f"; transformers {hf_ms:.1f} ms, other/transformers {ms['other'] / hf_ms:.3f}, "
            f"this/transformers {ms['this'] / hf_ms:.3f}"
        )
    return line + (" (logits bitwise equal)" if diff == 0 else f" (logits within {diff:.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="a checkout of another version (its src/segformer is used)")
    parser.add_argument("--threads", default="2", help="comma-separated thread counts, e.g. 2,1")
    parser.add_argument("--cases", nargs="*", default=["b0-512", "b2-512"], choices=list(CASES))
    parser.add_argument("--transformers", action="store_true", help="also time transformers in the same rounds")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    shutil.copytree(args.other / "src" / "segformer", folder / "segformer_other")
    sys.path.insert(0, str(folder))
    import segformer_other

    print(f"CPU: {cpu_model()}; torch {torch.__version__}", flush=True)
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for name in args.cases:
            print(run_case(name, segformer_other, threads, args.transformers, folder), flush=True)
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
