"""Ours against transformers on one thread, by CPU time of the calling thread: ratios that survive a busy machine.

    python benchmarks/cpu_time_ratios.py --model b0 --repeats 11          # eager, and both exports in ONNX Runtime
    python benchmarks/cpu_time_ratios.py --model b2 --repeats 5 --no-onnx

`segformer benchmark --compare` measures wall clock with 2 threads, the figure the targets name; on a shared
2-core machine another job stalls every parallel region and those ratios mean little. Here everything runs on the
calling thread (torch and ONNX Runtime with 1 intra-op thread), the implementations take turns, and each run is
timed by `time.thread_time`, which waiting for the core does not inflate. Not the targets' number (one thread, not
two), but a steady guide while the machine is busy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from segformer.apps import peers  # noqa: E402
from segformer.apps.benchmark import sample_image  # noqa: E402
from segformer.model.loading import model_from_spec  # noqa: E402


def implementations(name: str, size: int, onnx: bool, folder: Path) -> dict:
    """name -> fn() for transformers and ours, eager and (with `onnx`) in ONNX Runtime, same weights and input."""
    ours = model_from_spec(name, num_classes=150).eval()
    x = sample_image((size, size))
    hf = peers.transformers_model(ours)
    fns = {"transformers eager": peers.transformers_fn(hf, x), "ours eager": peers.inference_fn(ours, x)}
    if onnx:
        files = {
            "ORT transformers": peers.export_transformers_onnx(hf, x, folder / "hf.onnx"),
            "ORT ours": peers.export_ours_onnx(ours, folder / "ours.onnx", (size, size)),
            "ORT ours, ORT ops": peers.export_ours_onnx(ours, folder / "ours-ort.onnx", (size, size), ort_ops=True),
        }
        fns.update({label: peers.ort_fn(file, x.numpy(), threads=1) for label, file in files.items()})
    return fns


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="b0")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--no-onnx", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="segformer-cpu-time-") as tmp:
        fns = implementations(args.model, args.size, not args.no_onnx, Path(tmp))
        times: dict[str, list[float]] = {k: [] for k in fns}
        for fn in fns.values():
            fn()  # warm-up
        for r in range(args.repeats):
            for key in list(fns) if r % 2 else list(fns)[::-1]:  # alternate the order: no fixed neighbour
                start = time.thread_time()
                fns[key]()
                times[key].append(time.thread_time() - start)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    print(f"{args.model} {args.size}x{args.size}, 1 thread, median CPU ms of {args.repeats} interleaved rounds")
    for key, value in ms.items():
        print(f"  {key:20s} {value:8.1f}")
    print(f"eager: ours / transformers = {ms['ours eager'] / ms['transformers eager']:.3f}x")
    for key in ("ORT ours", "ORT ours, ORT ops"):
        if key in ms:
            print(f"ONNX Runtime: {key[4:]} / transformers' export = {ms[key] / ms['ORT transformers']:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
