"""The GPU table of issue 21, as one script that finishes within 8 minutes on one card (prepared and checked on CPU
with --dry-run; no GPU was lent while it was written, so its GPU numbers are still to be measured).

    python benchmarks/gpu.py --out gpu.json                          # on a CUDA machine, < 8 min
    python benchmarks/gpu.py --dry-run                               # every row's code path on the CPU, tiny sizes
    python benchmarks/gpu.py --demo-model runs/demo/model --demo-data data/synth   # + TensorRT agreement rows

Rows, each with img/s, the ratio to transformers eager fp32 on the same card in the same run, and peak memory:
- inference, B0 512x512 at batch 1 and 32, B5 1024x2048 at batch 1: transformers eager fp32; ours eager fp32, bf16,
  bf16 + torch.compile; TensorRT fp16 (LayerNorm and Softmax in fp32; needs `pip install tensorrt`);
- training, B0 and B2, 512x512 crops, batch 16, one step (forward, loss, backward, AdamW): transformers eager fp32;
  ours bf16, ours bf16 + torch.compile;
- with --demo-model: the TensorRT engine of that model through the accuracy gate (pixel agreement with fp32 PyTorch
  and the mIoU change on --demo-data's val split; goal >= 99.5% and <= 0.5 pp).
A row that would not finish before the time budget is skipped with a note, so the script always ends in time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from segformer import create_model
from segformer.apps.benchmark import device_name, peak_memory_mb, sample_image, sample_labels, time_interleaved
from segformer.apps.peers import (
    inference_fn,
    train_step_fn,
    transformers_fn,
    transformers_model,
    transformers_train_step_fn,
)
from segformer.runtime import autocast, compile_unavailable

GOALS = [
    "B0 512x512 batch 32 >= 1000 img/s (best published: 514 img/s, A100 fp32 + compile, transformers' docs)",
    ">= 2x transformers eager fp32 on the same card",
    "B5 1024x2048 >= 15 FPS (paper: 2.5 on a V100)",
    "TensorRT fp16 >= 99.5% pixel agreement, <= 0.5 pp mIoU change on the demo model",
]


class Budget:
    """Wall-clock budget: `allows(seconds)` is False once a step of about that long would end past the deadline."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def allows(self, estimate: float) -> bool:
        return time.perf_counter() + estimate < self.deadline


def _amp_train(step: Callable[[], torch.Tensor], device: str, amp: str) -> Callable[[], torch.Tensor]:
    def fn() -> torch.Tensor:
        with autocast(device, amp):
            return step()

    return fn


def _tensorrt_fn(
    model: torch.nn.Module, x: torch.Tensor, folder: Path, max_batch: int, engines: dict[Any, Any]
) -> Callable[[], torch.Tensor]:
    """TensorRT fp16 (LayerNorm and Softmax in fp32) of `model` on `x`: one engine per model and input size, built
    once for batches 1..`max_batch` (kept in `engines`), so batch 1 and 32 share a build."""
    from segformer.export.onnx import export_onnx
    from segformer.export.tensorrt import TensorRTForward, build_engine

    size = tuple(x.shape[-2:])
    key = (repr(model.config.to_dict()), size)
    if key not in engines:
        onnx_path, engine = folder / f"model{len(engines)}.onnx", folder / f"model{len(engines)}.engine"
        device = x.device
        export_onnx(model.cpu(), onnx_path, sample_size=size, check=False)
        model.to(device)
        c = x.shape[1]
        build_engine(
            onnx_path,
            engine,
            model.config,
            min_shape=(1, c, *size),
            opt_shape=tuple(x.shape),
            max_shape=(max_batch, c, *size),
        )
        engines[key] = TensorRTForward(engine)
    forward = engines[key]
    return lambda: forward(x)


