"""Latency and peak memory of our inference path beside its peers, measured side by side in one process.

Every implementation gets the same weights and the same input. Latencies are medians over `repeats` rounds in
which the implementations take turns (interleaved), so a noisy machine slows them all alike. Peak memory is the
peak resident-set growth during one forward on CPU (glibc's free memory is trimmed and the kernel's high-water mark
reset first), and `torch.cuda.max_memory_allocated` growth on GPU.

Peers (`compare=True`): transformers' SegformerForSemanticSegmentation in eager PyTorch, and ONNX Runtime on
transformers' model and on ours, each exported here with `torch.onnx`. transformers is a dev dependency only.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..constants import MEAN, STD
from ..model.segformer import SegFormer
from ..runtime import autocast, check_amp

AGREEMENT_TARGET = 0.995  # low-precision argmax must match fp32 on at least this share of pixels
ORT_HF = "ONNX Runtime, transformers' export"
ORT_OURS = "ONNX Runtime, our export"
ORT_OURS_FUSED = "ONNX Runtime, our export with ORT ops"


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


def _amp(dtype: str, device: str) -> str:
    """The AMP mode (runtime.AMP_DTYPES) of a benchmark --dtype; fp16 autocast only on GPUs."""
    if dtype != "fp32":
        check_amp(dtype, "dtype")
    if dtype == "fp16" and device != "cuda":
        raise ValueError("fp16 autocast is for GPUs; on CPU use --dtype bf16")
    return "none" if dtype == "fp32" else dtype


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


def inference_fn(
    model: torch.nn.Module, x: Tensor, *, dtype: str = "fp32", compile: bool = False
) -> Callable[[], Tensor]:
    """`fn()` runs `model(x)` the fast way: eval mode, inference_mode, optional autocast (bf16/fp16) and
    `torch.compile`. The logits come back in float32."""
    model.eval()
    device = x.device.type
    amp = _amp(dtype, device)
    net = torch.compile(model) if compile else model

    def fn() -> Tensor:
        with torch.inference_mode(), autocast(device, amp):
            return net(x).float()

    return fn


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
    """`time_interleaved` over the PyTorch rows, then over the ONNX Runtime rows: after each PyTorch call its
    OpenMP threads keep spinning for a while, which steals the cores from whatever runs next, so ONNX Runtime rows
    take turns with each other, not with PyTorch (their ratio to each other is the one that matters)."""
    ort = {name: fn for name, fn in fns.items() if name.startswith("ONNX Runtime")}
    torch_rows = {name: fn for name, fn in fns.items() if name not in ort}
    times = time_interleaved(torch_rows, repeats, warmup, sync) if torch_rows else {}
    if ort:
        times.update(time_interleaved(ort, repeats, warmup, sync))
    return {name: times[name] for name in fns}


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


def _export_transformers(hf_model, x: Tensor, path: Path, opset: int = 17) -> None:
    """transformers' model through the same torch.onnx path as ours (dynamic batch/H/W)."""

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values: Tensor) -> Tensor:
            return self.m(pixel_values=pixel_values).logits

    with torch.no_grad():
        torch.onnx.export(
            Logits(hf_model).eval(),
            (x,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_axes={"pixel_values": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}},
            do_constant_folding=True,
        )


def _prepare(threads: int | None, device: str) -> None:
    """Torch's intra-op thread count, and one clear line when CUDA is asked for and PyTorch sees none."""
    if threads:
        torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is visible to PyTorch")


