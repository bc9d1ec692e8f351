"""Deployment rows on this CPU, measured side by side in one run: ExecuTorch .pte against eager PyTorch and our ONNX
export in ONNX Runtime, torch.compile against eager, and int8 .pte against fp32 .pte on a trained model.

    python benchmarks/deploy.py --threads 2 --out /tmp/deploy.md
    python benchmarks/deploy.py --demo-model runs/demo/model --demo-data data/synth --out /tmp/deploy.md

Speed rows: B0 (150 classes, random weights: latency does not depend on them) at 512x512, batch 1, `--threads` for
every runtime (ONNX Runtime with spinning off), medians; the rows of one runtime are interleaved, the runtimes take
turns in two passes (`time_by_family`); ratio = row / eager fp32. Agreement = share of equal argmax pixels with
eager fp32 on the timed input.
With --demo-model: each .pte written through the accuracy gate on the val split of --demo-data (the images at their
own size), which gives its pixel agreement with the float model and the mIoU change; int8 calibrated on the first
--calib-count training images; then both timed at 512x512.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from segformer import create_model
from segformer.apps.benchmark import argmax_agreement, cpu_model, sample_image


def _row(name: str, times: dict[str, list[float]], base: dict[str, list[float]], agreement: float) -> str:
    wall, cpu = statistics.median(times["wall"]), statistics.median(times["cpu"])
    ratios = [wall / statistics.median(base["wall"]), cpu / statistics.median(base["cpu"])]
    cells = [name, f"{1000 * wall:.1f}", f"{ratios[0]:.2f}x", f"{1000 * cpu:.1f}", f"{ratios[1]:.2f}x"]
    return "| " + " | ".join([*cells, f"{100 * agreement:.2f}%"]) + " |"


def time_by_family(fns: dict[str, Any], repeats: int, passes: int = 2) -> dict[str, dict[str, list[float]]]:
    """{name: {"wall": seconds per call, "cpu": CPU seconds of this process per call}}: rows of one runtime
    (PyTorch, ONNX Runtime, ExecuTorch) interleaved with each other, the runtimes one after another, `passes` times
    over (A B C A B C), so that one runtime's idle threads, still spinning after its call, never take the cores from
    another's. CPU time is the work done: waiting for a core that another job holds does not inflate it."""
    families: dict[str, dict[str, Any]] = {}
    for name, fn in fns.items():
        family = "PyTorch" if "PyTorch" in name or "torch.compile" in name else name.split()[0]
        families.setdefault(family, {})[name] = fn
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in fns}
    for _ in range(passes):
        for group in families.values():
            for i in range(2 + max(1, repeats // passes)):  # 2 warm-up rounds
                for name, fn in group.items():
                    wall, cpu = time.perf_counter(), time.process_time()
                    fn()
                    if i >= 2:
                        times[name]["wall"].append(time.perf_counter() - wall)
                        times[name]["cpu"].append(time.process_time() - cpu)
    return times


def speed_rows(args: argparse.Namespace, tmp: Path) -> list[str]:
    from segformer.export.onnx import export_onnx
    from segformer.export.pte import export_pte
    from segformer.export.runtimes import OnnxForward, PteForward
    from segformer.inference import compiled_forward, eager_forward

    torch.manual_seed(0)
    model = create_model("b0", num_classes=150).eval()
    x = sample_image((args.size, args.size))
    fns: dict[str, Any] = {"eager fp32 (PyTorch)": eager_forward(model)}
    if not args.no_compile:
        fns["torch.compile fp32"] = compiled_forward(model)
    export_onnx(model, tmp / "b0.onnx", sample_size=(args.size, args.size), check=False)
    fns["ONNX Runtime fp32 (our export)"] = OnnxForward(tmp / "b0.onnx", threads=args.threads, spinning=False)
    for kind, dynamic in (("dynamic", True), ("fixed", False)):
        start = time.perf_counter()
        export_pte(model, tmp / f"b0_{kind}.pte", sample_size=(args.size, args.size), dynamic=dynamic)
        print(f"exported the {kind} .pte in {time.perf_counter() - start:.0f} s", flush=True)
        fns[f"ExecuTorch fp32 .pte, {kind} size (XNNPACK)"] = PteForward(tmp / f"b0_{kind}.pte", threads=args.threads)
    with torch.inference_mode():
        reference = fns["eager fp32 (PyTorch)"](x)
        agreement = {name: argmax_agreement(fn(x).float(), reference) for name, fn in fns.items()}
        times = time_by_family({n: (lambda fn=fn: fn(x)) for n, fn in fns.items()}, args.repeats)
    base = times["eager fp32 (PyTorch)"]
    return [_row(name, t, base, agreement[name]) for name, t in times.items()]


def int8_rows(args: argparse.Namespace, tmp: Path) -> list[str]:
    from segformer.data import build_dataset
    from segformer.export.formats import GateSettings, export_model
    from segformer.export.runtimes import PteForward
    from segformer.model.loading import load_model

    model = load_model(args.demo_model).eval()
    val = build_dataset("folder", args.demo_data, "val")
    settings = GateSettings(min_agreement=0.0, eval_dataset=val, size=(args.size, args.size))
    calibrate = Path(args.demo_data) / "images" / "train"
    rows, forwards = [], {}
    for name, int8 in (("fp32", False), ("int8", True)):
        path = tmp / f"demo_{name}.pte"
        start = time.perf_counter()
        report = export_model(
            model, path, "executorch", settings=settings, int8=int8, calibrate=calibrate if int8 else None,
            calib_count=args.calib_count, sample_size=(args.size, args.size), dynamic=not args.fixed,
        )  # fmt: skip
        print(report.summary(), f"\n({time.perf_counter() - start:.0f} s)", flush=True)
        forwards[name] = PteForward(path, threads=args.threads)
        delta = 100 * (report.candidate_miou - report.float_miou)  # type: ignore[operator]
        rows.append((name, report.agreement, 100 * report.candidate_miou, delta, path.stat().st_size / 1e6))  # type: ignore[operator]
    x = sample_image((args.size, args.size))
    with torch.inference_mode():
        times = time_by_family({n: (lambda f=f: f(x)) for n, f in forwards.items()}, args.repeats)
    out = []
    for name, agreement, miou, delta, mb in rows:
        wall, cpu = statistics.median(times[name]["wall"]), statistics.median(times[name]["cpu"])
        ratio = [wall / statistics.median(times["fp32"]["wall"]), cpu / statistics.median(times["fp32"]["cpu"])]
        cells = [f"{name} .pte", f"{100 * agreement:.2f}%", f"{miou:.2f} ({delta:+.2f})", f"{1000 * wall:.1f}"]
        cells += [f"{ratio[0]:.2f}x", f"{1000 * cpu:.1f}", f"{ratio[1]:.2f}x"]
        out.append("| " + " | ".join([*cells, f"{mb:.1f}"]) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=512, help="timed input size (square; default 512)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--no-speed", action="store_true", help="only the --demo-model rows")
    p.add_argument("--demo-model", default=None, help="a trained model for the int8 rows")
    p.add_argument("--demo-data", default="data/synth", help="its dataset (folder layout: images/{train,val})")
    p.add_argument("--calib-count", type=int, default=64)
    p.add_argument("--fixed", action="store_true", help="int8 rows: fixed-size programs instead of dynamic")
    p.add_argument("--out", type=Path, default=None, help="also write the tables (markdown) here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = [
        f"`python benchmarks/deploy.py {' '.join(argv if argv is not None else sys.argv[1:])}`; CPU: {cpu_model()}, "
        f"{args.threads} threads (every runtime); torch {torch.__version__}; the CPU was shared with other jobs "
        f"(load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])} at the start).",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="segformer-deploy-") as tmp:
        if not args.no_speed:
            lines += [
                "| B0 150 classes, 512x512, batch 1 | wall ms | vs eager | CPU ms | vs eager | agreement with eager |",
                "|---|---|---|---|---|---|",
            ]
            lines += speed_rows(args, Path(tmp))
            lines.append("")
        if args.demo_model:
            lines += [
                f"| {args.demo_model} | agreement with fp32 PyTorch | val mIoU (pp vs fp32) | wall ms at {args.size} | "
                "vs fp32 .pte | CPU ms | vs fp32 .pte | MB |",
                "|---|---|---|---|---|---|---|---|",
            ]
            lines += int8_rows(args, Path(tmp))
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