def _measure(
    fns: dict[str, Callable[[], Any]], batch: int, device: str, repeats: int, base: str
) -> list[dict[str, Any]]:
    """img/s (median of interleaved rounds), ratio to `base`, peak memory (MB) and argmax agreement with fp32."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    memory = {name: peak_memory_mb(fn, device) for name, fn in fns.items()}
    times = time_interleaved(fns, repeats, warmup=2, sync=sync)
    rows = []
    for name, t in times.items():
        rate = batch / statistics.median(t)
        rows.append({"row": name, "img_s": rate, "peak_mem_mb": memory[name]})
    base_rate = next((r["img_s"] for r in rows if r["row"] == base), None)
    for r in rows:
        r["vs_transformers"] = r["img_s"] / base_rate if base_rate else None
    return rows


def inference_rows(args: argparse.Namespace, budget: Budget, notes: list[str]) -> list[dict[str, Any]]:
    settings = [("b0", (512, 512), 1), ("b0", (512, 512), 32), ("b5", (1024, 2048), 1)]
    if args.dry_run:
        settings = [("b0", (64, 64), 1), ("b0", (64, 64), 2)]
    out: list[dict[str, Any]] = []
    max_batch = {(v, size): max(b for v2, s2, b in settings if (v2, s2) == (v, size)) for v, size, _ in settings}
    engines: dict[Any, Any] = {}
    with tempfile.TemporaryDirectory() as engine_dir:
        for variant, size, batch in settings:
            out += _inference_setting(args, budget, notes, variant, size, batch, max_batch, engines, Path(engine_dir))
    return out


def _inference_setting(
    args: argparse.Namespace,
    budget: Budget,
    notes: list[str],
    variant: str,
    size: tuple[int, int],
    batch: int,
    max_batch: dict[Any, int],
    engines: dict[Any, Any],
    engine_dir: Path,
) -> list[dict[str, Any]]:
    """The rows of one (variant, size, batch): transformers and ours, each way, measured side by side."""
    if not budget.allows(60 if variant == "b0" else 150):
        notes.append(f"skipped inference {variant} {size} batch {batch}: time budget")
        return []
    torch.manual_seed(0)
    ours = create_model(variant, num_classes=150).to(args.device).eval()
    x = sample_image(size, batch).to(args.device)
    fns: dict[str, Callable[[], Any]] = {}
    try:
        fns["transformers eager fp32"] = transformers_fn(transformers_model(ours, args.device), x)
    except RuntimeError as e:
        notes.append(f"no transformers rows: {e}")
    fns["ours eager fp32"] = inference_fn(ours, x)
    fns["ours eager bf16"] = inference_fn(ours, x, dtype="bf16")
    reason = compile_unavailable(args.device) if args.compile else "--no-compile"
    if reason is None:
        fns["ours bf16 + torch.compile"] = inference_fn(ours, x, dtype="bf16", compile=True)
    else:
        notes.append(f"no torch.compile row: {reason}")
    if args.device == "cuda" and budget.allows(240):
        try:
            fns["TensorRT fp16 (LN, softmax fp32)"] = _tensorrt_fn(
                ours, x, engine_dir, max_batch[(variant, size)], engines
            )
        except (ImportError, RuntimeError) as e:
            notes.append(f"no TensorRT row for {variant}: {str(e).splitlines()[0]}")
    elif args.device != "cuda":
        notes.append("no TensorRT row: needs an NVIDIA GPU")
    rows = _measure(fns, batch, args.device, args.repeats, "transformers eager fp32")
    for r in rows:
        r.update(kind="inference", model=variant, size=list(size), batch=batch)
    _print(rows)
    return rows


def training_rows(args: argparse.Namespace, budget: Budget, notes: list[str]) -> list[dict[str, Any]]:
    size, batch = ((64, 64), 2) if args.dry_run else ((512, 512), 16)
    amp = "bf16"
    out = []
    for variant in ("b0", "b2"):
        if not budget.allows(90):
            notes.append(f"skipped training {variant}: time budget")
            continue
        torch.manual_seed(0)
        x = sample_image(size, batch).to(args.device)
        y = sample_labels(size, batch, 150).to(args.device)
        fns: dict[str, Callable[[], Any]] = {}
        base = create_model(variant, num_classes=150)
        try:
            hf = transformers_model(base, args.device).train()
            fns["transformers eager fp32"] = transformers_train_step_fn(hf, x, y)
        except RuntimeError as e:
            notes.append(f"no transformers rows: {e}")
        fns["ours bf16"] = _amp_train(train_step_fn(base.to(args.device), x, y), args.device, amp)
        if args.compile and compile_unavailable(args.device) is None:
            compiled = torch.compile(create_model(variant, num_classes=150).to(args.device))
            fns["ours bf16 + torch.compile"] = _amp_train(train_step_fn(compiled, x, y), args.device, amp)
        rows = _measure(fns, batch, args.device, max(3, args.repeats // 2), "transformers eager fp32")
        for r in rows:
            r.update(kind="training", model=variant, size=list(size), batch=batch)
        out += rows
        _print(rows)
    return out


def demo_rows(args: argparse.Namespace, budget: Budget, notes: list[str]) -> list[dict[str, Any]]:
    """The demo model's TensorRT engine through the gate (agreement and mIoU change on the synthetic val split)."""
    if args.demo_model is None:
        return []
    if not budget.allows(120):
        notes.append("skipped the TensorRT gate on the demo model: time budget")
        return []
    from segformer.data import build_dataset
    from segformer.export.formats import GateSettings, export_model
    from segformer.export.gate import ExportRejected
    from segformer.model.loading import load_model

    model = load_model(args.demo_model)
    val = build_dataset("folder", args.demo_data, "val")
    settings = GateSettings(min_agreement=0.995, eval_dataset=val, eval_max_samples=32, force=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            report = export_model(model, Path(tmp) / "demo.engine", "tensorrt", settings=settings)
        except (ExportRejected, RuntimeError, ImportError) as e:
            notes.append(f"TensorRT gate on the demo model: {str(e).splitlines()[0]}")
            return []
    print(report.summary())
    delta = None if report.float_miou is None else 100 * (report.candidate_miou - report.float_miou)
    return [{"kind": "gate", "row": "TensorRT fp16, demo model", "agreement": report.agreement, "miou_pp": delta}]


def _print(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        ratio = f"{r['vs_transformers']:.2f}x" if r.get("vs_transformers") else "-"
        mem = f"{r['peak_mem_mb']:.0f} MB" if r.get("peak_mem_mb") else "-"
        print(f"  {r['row']:34s} {r['img_s']:9.1f} img/s  {ratio:>7s}  peak {mem}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: check every row's code path")
    p.add_argument("--device", default=None, help="cuda (default) or cpu (with --dry-run)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile rows")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds per row (default 10)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds before rows are skipped (default 450)")
    p.add_argument("--demo-model", type=Path, default=None, help="the demo model folder for the TensorRT gate row")
    p.add_argument("--demo-data", type=Path, default=Path("data/synth"), help="its dataset (folder layout)")
    p.add_argument("--out", type=Path, default=None, help="write the rows and notes as JSON")
    args = p.parse_args(argv)
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here; use --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    if args.dry_run:
        args.repeats = min(args.repeats, 2)
    budget = Budget(args.budget)
    notes: list[str] = []
    print(f"device: {device_name(args.device)}; torch {torch.__version__}", flush=True)
    rows = inference_rows(args, budget, notes) + training_rows(args, budget, notes) + demo_rows(args, budget, notes)
    notes = list(dict.fromkeys(notes))
    for note in notes:
        print(f"note: {note}")
    print("goals: " + "; ".join(GOALS))
    if args.out is not None:
        result = {"device": device_name(args.device), "torch": torch.__version__, "rows": rows, "notes": notes}
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