def run_benchmark(
    model: str | SegFormer = "b0",
    *,
    size: tuple[int, int] = (512, 512),
    batch: int = 1,
    threads: int | None = 2,
    device: str = "cpu",
    dtype: str = "fp32",
    compile: bool = False,
    compare: bool = False,
    unfolded: bool = False,
    onnx: bool = True,
    memory: bool = True,
    repeats: int = 10,
    warmup: int = 2,
    num_classes: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """Measure our model (fp32 eager; plus `dtype` autocast and/or `torch.compile` when asked; plus the paper-order
    decoder with `unfolded`) and, with `compare`, transformers eager and ONNX Runtime on both exports.

    The baseline of the ratios is transformers eager fp32 when compared, else our fp32 eager.
    """
    say = progress or (lambda s: None)
    _prepare(threads, device)
    _amp(dtype, device)
    if compare:
        try:
            import transformers
        except ImportError:
            raise RuntimeError(
                "--compare needs transformers (a dev dependency): pip install transformers, or drop --compare"
            ) from None
    if isinstance(model, SegFormer):
        ours, label = model, model.config.name
    else:
        from ..model.loading import model_from_spec, random_weights_note

        ours = model_from_spec(model, num_classes=num_classes)
        note = random_weights_note(model, ours)
        label = model
    ours = ours.to(device).eval()
    x = sample_image(size, batch).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    result = BenchmarkResult.here(
        f"{label} ({ours.config.name}, {ours.config.num_classes} classes)",
        size,
        batch,
        device,
        repeats,
        baseline="transformers eager" if compare else "ours eager fp32",
    )
    if not isinstance(model, SegFormer) and note:
        result.notes.append(note + "; latency does not depend on them")

    fns: dict[str, Callable[[], Any]] = {"ours eager fp32": inference_fn(ours, x)}
    if dtype != "fp32":
        fns[f"ours eager {dtype}"] = inference_fn(ours, x, dtype=dtype)
        if device == "cpu" and dtype == "bf16" and not cpu_supports_bf16():
            result.notes.append("this CPU has no AMX/AVX512-BF16: bf16 is emulated and slow here")
    if compile:
        fns[f"ours torch.compile {dtype}"] = inference_fn(ours, x, dtype=dtype, compile=True)
    if unfolded:
        import copy

        paper = copy.deepcopy(ours)
        paper.head.fold = False
        fns["ours, decoder unfolded (paper order)"] = inference_fn(paper, x)

    tmp = tempfile.TemporaryDirectory(prefix="segformer-bench-")
    x_np = x.cpu().numpy()
    if compare:
        say("loading transformers' model with the same weights")
        folder = ours.save_pretrained(Path(tmp.name) / "hf")
        hf = transformers.SegformerForSemanticSegmentation.from_pretrained(folder).to(device).eval()
        result.versions["transformers"] = transformers.__version__
        attn = getattr(hf.config, "_attn_implementation", None)
        result.notes.append(f"transformers {transformers.__version__} (attention implementation: {attn})")

        def hf_fn() -> Tensor:
            with torch.inference_mode():
                return hf(pixel_values=x).logits

        fns = {"transformers eager": hf_fn, **fns}
        if onnx:
            fns.update(_onnx_peers(ours, hf, x, x_np, Path(tmp.name), threads, device, result, say))
    elif onnx and device == "cpu":
        fns.update(_onnx_peers(ours, None, x, x_np, Path(tmp.name), threads, device, result, say))

    say("checking outputs")
    reference = fns["ours eager fp32"]().float().cpu()
    outputs = {name: torch.as_tensor(fn()).float().cpu() for name, fn in fns.items()}
    mem = _peak_memories(fns, device, say) if memory else {}
    say(f"timing {len(fns)} implementations x {repeats} rounds")
    times = time_by_runtime(fns, repeats, warmup, sync)
    base_mem = mem.get(result.baseline)
    for name, t in times.items():
        out = outputs[name]
        row = _timed_row(name, t, times[result.baseline])
        if name in mem and "ONNX Runtime" not in name:
            row.peak_mem_mb = mem[name]
            row.mem_ratio = mem[name] / base_mem if base_mem else None
        if out.shape == reference.shape:
            row.max_abs_diff = float((out - reference).abs().max())
            row.agreement = argmax_agreement(out, reference)
        result.rows.append(row)
    if memory and device == "cpu":
        result.notes.append("peak memory: resident-set growth during one forward (ONNX Runtime rows: not measured)")
    for name in fns:
        if name.startswith("ours eager") and name != "ours eager fp32":
            agree = next(r.agreement for r in result.rows if r.name == name)
            verdict = "meets" if agree >= AGREEMENT_TARGET else "MISSES"
            result.notes.append(f"{name}: argmax agreement with fp32 {agree:.3%} ({verdict} the 99.5% target)")
    lat = {r.name: r.latency_ms for r in result.rows}
    for name in (ORT_OURS, ORT_OURS_FUSED):
        if name in lat and ORT_HF in lat:
            result.notes.append(f"{name} / transformers' export = {lat[name] / lat[ORT_HF]:.3f}x latency")
    tmp.cleanup()
    return result


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


def _ort_fn(session: Any, x_np: np.ndarray) -> Callable[[], np.ndarray]:
    """`fn()` runs the session on the benchmark input and returns its logits."""
    return lambda: session.run(None, {"pixel_values": x_np})[0]


def _onnx_peers(ours, hf, x, x_np, folder, threads, device, result, say) -> dict[str, Callable[[], Any]]:
    try:
        import onnxruntime as ort
    except ImportError:
        result.notes.append("onnxruntime not installed: ONNX Runtime rows skipped (pip install 'segformer[onnx]')")
        return {}
    from ..export.onnx import export_onnx, ort_session

    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            result.notes.append("onnxruntime has no CUDAExecutionProvider here: ONNX Runtime rows skipped")
            return {}
        providers = ["CUDAExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    fns = {}
    result.versions["onnxruntime"] = ort.__version__
    result.notes.append(
        "ONNX Runtime sessions run with intra-op spinning off: idle ORT threads would otherwise busy-wait on the cores "
        "the next implementation of the interleaved round needs; the ONNX Runtime rows take turns with each other in "
        "rounds of their own, after the PyTorch rows (PyTorch's OpenMP threads spin for a while after each call)"
    )
    if hf is not None:
        say("exporting transformers' model to ONNX")
        path = folder / "transformers.onnx"
        _export_transformers(hf.cpu(), x.cpu(), path)
        hf.to(device)
        session = ort_session(path, threads, providers, spinning=False)
        fns[ORT_HF] = _ort_fn(session, x_np)
    say("exporting our model to ONNX (standard operators, and with ONNX Runtime's fused attention)")
    ours_cpu = ours.cpu()
    for name, ort_ops in ((ORT_OURS, False), (ORT_OURS_FUSED, True)):
        file = folder / f"ours{'-ort' if ort_ops else ''}.onnx"
        export_onnx(ours_cpu, file, sample_size=tuple(x.shape[-2:]), check=False, onnxruntime_ops=ort_ops)
        session = ort_session(file, threads, providers, spinning=False)
        fns[name] = _ort_fn(session, x_np)
    ours.to(device)
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


def train_step_fn(model: torch.nn.Module, x: Tensor, y: Tensor, lr: float = 6e-5) -> Callable[[], Tensor]:
    """`fn()` runs one training step of our model the way `segformer.training` does: forward, the paper's loss
    (`segmentation_loss`), backward, AdamW step; returns the loss."""
    from ..training.losses import segmentation_loss

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

    def fn() -> Tensor:
        loss = segmentation_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return fn


def _hf_train_step_fn(hf: torch.nn.Module, x: Tensor, y: Tensor, lr: float = 6e-5) -> Callable[[], Tensor]:
    hf.train()
    optimizer = torch.optim.AdamW(hf.parameters(), lr=lr)

    def fn() -> Tensor:
        loss = hf(pixel_values=x, labels=y).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return fn


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
    import copy

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
            losses.append(float(loss))
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
    *,
    size: tuple[int, int] = (512, 512),
    batch: int = 2,
    threads: int | None = 2,
    device: str = "cpu",
    dtype: str = "fp32",
    memory: bool = True,
    repeats: int = 10,
    warmup: int = 2,
    num_classes: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """One training step (forward, loss, backward, AdamW step) of ours against transformers'
    SegformerForSemanticSegmentation: same weights, same batch, interleaved rounds, medians, peak memory, and a
    check that both give the same loss and gradients (`compare_training_step`) before timing."""
    say = progress or (lambda s: None)
    _prepare(threads, device)
    amp = _amp(dtype, device)
    try:
        import transformers
    except ImportError:
        raise RuntimeError("--train compares with transformers (a dev dependency): pip install transformers") from None
    from ..model.config import SegFormerConfig

    # LayerNorm eps 1e-5 as transformers uses everywhere, so that the gradient check is tight (timing is the same).
    config = SegFormerConfig.from_name(
        model, layer_norm_eps=1e-5, **({"num_classes": num_classes} if num_classes else {})
    )
    ours = SegFormer(config).to(device)
    x = sample_image(size, batch).to(device)
    y = sample_labels(size, batch, config.num_classes).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    result = BenchmarkResult.here(
        f"{model} ({config.num_classes} classes, random weights)",
        size,
        batch,
        device,
        repeats,
        baseline="transformers",
        kind="train",
        versions={"transformers": transformers.__version__},
    )
    with tempfile.TemporaryDirectory(prefix="segformer-bench-") as tmp:
        folder = ours.save_pretrained(Path(tmp) / "hf")
        hf = transformers.SegformerForSemanticSegmentation.from_pretrained(folder).to(device)
    attn = getattr(hf.config, "_attn_implementation", None)
    result.notes.append(f"transformers {transformers.__version__} (attention implementation: {attn}), fp32")

    say("checking the loss and gradients of one step against transformers' (float32 and float64)")
    check = compare_training_step(ours, hf, x, y)
    result.notes.append(
        f"same weights and batch, dropout and drop-path off: loss {check.loss:.6f} (ours), {check.hf_loss:.6f} "
        f"(transformers), {check.exact_loss:.6f} (transformers in float64); gradients within {check.grad_error:.1e} "
        f"(ours) and {check.hf_grad_error:.1e} (transformers' float32) of the float64 ones, {check.grad_diff:.1e} "
        f"between ours and transformers' (max over tensors of the largest difference relative to the tensor's "
        f"largest gradient, floored at {GRAD_FLOOR:g} of the model's largest): "
        f"{'AGREE' if check.agrees else 'DISAGREE'} (ours within {GRAD_TOLERANCE:g}, or 2x transformers' own float32 "
        f"error, and the loss within {LOSS_TOLERANCE:g} relative); the timed steps run with the recipe's drop-path "
        "and dropout (0.1)"
    )
    if not check.agrees:
        result.notes.append(
            "WARNING: the training steps disagree beyond float order: the timing compares different things"
        )

    fns: dict[str, Callable[[], Any]] = {
        "transformers": _hf_train_step_fn(hf, x, y),
        "ours": train_step_fn(ours, x, y),
    }
    if amp != "none":
        import copy

        ours_amp = copy.deepcopy(ours)
        step = train_step_fn(ours_amp, x, y)

        def amp_step() -> Tensor:
            with autocast(device, amp):
                return step()

        fns[f"ours {dtype} autocast"] = amp_step
    say("warming up (optimiser state)")
    for fn in fns.values():
        fn()
    mem = _peak_memories(fns, device, say) if memory else {}
    say(f"timing {len(fns)} implementations x {repeats} rounds")
    times = time_interleaved(fns, repeats, warmup, sync)
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
    if memory and device == "cpu" and mem:
        result.notes.append(
            "peak memory: resident-set growth during one step after warm-up (optimiser state already allocated): "
            "activations, gradients and temporaries"
        )
    return result


def environment_note() -> str:
    """Threads and library versions, for the benchmark report."""
    return f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs visible"
