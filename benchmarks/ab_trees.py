"""Forward latency of this tree's model against another checkout's, in one process, interleaved rounds.

Both models get the same weights and input; their logits must be bitwise equal. The other checkout's
src/segformer is copied to a temporary folder as package `segformer_other` (it uses relative imports), so both
run side by side under the same load: the ratio holds on a busy machine where absolute times do not.

    git worktree add /tmp/pre pre-redesign
    python benchmarks/ab_trees.py /tmp/pre        # prints other/this medians and this/other per variant
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import segformer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="a checkout of another version (its src/segformer is used)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    shutil.copytree(args.other / "src" / "segformer", folder / "segformer_other")
    sys.path.insert(0, str(folder))
    import segformer_other

    torch.set_num_threads(args.threads)
    for variant, rounds in (("b0", 15), ("b2", 7)):
        torch.manual_seed(0)
        this = segformer.create_model(variant, num_classes=150).eval()
        other = segformer_other.create_model(variant, num_classes=150).eval()
        other.load_state_dict(this.state_dict())
        x = torch.randn(1, 3, args.size, args.size)
        times: dict[str, list[float]] = {"other": [], "this": []}
        with torch.inference_mode():
            if not torch.equal(other(x), this(x)):
                raise SystemExit(f"{variant}: the two trees compute different logits")
            for r in range(rounds + 2):
                pair = (("other", other), ("this", this)) if r % 2 else (("this", this), ("other", other))
                for name, model in pair:
                    start = time.perf_counter()
                    model(x)
                    if r >= 2:  # two warm-up rounds
                        times[name].append(time.perf_counter() - start)
        a, b = statistics.median(times["other"]) * 1e3, statistics.median(times["this"]) * 1e3
        print(
            f"{variant} {args.size}x{args.size} fp32 eager, {args.threads} threads, {rounds} interleaved rounds: "
            f"other {a:.1f} ms, this {b:.1f} ms, this/other {b / a:.3f} (logits bitwise equal)"
        )
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
