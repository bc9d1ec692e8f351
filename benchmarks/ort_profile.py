"""Where ONNX Runtime spends its time on our export and on transformers', per operator type, on one thread.

    python benchmarks/ort_profile.py --model b0 --size 512 --runs 10
    python benchmarks/ort_profile.py --keep /tmp/graphs      # also keep the exported and the optimised graphs

Both models get the same weights (ours saved in the Hugging Face layout, loaded by transformers) and are exported as
`cpu_time_ratios.py` does. Each session runs with 1 intra-op thread and profiling on; the first `--warmup` runs are
left out (their kernels fault in fresh memory). Prints ms per run by operator type, the node count of the graph
ONNX Runtime optimised (fused Gemm, NCHWc layout reorders...), and the CPU time of the calling thread per run,
which a busy machine inflates far less than wall clock.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from segformer.apps import peers  # noqa: E402
from segformer.apps.benchmark import sample_image  # noqa: E402
from segformer.model.loading import model_from_spec  # noqa: E402


def export_both(name: str, size: int, folder: Path) -> dict[str, Path]:
    """transformers' export and ours (standard operators) of the same weights, as ONNX files in `folder`."""
    ours = model_from_spec(name, num_classes=150).eval()
    hf = peers.transformers_model(ours)
    return {
        "transformers": peers.export_transformers_onnx(hf, sample_image((size, size)), folder / "transformers.onnx"),
        "ours": peers.export_ours_onnx(ours, folder / "ours.onnx", (size, size)),
    }


def profile(path: Path, size: int, runs: int, warmup: int) -> tuple[dict[str, tuple[float, int]], float, int]:
    """({op type: (ms per run, nodes)}, median thread CPU ms per run, nodes in the optimised graph)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: sample_image((size, size)).numpy()}
    cpu = []
    for _ in range(warmup + runs):
        start = time.thread_time()
        session.run(None, feed)
        cpu.append(time.thread_time() - start)
    events = json.loads(Path(session.end_profiling()).read_text())
    seen: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        seen[e["name"]] += 1
        if seen[e["name"]] > warmup:
            total[e["args"]["op_name"]] += e["dur"]
    nodes = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    by_op = {op: (us / runs / 1e3, nodes[op]) for op, us in total.most_common()}
    return by_op, 1e3 * float(np.median(cpu[warmup:])), sum(nodes.values())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="b0")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--keep", type=Path, help="folder for the exported and optimised graphs (default: a temporary one)")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="segformer-ort-profile-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        results = {
            label: profile(path, args.size, args.runs, args.warmup)
            for label, path in export_both(args.model, args.size, folder).items()
        }
    print(
        f"{args.model} {args.size}x{args.size}, ONNX Runtime, 1 thread, ms per run by operator (nodes), "
        f"{args.runs} profiled runs after {args.warmup}"
    )
    ops = sorted(
        {op for by_op, _, _ in results.values() for op in by_op},
        key=lambda op: -max(r[0].get(op, (0.0, 0))[0] for r in results.values()),
    )
    print(f"  {'operator':24s}" + "".join(f"{label:>22s}" for label in results))
    for op in ops:
        cells = [by_op.get(op, (0.0, 0)) for by_op, _, _ in results.values()]
        print(f"  {op:24s}" + "".join(f"{ms:14.2f} ({n:4d})" for ms, n in cells))
    print(
        f"  {'kernel sum':24s}"
        + "".join(f"{sum(v[0] for v in r[0].values()):14.2f} ({r[2]:4d})" for r in results.values())
    )
    print(f"  {'thread CPU per run':24s}" + "".join(f"{r[1]:14.2f}{'':7s}" for r in results.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
