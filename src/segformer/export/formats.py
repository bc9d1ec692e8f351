"""Every export format behind one gate: write the candidate to a temporary file, run it as a forward through the
inference spine next to the float PyTorch model, and move it into place only if its labels agree well enough.

`export_model(model, path, "onnx" | "executorch" | "tensorrt", ...)`; INT8 ONNX (`int8.export_int8`) has its own
steps (ONNX Runtime's quantiser works on the float graph) and ends in the same `gate`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write
from ..inference import InferenceOptions, Segmenter
from ..model.config import channel_stats
from ..model.segformer import SegFormer
from .gate import GateReport, check_set, compare, gate, image_files, load_images, split_images
from .runtimes import OnnxForward, PteForward, runtime_options

log = logging.getLogger("segformer")

# The formats `segformer export --format` writes: what each is and where it runs.
FORMATS = {
    "onnx": "ONNX float32 for ONNX Runtime (CPU, CUDA) and other ONNX runtimes",
    "int8": "ONNX INT8 (QDQ) for ONNX Runtime on CPUs, calibrated on your images",
    "executorch": "ExecuTorch .pte with the XNNPACK delegate (Android, iOS, Linux/macOS CPUs); --int8: PT2E int8",
    "tensorrt": "TensorRT engine, fp16 with LayerNorm and Softmax in fp32 (NVIDIA GPUs; untested here)",
}
FP32_KEPT = {"everything": "a float32 export: the model's own precision"}


@dataclass(frozen=True)
class GateSettings:
    """How an export is checked before it is written: the least pixel agreement with the float model (`force`
    writes below it), and the images: `eval_dataset` (gives the mIoU change, run with `eval_options`), else
    `check_images` (a folder or files, the first `check_count`, shrunk to fit `size`), else synthetic scenes."""

    min_agreement: float = 0.99
    force: bool = False
    check_images: str | os.PathLike | Sequence[str | os.PathLike] | None = None
    check_count: int = 8
    eval_dataset: Any = None
    eval_options: InferenceOptions | None = None
    eval_max_samples: int | None = None
    size: tuple[int, int] = (512, 512)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement {self.min_agreement} must be between 0 and 1")
        if self.check_count < 1:
            raise ValueError(f"check_count {self.check_count} must be >= 1")


@dataclass
class Candidate:
    """A written, unchecked export: its file, its forward, and what runs in higher precision and why."""

    path: Path
    forward: Any
    kept: dict[str, str]
    notes: list[str]


def export_model(
    model: SegFormer,
    path: str | os.PathLike,
    format: str = "onnx",
    *,
    settings: GateSettings | None = None,
    int8: bool = False,
    calibrate: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    calib_count: int = 64,
    **options: Any,
) -> GateReport:
    """Export `model` in `format` to `path` if it passes the gate (see `GateSettings`), else raise `ExportRejected`
    with the report and leave `path` as it was. `int8` (executorch) quantises, calibrated on `calibrate`'s images,
    and checks on the ones held out from them. `options` go to the format's writer (ONNX: `export_onnx`'s; ExecuTorch:
    `max_size`, `dynamic`)."""
    if format not in WRITERS:
        raise ValueError(f"format {format!r} is not one of {', '.join(WRITERS)} (INT8 ONNX: int8.export_int8)")
    settings = settings or GateSettings()
    start = time.perf_counter()
    model = model.eval()
    path = Path(path)
    calibration, held_out = _images(settings, int8, calibrate, calib_count, model.config.in_channels)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="segformer-export-") as tmp:
        candidate = WRITERS[format](model, Path(tmp) / f"model{path.suffix or '.bin'}", settings, calibration, options)
        checks = check_set(
            held_out,
            settings.eval_dataset,
            settings.eval_options,
            settings.eval_max_samples,
            size=min(settings.size),
            stats=None if _rgb(model) else channel_stats(model.config),
        )
        run_options = runtime_options(candidate.forward, checks.options)
        result = compare(
            Segmenter(model, run_options),
            Segmenter(candidate.forward, run_options),
            checks.samples,
            model.config.num_classes,
            ignore_index=int(getattr(settings.eval_dataset, "ignore_index", 255)),
            class_names=model.config.class_names,
        )
        report = GateReport(
            format=_name(format, int8),
            path=None,
            size_mb=candidate.path.stat().st_size / 1e6,
            check_images=result.images,
            check_source=checks.source,
            agreement=result.agreement,
            iou_vs_float=result.iou_vs_float,
            min_agreement=settings.min_agreement,
            forced=settings.force,
            float_miou=result.float_miou,
            candidate_miou=result.candidate_miou,
            kept=candidate.kept,
            notes=candidate.notes,
            seconds=time.perf_counter() - start,
        )
        gate(
            report.agreement, settings.min_agreement, force=settings.force, path=path, report=report, what=report.format
        )
        atomic_write(path, lambda out: shutil.copyfile(candidate.path, out))
    report.path = path
    return report


def _rgb(model: SegFormer) -> bool:
    """Whether the model takes 8-bit RGB (3 channels, ImageNet's statistics): what the synthetic scenes are."""
    return model.config.in_channels == 3 and model.config.mean is None and model.config.std is None


def _name(format: str, int8: bool) -> str:
    return {"onnx": "ONNX fp32", "executorch": "ExecuTorch int8" if int8 else "ExecuTorch fp32"}.get(
        format, "TensorRT fp16"
    )


def _images(
    settings: GateSettings, int8: bool, calibrate: Any, calib_count: int, channels: int
) -> tuple[list[np.ndarray] | None, list[np.ndarray] | None]:
    """(calibration images, held-out images to check on): with `int8`, split from `calibrate` (nothing held out
    when an eval dataset checks); otherwise the first `check_count` of `check_images` (or `calibrate`)."""
    if int8:
        if calibrate is None:
            raise ValueError("--int8 needs --calibrate IMAGES: a folder of images like those the model will see")
        return split_images(
            calibrate, calib_count, settings.check_count, settings.size, 0, settings.eval_dataset is None, channels
        )
    source = settings.check_images if settings.check_images is not None else calibrate
    if source is None or settings.eval_dataset is not None:
        return None, None
    unreadable: list[str] = []
    files = image_files(source, "check images")[: settings.check_count]
    images = load_images(files, settings.size, unreadable, channels)
    if not images:
        raise ValueError(f"check images: none could be read (first: {unreadable[0]})")
    return None, images


# ---------------------------------------------------------------------------------------------------------------
# Writers: (model, temporary path, settings, calibration images, options) -> Candidate
# ---------------------------------------------------------------------------------------------------------------
def _write_onnx(model: SegFormer, path: Path, settings: GateSettings, calibration: Any, options: dict) -> Candidate:
    from .onnx import export_onnx

    sample = options.pop("sample_size", (max(model.encoder.min_size, min(settings.size)),) * 2)
    report = export_onnx(model, path, sample_size=sample, **options)
    notes = [line.strip() for line in report.summary().splitlines()[1:]]
    return Candidate(path, OnnxForward(path), dict(FP32_KEPT), notes)


def _write_executorch(
    model: SegFormer, path: Path, settings: GateSettings, calibration: Any, options: dict
) -> Candidate:
    from .pte import WHY_FP32, WHY_FP32_OTHER, export_pte

    inputs = None
    if calibration is not None:  # each image normalised as the spine prepares it, at its own size
        prepare = Segmenter(model, InferenceOptions()).prepare
        inputs = [prepare([image]).x.cpu() for image in calibration]  # type: ignore[union-attr]
    size = options.pop("sample_size", (max(model.encoder.min_size, min(settings.size)),) * 2)
    plan = export_pte(model, path, sample_size=size, calibration=inputs, **options)
    forward = PteForward(path)
    if plan is None:
        return Candidate(path, forward, dict(FP32_KEPT), [])
    kept = {op: f"{n} nodes: {WHY_FP32.get(op, WHY_FP32_OTHER)}" for op, n in sorted(plan.kept_float.items())}
    quantized = ", ".join(f"{op} ({n})" for op, n in sorted(plan.quantized.items()))
    return Candidate(path, forward, kept, [f"int8: {quantized}; calibrated on {len(calibration)} images"])


def _write_tensorrt(model: SegFormer, path: Path, settings: GateSettings, calibration: Any, options: dict) -> Candidate:
    from .onnx import export_onnx
    from .tensorrt import KEEP_FP32, TensorRTForward, build_engine, require_tensorrt

    require_tensorrt()
    onnx_path = path.with_suffix(".onnx")
    export_onnx(model.cpu(), onnx_path, sample_size=(512, 512), check=False)
    kept_counts = build_engine(onnx_path, path, model.config, **options)
    kept = {kind: f"{n} layers: {KEEP_FP32[kind]}" for kind, n in kept_counts.items()}
    return Candidate(path, TensorRTForward(path), kept, ["built by TensorRT; untested in CI (no GPU there)"])


WRITERS: dict[str, Callable[..., Candidate]] = {
    "onnx": _write_onnx,
    "executorch": _write_executorch,
    "tensorrt": _write_tensorrt,
}
