"""Latency and peak memory of our inference path beside its peers, measured side by side in one process.

Every implementation gets the same weights and the same input. Latencies are medians over `repeats` rounds in
which the implementations take turns (interleaved), so a noisy machine slows them all alike. Peak memory is the
peak resident-set growth during one forward on CPU (glibc's free memory is trimmed and the kernel's high-water mark
reset first), and `torch.cuda.max_memory_allocated` growth on GPU.

Peers (`compare=True`): transformers' SegformerForSemanticSegmentation in eager PyTorch, and ONNX Runtime on
transformers' model and on ours, each exported here with `torch.onnx`; they are built in `peers.py`, which the
scripts in benchmarks/ use too. transformers is a dev dependency only. What to measure is one `BenchmarkOptions`.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import importlib.util
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..constants import MEAN, STD
from ..model.segformer import SegFormer
from ..runtime import autocast, import_torchvision
from .peers import (
    ORT_HF,
    ORT_OURS,
    ORT_OURS_FUSED,
    Runner,
    amp_mode,
    export_ours_onnx,
    export_transformers_onnx,
    inference_fn,
    ort_fn,
    train_step_fn,
    transformers_fn,
    transformers_model,
    transformers_train_step_fn,
    unfolded_fn,
)

AGREEMENT_TARGET = 0.995  # low-precision argmax must match fp32 on at least this share of pixels
OURS_FP32 = "ours eager fp32"  # the rows' names
HF_EAGER = "transformers eager"


@dataclass(frozen=True)
class BenchmarkOptions:
    """What to measure and how (the flags of `segformer benchmark`). `dtype`, `compile`, `unfolded`: also time ours
    with autocast at that dtype, with torch.compile, with the paper-order decoder; `compare`: beside transformers
    eager and (with `onnx`) ONNX Runtime on both exports; `num_classes`: of a random b0..b5 model (default 150);
    `exported`: files written by `segformer export` (ONNX Runtime, ExecuTorch), each a row on the same input (give
    the model they were exported from as the model, so that their agreement with it means something).
    A training benchmark (`run_train_benchmark`) reads size, batch, threads, device, dtype, memory, repeats, warmup
    and num_classes."""

    size: tuple[int, int] = (512, 512)
    batch: int = 1
    threads: int | None = 2
    device: str = "cpu"
    dtype: str = "fp32"
    compile: bool = False
    compare: bool = False
    unfolded: bool = False
    onnx: bool = True
    memory: bool = True
    repeats: int = 10
    warmup: int = 2
    num_classes: int | None = None
    exported: tuple[str, ...] = ()  # .onnx / .pte files (`segformer export`) timed beside ours, on the CPU


@dataclass
class Row:
    """One implementation's numbers; `ratio` is latency / the baseline row's latency."""

    name: str
    latency_ms: float
    q25_ms: float
    q75_ms: float
    peak_mem_mb: float | None = None
    ratio: float | None = None
    mem_ratio: float | None = None
    max_abs_diff: float | None = None  # logits vs our fp32 eager
    agreement: float | None = None  # argmax agreement with our fp32 eager
    note: str = ""
    loss: float | None = None  # training: the loss of the checked step (same weights, same batch)
    grad_diff: float | None = None  # training: gradient error against transformers' float64 step (GRAD_TOLERANCE)


@dataclass
class BenchmarkResult:
    model: str
    size: tuple[int, int]
    batch: int
    threads: int
    device: str
    device_name: str
    repeats: int
    baseline: str
    kind: str = "inference"  # or "train": one optimiser step per call
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def here(
        cls, model: str, size: Sequence[int], batch: int, device: str, repeats: int, baseline: str, **extra: Any
    ) -> BenchmarkResult:
        """A result for this process: its thread count, the device's name and torch's version filled in."""
        versions = {"torch": torch.__version__, **extra.pop("versions", {})}
        return cls(
            model=model,
            size=tuple(size),
            batch=batch,
            threads=torch.get_num_threads(),
            device=device,
            device_name=device_name(device),
            repeats=repeats,
            baseline=baseline,
            versions=versions,
            **extra,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A Markdown table, ratios against `baseline` (`_COLUMNS` of this kind)."""
        train = self.kind == "train"
        step = "training step (forward, loss, backward, AdamW step), " if train else ""
        runs = "interleaved rounds" if train else "interleaved runs"
        columns = _COLUMNS[self.kind]
        lines = [
            f"{self.model}, {step}batch {self.batch}, {self.size[0]}x{self.size[1]}, {self.device_name}, "
            f"{self.threads} threads, median of {self.repeats} {runs}",
            "",
            "| implementation | " + " | ".join(name.format(self.baseline) for name, _ in columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        lines += [f"| {r.name} | " + " | ".join(cell(r) for _, cell in columns) + " |" for r in self.rows]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _latency(row: Row) -> str:
    return f"{row.latency_ms:.1f} ({row.q25_ms:.1f}-{row.q75_ms:.1f})"


_RATIO = ("x {}", lambda r: _fmt(r.ratio, ".3f"))  # {}: the baseline's name
_MEMORY = [("peak mem MB", lambda r: _fmt(r.peak_mem_mb, ".0f")), ("mem x", lambda r: _fmt(r.mem_ratio, ".2f"))]
# The columns of `BenchmarkResult.table` per kind: (header, cell of a row).
_COLUMNS: dict[str, list[tuple[str, Callable[[Row], str]]]] = {
    "inference": [
        ("ms (IQR)", _latency),
        _RATIO,
        *_MEMORY,
        ("max abs diff", lambda r: _fmt(r.max_abs_diff, ".1e")),
        ("argmax agree", lambda r: _fmt(r.agreement, ".2%")),
    ],
    "train": [
        ("ms/step (IQR)", _latency),
        _RATIO,
        ("speed-up", lambda r: _fmt(1 / r.ratio if r.ratio else None, ".2f") + "x"),
        *_MEMORY,
        ("loss", lambda r: _fmt(r.loss, ".6f")),
        ("grad error vs float64", lambda r: _fmt(r.grad_diff, ".1e")),
    ],
}


def sample_image(size: tuple[int, int], batch: int = 1, seed: int = 0) -> Tensor:
    """A normalised test batch that looks like a photo (smooth regions, edges, texture), not white noise."""
    g = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    images = []
    for _ in range(batch):
        img = np.zeros((h, w, 3), np.float32)
        for c in range(3):  # smooth gradients
            a, b = g.uniform(-1, 1, 2)
            img[..., c] = 128 + 60 * np.sin(a * xx / 37 + b * yy / 53 + c)
        for _ in range(12):  # flat-coloured blobs with sharp edges
            cy, cx, r = g.uniform(0, h), g.uniform(0, w), g.uniform(0.05, 0.3) * min(h, w)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = g.uniform(0, 255, 3)
        img += g.normal(0, 8, img.shape)  # texture
        images.append(np.clip(img, 0, 255))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
    return ((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)).contiguous()


def argmax_agreement(a: Tensor, b: Tensor) -> float:
    """Share of pixels whose class (argmax over dim 1) is the same in two logit batches."""
    return float((a.argmax(1) == b.argmax(1)).float().mean())


def cpu_supports_bf16() -> bool:
    """AMX or AVX512-BF16: where CPU bf16 matmuls are native rather than emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows: benchmark tables name it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else f"CPU {cpu_model()}"


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, sync: Callable[[], None]) -> dict:
    """{name: [seconds per call]}: each round calls every fn once, in turn, after `warmup` untimed rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def time_by_runtime(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, sync: Callable[[], None]) -> dict:
    """`time_interleaved` over the PyTorch rows, then over the ONNX Runtime rows, then the ExecuTorch rows: after
    each PyTorch call its OpenMP threads keep spinning for a while, which steals the cores from whatever runs next,
    so the rows of one runtime take turns with each other, not with PyTorch's."""
    groups: dict[str, dict[str, Callable[[], Any]]] = {}
    for name, fn in fns.items():
        groups.setdefault(_runtime_of(name), {})[name] = fn
    times: dict[str, list[float]] = {}
    for group in groups.values():  # PyTorch first (the baseline), then each other runtime's rows together
        times.update(time_interleaved(group, repeats, warmup, sync))
    return {name: times[name] for name in fns}


def _runtime_of(name: str) -> str:
    """The runtime a row runs on, from its name: "ONNX Runtime", "ExecuTorch", else "PyTorch"."""
    return next((r for r in ("ONNX Runtime", "ExecuTorch") if name.startswith(r)), "PyTorch")


def _rss_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def peak_memory_mb(fn: Callable[[], Any], device: str) -> float | None:
    """Peak memory growth (MB) while `fn` runs; None where this platform cannot measure it."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 1e6
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back, so reuse shows up as growth again
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (VmHWM) to the current RSS
        base = _rss_status("VmRSS:")
    except OSError:
        return None
    fn()
    return (_rss_status("VmHWM:") - base) / 1e6


def _prepare(threads: int | None, device: str) -> None:
    """Torch's intra-op thread count, and one clear line when CUDA is asked for and PyTorch sees none."""
    if threads:
        torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is visible to PyTorch")


def run_benchmark(
    model: str | SegFormer = "b0",
    options: BenchmarkOptions = BenchmarkOptions(),
    progress: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """Measure our model (fp32 eager; plus `dtype` autocast and/or `torch.compile` when asked; plus the paper-order
    decoder with `unfolded`) and, with `compare`, transformers eager and ONNX Runtime on both exports.

    The baseline of the ratios is transformers eager fp32 when compared, else our fp32 eager.
    """
    o = options
    say = progress or (lambda s: None)
    _prepare(o.threads, o.device)
    amp_mode(o.dtype, o.device)
    if o.compare and importlib.util.find_spec("transformers") is None:
        raise RuntimeError(
            "--compare needs transformers (a dev dependency): pip install transformers, or drop --compare"
        )
    ours, label, note = _our_model(model, o.num_classes)
    ours = ours.to(o.device).eval()
    x = sample_image(o.size, o.batch).to(o.device)
    result = BenchmarkResult.here(
        f"{label} ({ours.config.name}, {ours.config.num_classes} classes)",
        o.size,
        o.batch,
        o.device,
        o.repeats,
        baseline=HF_EAGER if o.compare else OURS_FP32,
    )
    if note:
        result.notes.append(note + "; latency does not depend on them")
    fns = _our_runners(ours, x, o, result)
    with tempfile.TemporaryDirectory(prefix="segformer-bench-") as tmp:
        hf = None
        if o.compare:
            say("loading transformers' model with the same weights")
            hf = transformers_model(ours, o.device)
            _transformers_notes(hf, result)
            fns = {HF_EAGER: transformers_fn(hf, x), **fns}
        if o.onnx and (o.compare or o.device == "cpu"):
            fns.update(_onnx_runners(ours, hf, x, Path(tmp), o, result, say))
        fns.update(_exported_runners(o.exported, x, o.threads, say))
        _measure(fns, o, result, say)
    return result


def _our_model(model: str | SegFormer, num_classes: int | None) -> tuple[SegFormer, str, str | None]:
    """(model, its label in the table, a note on random weights or None) for a model or anything `model_from_spec`
    accepts."""
    if isinstance(model, SegFormer):
        return model, model.config.name, None
    from ..model.loading import model_from_spec, random_weights_note

    ours = model_from_spec(model, num_classes=num_classes)
    return ours, model, random_weights_note(model, ours)


def _our_runners(ours: SegFormer, x: Tensor, o: BenchmarkOptions, result: BenchmarkResult) -> dict[str, Runner]:
    """Our rows: fp32 eager, and what the options add (autocast, torch.compile, the paper-order decoder)."""
    fns: dict[str, Runner] = {OURS_FP32: inference_fn(ours, x)}
    if o.dtype != "fp32":
        fns[f"ours eager {o.dtype}"] = inference_fn(ours, x, dtype=o.dtype)
        if o.device == "cpu" and o.dtype == "bf16" and not cpu_supports_bf16():
            result.notes.append("this CPU has no AMX/AVX512-BF16: bf16 is emulated and slow here")
    if o.compile:
        fns[f"ours torch.compile {o.dtype}"] = inference_fn(ours, x, dtype=o.dtype, compile=True)
    if o.unfolded:
        fns["ours, decoder unfolded (paper order)"] = unfolded_fn(ours, x)
    return fns


def _exported_runners(
    paths: Sequence[str], x: Tensor, threads: int | None, say: Callable[[str], None]
) -> dict[str, Runner]:
    """A row per exported file, run by its runtime (`export.runtimes.load_runtime`) on the CPU copy of `x`."""
    from ..export.runtimes import RUNTIME_NAMES, load_runtime

    fns: dict[str, Runner] = {}
    for path in paths:
        say(f"loading {path}")
        forward, x_cpu = load_runtime(path, threads=threads), x.float().cpu()
        size = getattr(forward, "fixed_size", None)
        if size is not None and tuple(size) != tuple(x.shape[-2:]):
            side = f"{size[0]}x{size[1]}"
            raise ValueError(f"{path}: a program fixed to {side}; benchmark it with --size {side}")
        fns[f"{RUNTIME_NAMES[Path(path).suffix.lower()]} {Path(path).name}"] = partial(forward, x_cpu)
    return fns


def _transformers_notes(hf: torch.nn.Module, result: BenchmarkResult) -> None:
    import_torchvision()  # transformers' image code imports it; see runtime.import_torchvision
    import transformers

    result.versions["transformers"] = transformers.__version__
    attn = getattr(hf.config, "_attn_implementation", None)
    result.notes.append(f"transformers {transformers.__version__} (attention implementation: {attn})")


def _measure(fns: dict[str, Runner], o: BenchmarkOptions, result: BenchmarkResult, say: Callable[[str], None]) -> None:
    """Outputs against our fp32 eager, peak memory, interleaved timing: one row per runner, and the notes."""
    say("checking outputs")
    reference = fns[OURS_FP32]().float().cpu()
    outputs = {name: torch.as_tensor(fn()).float().cpu() for name, fn in fns.items()}
    mem = _peak_memories(fns, o.device, say) if o.memory else {}
    say(f"timing {len(fns)} implementations x {o.repeats} rounds")
    sync = torch.cuda.synchronize if o.device == "cuda" else (lambda: None)
    times = time_by_runtime(fns, o.repeats, o.warmup, sync)
    base_mem = mem.get(result.baseline)
    for name, t in times.items():
        out = outputs[name]
        row = _timed_row(name, t, times[result.baseline])
        if name in mem and _runtime_of(name) == "PyTorch":
            row.peak_mem_mb = mem[name]
            row.mem_ratio = mem[name] / base_mem if base_mem else None
        if out.shape == reference.shape:
            row.max_abs_diff = float((out - reference).abs().max())
            row.agreement = argmax_agreement(out, reference)
        result.rows.append(row)
    if o.memory and o.device == "cpu":
        result.notes.append("peak memory: resident-set growth during one forward (other runtimes' rows: not measured)")
    for name in fns:
        if name.startswith("ours eager") and name != OURS_FP32:
            agree = next(r.agreement for r in result.rows if r.name == name)
            verdict = "meets" if agree >= AGREEMENT_TARGET else "MISSES"
            result.notes.append(f"{name}: argmax agreement with fp32 {agree:.3%} ({verdict} the 99.5% target)")
    lat = {r.name: r.latency_ms for r in result.rows}
    for name in (ORT_OURS, ORT_OURS_FUSED):
        if name in lat and ORT_HF in lat:
            result.notes.append(f"{name} / transformers' export = {lat[name] / lat[ORT_HF]:.3f}x latency")


def _peak_memories(fns: dict[str, Callable[[], Any]], device: str, say: Callable[[str], None]) -> dict[str, float]:
    """Peak memory per implementation (the larger of two calls); none where the CPU's resident set is unreadable."""
    say("measuring peak memory")
    mem = {name: max(peak_memory_mb(fn, device) or 0.0 for _ in range(2)) for name, fn in fns.items()}
    return {} if device == "cpu" and any(v == 0.0 for v in mem.values()) else mem


def _timed_row(name: str, times: list[float], baseline: list[float]) -> Row:
    """A row's median and inter-quartile range (ms) and its ratio to the baseline's median."""
    q25, q75 = np.percentile(np.array(times) * 1000, [25, 75])
    median = statistics.median(times)
    return Row(name, median * 1000, float(q25), float(q75), ratio=median / statistics.median(baseline))


def _onnx_runners(
    ours: SegFormer,
    hf: torch.nn.Module | None,
    x: Tensor,
    folder: Path,
    o: BenchmarkOptions,
    result: BenchmarkResult,
    say: Callable[[str], None],
) -> dict[str, Runner]:
    """The ONNX Runtime rows: transformers' export (when `hf` is given) and ours, standard and with ORT's fused
    attention; none, with a note, where onnxruntime (or its CUDA provider on GPU) is missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        result.notes.append("onnxruntime not installed: ONNX Runtime rows skipped (pip install 'segformer[onnx]')")
        return {}
    if o.device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        result.notes.append("onnxruntime has no CUDAExecutionProvider here: ONNX Runtime rows skipped")
        return {}
    providers = ["CUDAExecutionProvider"] if o.device == "cuda" else ["CPUExecutionProvider"]
    result.versions["onnxruntime"] = ort.__version__
    result.notes.append(
        "ONNX Runtime sessions run with intra-op spinning off: idle ORT threads would otherwise busy-wait on the cores "
        "the next implementation of the interleaved round needs; the ONNX Runtime rows take turns with each other in "
        "rounds of their own, after the PyTorch rows (PyTorch's OpenMP threads spin for a while after each call)"
    )
    x_np = x.cpu().numpy()
    fns = {}
    if hf is not None:
        say("exporting transformers' model to ONNX")
        path = export_transformers_onnx(hf.cpu(), x.cpu(), folder / "transformers.onnx")
        hf.to(o.device)
        fns[ORT_HF] = ort_fn(path, x_np, o.threads, providers)
    say("exporting our model to ONNX (standard operators, and with ONNX Runtime's fused attention)")
    ours_cpu = ours.cpu()
    for name, ort_ops in ((ORT_OURS, False), (ORT_OURS_FUSED, True)):
        path = export_ours_onnx(ours_cpu, folder / f"ours{'-ort' if ort_ops else ''}.onnx", x.shape[-2:], ort_ops)
        fns[name] = ort_fn(path, x_np, o.threads, providers)
    ours.to(o.device)
    result.notes.append(
        f"{ORT_OURS_FUSED}: `segformer export --onnxruntime-ops`, attention as ONNX Runtime's com.microsoft "
        "MultiHeadAttention (that file runs in ONNX Runtime only); the other rows hold standard ONNX operators"
    )
    return fns


# Training-step agreement. The same step from the same weights (dropout and drop-path off) must give the same loss
# and gradients up to float order: the folded decoder and the slab-wise loss sum in another order than transformers'
# concat + 1x1 conv and full-size cross-entropy. The arbiter is transformers' own step in float64: per tensor,
# max |g - g_float64| relative to the tensor's largest gradient, floored at GRAD_FLOOR of the model's largest (some
# exact gradients are zero, e.g. the decoder projections' biases that BatchNorm subtracts again, and hold float noise
# only). Ours must be within GRAD_TOLERANCE, or as close as transformers' float32 step is (times 2).
GRAD_TOLERANCE = 1e-3
GRAD_FLOOR = 1e-4
LOSS_TOLERANCE = 1e-5


def sample_labels(size: tuple[int, int], batch: int, num_classes: int, seed: int = 0) -> Tensor:
    """A (B, H, W) label batch of blobs of classes over a background, with some ignored (255) pixels."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    coarse = torch.randint(0, num_classes, (batch, 1, max(h // 32, 1), max(w // 32, 1)), generator=g).float()
    labels = torch.nn.functional.interpolate(coarse, size=(h, w), mode="nearest")[:, 0].long()
    labels[torch.rand((batch, h, w), generator=g) < 0.05] = 255
    return labels


def _without_dropout(*models: torch.nn.Module) -> list[tuple[Any, str, float]]:
    """Zero every dropout/drop-path rate (for a deterministic comparison); returns what to restore."""
    saved = []
    for model in models:
        for module in model.modules():
            for attr in ("p", "drop_prob"):
                value = getattr(module, attr, None)
                if isinstance(value, float) and value > 0 and "drop" in type(module).__name__.lower():
                    saved.append((module, attr, value))
                    setattr(module, attr, 0.0)
    return saved


@dataclass
class StepCheck:
    """One training step of ours and transformers' from the same weights, against transformers' in float64."""

    loss: float
    hf_loss: float
    exact_loss: float  # float64
    grad_error: float  # ours vs float64 (see GRAD_TOLERANCE)
    hf_grad_error: float  # transformers' float32 vs float64
    grad_diff: float  # ours vs transformers' float32

    @property
    def agrees(self) -> bool:
        loss_ok = abs(self.loss - self.exact_loss) <= LOSS_TOLERANCE * max(1.0, abs(self.exact_loss))
        return loss_ok and self.grad_error <= max(GRAD_TOLERANCE, 2 * self.hf_grad_error)


def compare_training_step(ours: SegFormer, hf: torch.nn.Module, x: Tensor, y: Tensor) -> StepCheck:
    """Loss and gradients of one step (dropout and drop-path off) of ours, of transformers' and of transformers' in
    float64 (the arbiter), all from the same weights; gradients compared per parameter (see GRAD_TOLERANCE)."""
    from ..model.convert import to_ours
    from ..training.losses import segmentation_loss

    exact = copy.deepcopy(hf).double()
    saved = _without_dropout(ours, hf, exact)
    try:
        grads, losses = [], []
        for model, fn in (
            (ours, lambda: segmentation_loss(ours(x), y)),
            (hf, lambda: hf(pixel_values=x, labels=y).loss),
            (exact, lambda: exact(pixel_values=x.double(), labels=y).loss),
        ):
            model.train()
            model.zero_grad(set_to_none=True)
            loss = fn()
            loss.backward()
            losses.append(float(loss.detach()))
            named = {name: p.grad.double() for name, p in model.named_parameters() if p.grad is not None}
            grads.append(named if model is ours else to_ours(named))
            model.zero_grad(set_to_none=True)
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)
    ref = grads[2]
    floor = GRAD_FLOOR * max(float(g.abs().max()) for g in ref.values())

    def error(got: dict[str, Tensor], want: dict[str, Tensor]) -> float:
        return max(float((got[k] - g).abs().max()) / max(float(g.abs().max()), floor) for k, g in want.items())

    return StepCheck(
        losses[0], losses[1], losses[2], error(grads[0], ref), error(grads[1], ref), error(grads[0], grads[1])
    )


def run_train_benchmark(
    model: str = "b0",
    options: BenchmarkOptions = BenchmarkOptions(batch=2),
    progress: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """One training step (forward, loss, backward, AdamW step) of ours against transformers'
    SegformerForSemanticSegmentation: same weights, same batch, interleaved rounds, medians, peak memory, and a
    check that both give the same loss and gradients (`compare_training_step`) before timing."""
    o = options
    say = progress or (lambda s: None)
    _prepare(o.threads, o.device)
    amp = amp_mode(o.dtype, o.device)
    if importlib.util.find_spec("transformers") is None:
        raise RuntimeError("--train compares with transformers (a dev dependency): pip install transformers")
    import_torchvision()  # transformers' image code imports it; see runtime.import_torchvision
    import transformers

    from ..model.config import SegFormerConfig

    # LayerNorm eps 1e-5 as transformers uses everywhere, so that the gradient check is tight (timing is the same).
    config = SegFormerConfig.from_name(
        model, layer_norm_eps=1e-5, **({"num_classes": o.num_classes} if o.num_classes else {})
    )
    ours = SegFormer(config).to(o.device)
    x = sample_image(o.size, o.batch).to(o.device)
    y = sample_labels(o.size, o.batch, config.num_classes).to(o.device)
    result = BenchmarkResult.here(
        f"{model} ({config.num_classes} classes, random weights)",
        o.size,
        o.batch,
        o.device,
        o.repeats,
        baseline="transformers",
        kind="train",
        versions={"transformers": transformers.__version__},
    )
    hf = transformers_model(ours, o.device)
    attn = getattr(hf.config, "_attn_implementation", None)
    result.notes.append(f"transformers {transformers.__version__} (attention implementation: {attn}), fp32")
    say("checking the loss and gradients of one step against transformers' (float32 and float64)")
    check = compare_training_step(ours, hf, x, y)
    result.notes += _step_check_notes(check)

    fns: dict[str, Runner] = {"transformers": transformers_train_step_fn(hf, x, y), "ours": train_step_fn(ours, x, y)}
    if amp != "none":
        step = train_step_fn(copy.deepcopy(ours), x, y)

        def amp_step() -> Tensor:
            with autocast(o.device, amp):
                return step()

        fns[f"ours {o.dtype} autocast"] = amp_step
    say("warming up (optimiser state)")
    for fn in fns.values():
        fn()
    mem = _peak_memories(fns, o.device, say) if o.memory else {}
    say(f"timing {len(fns)} implementations x {o.repeats} rounds")
    times = time_interleaved(fns, o.repeats, o.warmup, torch.cuda.synchronize if o.device == "cuda" else (lambda: None))
    for name, t in times.items():
        row = _timed_row(name, t, times["transformers"])
        if name in mem:
            row.peak_mem_mb = mem[name]
            row.mem_ratio = mem[name] / mem["transformers"] if mem.get("transformers") else None
        if name == "ours":
            row.loss, row.grad_diff = check.loss, check.grad_error
        elif name == "transformers":
            row.loss, row.grad_diff = check.hf_loss, check.hf_grad_error
        result.rows.append(row)
    if o.memory and o.device == "cpu" and mem:
        result.notes.append(
            "peak memory: resident-set growth during one step after warm-up (optimiser state already allocated): "
            "activations, gradients and temporaries"
        )
    return result


def _step_check_notes(check: StepCheck) -> list[str]:
    """The training benchmark's notes on `compare_training_step`."""
    notes = [
        f"same weights and batch, dropout and drop-path off: loss {check.loss:.6f} (ours), {check.hf_loss:.6f} "
        f"(transformers), {check.exact_loss:.6f} (transformers in float64); gradients within {check.grad_error:.1e} "
        f"(ours) and {check.hf_grad_error:.1e} (transformers' float32) of the float64 ones, {check.grad_diff:.1e} "
        f"between ours and transformers' (max over tensors of the largest difference relative to the tensor's "
        f"largest gradient, floored at {GRAD_FLOOR:g} of the model's largest): "
        f"{'AGREE' if check.agrees else 'DISAGREE'} (ours within {GRAD_TOLERANCE:g}, or 2x transformers' own float32 "
        f"error, and the loss within {LOSS_TOLERANCE:g} relative); the timed steps run with the recipe's drop-path "
        "and dropout (0.1)"
    ]
    if not check.agrees:
        notes.append("WARNING: the training steps disagree beyond float order: the timing compares different things")
    return notes


def environment_note() -> str:
    """Threads and library versions, for the benchmark report."""
    return f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs visible"
