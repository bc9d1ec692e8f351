"""INT8 ONNX export behind the accuracy gate: ONNX Runtime static quantisation (QDQ) calibrated on the user's images,
compared with the float PyTorch model on held-out images (or a labelled dataset, which also gives the mIoU change), and
written only when its labels agree with the float model's well enough.

`export_int8` reads as its steps: split the images (calibration / held out), export the float ONNX graph, quantise
it, compare the INT8 graph with the float PyTorch model through the inference spine (`Segmenter(OnnxForward(path),
options)` against `Segmenter(model, options)`, as every export is checked), gate, write. The graph rewrites are in
`graph.py`, the comparison and the gate in `gate.py`.

What stays in float is a list of named groups (`graph.FLOAT_GROUPS`); `DEFAULT_KEEP_FLOAT` is what the measurements
in BENCHMARKS.md ("INT8 ONNX") chose: the convolutions and every MatMul run in INT8, except the first conv and the
classifier; everything whose accuracy or speed does not gain from 8 bits stays in float.

onnx and onnxruntime are the optional `onnx` extra; they are imported inside functions.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import IGNORE_INDEX
from ..data.base import SampleSource, as_dataset
from ..fileio import atomic_write
from ..inference import InferenceOptions, Segmenter
from ..model.segformer import SegFormer
from .gate import (
    Comparison,
    ExportRejected,
    compare,
    dataset_samples,
    fit_size,
    gate,
    image_files,
    split_images,
)
from .graph import (
    FLOAT_GROUPS,
    MS_DOMAIN,
    count_quantized,
    fuse_bias,
    fuse_gelu,
    node_groups,
    quantization_plan,
    shapes_from_quantized,
    unfuse_gemm,
)
from .onnx import export_onnx
from .runtimes import OnnxForward

log = logging.getLogger("segformer")

DEFAULT_KEEP_FLOAT = ("layernorm", "softmax", "gelu", "elementwise", "first_conv", "classifier")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Why each group may stay in float (the "INT8 ONNX" ablation in BENCHMARKS.md, B0 at 512x512 on a 2-core EPYC).
WHY_FLOAT = {
    "layernorm": "per-token statistics; INT8 LayerNorm gained no speed (0.86x of float against 0.84x kept float)",
    "softmax": "INT8 Softmax made the model slower (1.25x of float at 512x512)",
    "gelu": "fused into one float Gelu node, which reads the INT8 product once",
    "elementwise": "INT8 Add/Mul add re-quantisations and were slower (0.91x of float against 0.84x)",
    "attention": "products of two activations; their ranges change with every image",
    "upsampling": "bilinear resizes of the decoder; nothing to gain from 8 bits",
    "first_conv": "it reads the raw pixels; INT8 there gained nothing measurable",
    "classifier": "its output is the logits the argmax reads; INT8 there gained nothing measurable",
}
__all__ = [  # the graph rewrites are re-exported: they were public here before graph.py existed
    "CALIBRATION_METHODS",
    "WHY_FLOAT",
    "DEFAULT_KEEP_FLOAT",
    "FLOAT_GROUPS",
    "MS_DOMAIN",
    "Int8Report",
    "QuantizationRejected",
    "QuantizeOptions",
    "calibration_files",
    "export_int8",
    "fit_size",
    "fuse_bias",
    "fuse_gelu",
    "has_vnni",
    "node_groups",
    "quantization_plan",
    "quantize_onnx",
    "require_quantization",
    "shapes_from_quantized",
    "unfuse_gemm",
]


class QuantizationRejected(ExportRejected):
    """The INT8 model agreed with the float model less than required; `report` holds the measurements."""


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantise: which groups stay float, per-channel weights, calibration method, 7-bit weights.

    `reduce_range=None` decides from the CPU: 7-bit weights only on x86 without VNNI, where U8S8 products can
    saturate (ONNX Runtime's guidance); with VNNI, on ARM, and elsewhere full 8 bits.
    """

    keep_float: tuple[str, ...] = DEFAULT_KEEP_FLOAT
    per_channel: bool = True
    calibrate_method: str = "minmax"
    reduce_range: bool | None = None
    requantize_outputs: bool = False  # MatMul outputs back to 8 bits (QLinearMatMul) instead of float

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_float", tuple(self.keep_float))
        unknown = sorted(set(self.keep_float) - set(FLOAT_GROUPS))
        if unknown:
            raise ValueError(f"unknown float groups {unknown}; choose from {', '.join(FLOAT_GROUPS)}")
        if self.calibrate_method not in CALIBRATION_METHODS:
            raise ValueError(f"calibration {self.calibrate_method!r} is not one of {', '.join(CALIBRATION_METHODS)}")


@dataclass
class Int8Report:
    """What `export_int8` measured and wrote (`path` is None when the gate refused to write)."""

    path: Path | None
    size_mb: float
    float_size_mb: float
    calibration_images: int
    check_images: int
    check_source: str
    agreement: float
    iou_vs_float: float
    min_agreement: float
    forced: bool = False
    float_miou: float | None = None
    int8_miou: float | None = None
    quantized_nodes: int = 0
    kept_float: dict[str, int] = field(default_factory=dict)
    reduce_range: bool = False
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.agreement >= self.min_agreement

    def summary(self) -> str:
        kept = ", ".join(f"{name} ({n})" for name, n in self.kept_float.items() if n) or "nothing"
        lines = [
            f"INT8: {self.quantized_nodes} nodes quantised, kept in float: {kept}"
            + (" (7-bit weights: no VNNI)" if self.reduce_range else ""),
            *(f"  {name}: {WHY_FLOAT[name]}" for name, n in self.kept_float.items() if n),
            f"  calibrated on {self.calibration_images} images; checked on {self.check_images} {self.check_source}",
            f"  pixel agreement with float (PyTorch): {100 * self.agreement:.2f}% "
            f"(min {100 * self.min_agreement:.2f}%), mean IoU of INT8 vs float labels {100 * self.iou_vs_float:.2f}%",
        ]
        if self.float_miou is not None and self.int8_miou is not None:
            delta = 100 * (self.int8_miou - self.float_miou)
            lines.append(
                f"  mIoU: float {100 * self.float_miou:.2f}, INT8 {100 * self.int8_miou:.2f} ({delta:+.2f} pp)"
            )
        if self.path is not None:
            lines.append(f"wrote {self.path} ({self.size_mb:.1f} MB; float {self.float_size_mb:.1f} MB)")
        return "\n".join(lines)


def require_quantization() -> None:
    """Raise a one-line RuntimeError when onnx or onnxruntime's quantisation tools are missing."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxruntime.quantization"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name.split(".")[0])
    if missing:
        names = " and ".join(dict.fromkeys(missing))
        raise RuntimeError(f"--int8 needs {names}: pip install 'segformer[onnx]' (or onnx onnxruntime)")


def has_vnni() -> bool | None:
    """Whether this CPU has 8-bit dot-product instructions (AVX512-VNNI / AVX-VNNI on x86); None if unknown."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return None
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


class _Reader:
    """An onnxruntime CalibrationDataReader over a list of ready model inputs (one image each), in chunks."""

    def __init__(self, input_name: str, inputs: Sequence[np.ndarray]) -> None:
        self.input_name = input_name
        self.inputs = inputs
        self.position = 0
        self.limit = len(inputs)

    def __len__(self) -> int:
        return len(self.inputs)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.position, self.limit = start_index, end_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= self.limit:
            return None
        self.position += 1
        return {self.input_name: self.inputs[self.position - 1]}


def quantize_onnx(
    float_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration: Sequence[np.ndarray],
    options: QuantizeOptions | None = None,
) -> dict[str, Any]:
    """Quantise the float ONNX file at `float_path` into `out_path` (QDQ, U8 activations, S8 weights), calibrated
    on `calibration` (model inputs, batch 1 each). Returns {"quantized": nodes on INT8 data, "kept_float": {group:
    nodes}, "reduce_range": bool}. No accuracy check: `export_int8` is the checked path."""
    require_quantization()
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    options = options or QuantizeOptions()
    if not calibration:
        raise ValueError("no calibration inputs")
    reduce_range = options.reduce_range if options.reduce_range is not None else has_vnni() is False
    with tempfile.TemporaryDirectory(prefix="segformer-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ORT's basic optimisations and ONNX shape inference; symbolic inference adds nothing to this graph.
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        proto = onnx.load(str(prepared))
        rewritten = unfuse_gemm(proto)
        if "gelu" in options.keep_float:
            rewritten += fuse_gelu(proto)
        if rewritten:
            onnx.save(proto, str(prepared))
        op_types, exclude, kept = quantization_plan(proto, options.keep_float)
        extra: dict[str, Any] = {
            "MatMulConstBOnly": {"attention", "upsampling"} <= set(options.keep_float),
            # Chunks of a few images: the histogram methods hold every activation of a chunk in memory.
            "CalibStridedMinMax": max(d for d in range(1, 9) if len(calibration) % d == 0),
        }
        if not options.requantize_outputs:
            extra["OpTypesToExcludeOutputQuantization"] = ["MatMul"]
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[options.calibrate_method]
        with _quiet_ort_logging():
            quantize_static(
                str(prepared),
                str(out_path),
                _Reader(proto.graph.input[0].name, calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                nodes_to_exclude=exclude,
                per_channel=options.per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                extra_options=extra,
            )
    out = onnx.load(str(out_path))
    rewritten = shapes_from_quantized(out)
    if not options.requantize_outputs:
        rewritten += fuse_bias(out)
    if rewritten:
        onnx.save(out, str(out_path))
    quantized = count_quantized(out, op_types, set(exclude))
    return {"quantized": quantized, "kept_float": kept, "reduce_range": reduce_range}


class _quiet_ort_logging:
    """onnxruntime.quantization logs a warning per LayerNorm weight through the root logger; silence it here."""

    def __enter__(self) -> None:
        self.level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().setLevel(self.level)


# ---------------------------------------------------------------------------------------------------------------
# The checked export, step by step
# ---------------------------------------------------------------------------------------------------------------
def calibration_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Image files (sorted) of a folder (searched recursively), an image file, or a list of them."""
    return image_files(source, "calibration images")


def export_int8(
    model: SegFormer,
    path: str | os.PathLike,
    calibrate: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    calib_count: int = 64,
    check_count: int = 32,
    min_agreement: float = 0.99,
    force: bool = False,
    eval_dataset: SampleSource | None = None,
    eval_options: InferenceOptions | None = None,
    eval_max_samples: int | None = None,
    options: QuantizeOptions | None = None,
    size: tuple[int, int] = (512, 512),
    seed: int = 0,
    **export_kwargs: Any,
) -> Int8Report:
    """Export `model` to ONNX, quantise it to INT8 calibrated on the images of `calibrate`, compare it with the float
    PyTorch model, and write `path` only if the labels agree on at least `min_agreement` of the pixels (or `force`).

    Images are shuffled (`seed`); `calib_count` calibrate and up to `check_count` others are held out for the
    comparison (each at its own size), or, with `eval_dataset` (anything with `len` and `load(i)` -> (image, mask,
    name)), the comparison runs there (its first `eval_max_samples`) with `eval_options` (default: each image at its
    own size) and also gives the float and INT8 mIoU. Images larger than `size` are shrunk to fit it (also the ONNX
    tracing size). `export_kwargs` go to `export_onnx` (with_preprocess, with_postprocess, label_dtype, opset,
    exporter).

    Raises `QuantizationRejected` (with the report) when the gate refuses; nothing is written then, and a file
    already at `path` is left as it was. Otherwise the file appears at once, complete (temporary name, rename).
    """
    require_quantization()
    start = time.perf_counter()
    _check_arguments(calib_count, check_count, min_agreement)
    path = Path(path)
    hold_out, channels = eval_dataset is None, model.config.in_channels
    calib_images, check_images = split_images(calibrate, calib_count, check_count, size, seed, hold_out, channels)
    options = options or QuantizeOptions()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="segformer-int8-") as tmp:
        float_path, int8_path = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        export_float(model, float_path, size, export_kwargs)
        info = quantize(float_path, int8_path, calib_images, options)
        result, source = compare_exports(model, int8_path, check_images, eval_dataset, eval_options, eval_max_samples)
        report = Int8Report(
            path=None,
            size_mb=int8_path.stat().st_size / 1e6,
            float_size_mb=float_path.stat().st_size / 1e6,
            calibration_images=len(calib_images),
            check_images=result.images,
            check_source=source,
            agreement=result.agreement,
            iou_vs_float=result.iou_vs_float,
            min_agreement=min_agreement,
            forced=force,
            float_miou=result.float_miou,
            int8_miou=result.candidate_miou,
            quantized_nodes=info["quantized"],
            kept_float=info["kept_float"],
            reduce_range=info["reduce_range"],
            seconds=time.perf_counter() - start,
        )
        gate(
            report.agreement,
            min_agreement,
            force=force,
            path=path,
            report=report,
            what="INT8",
            hint="more or more typical --calibrate images, a lower --min-agreement, or --force to write it anyway",
            rejected=QuantizationRejected,
        )
        write_int8(int8_path, path, options, report)
    return report


def _check_arguments(calib_count: int, check_count: int, min_agreement: float) -> None:
    if calib_count < 1 or check_count < 1:
        raise ValueError(f"calib_count {calib_count} and check_count {check_count} must be >= 1")
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement {min_agreement} must be between 0 and 1")


def export_float(model: SegFormer, path: Path, size: tuple[int, int], export_kwargs: dict[str, Any]) -> None:
    """The float ONNX graph INT8 starts from, traced at a square sample of the smaller side of `size`."""
    sample = (max(model.encoder.min_size, min(size)),) * 2
    export_onnx(model, path, sample_size=sample, **export_kwargs)


def quantize(
    float_path: Path, int8_path: Path, images: Sequence[np.ndarray], options: QuantizeOptions
) -> dict[str, Any]:
    """`quantize_onnx` calibrated on `images`, each fed as the float graph reads it (batch 1): prepared by the
    spine at its own size, then as `OnnxForward` feeds the graph (pixels for a graph that normalises inside)."""
    forward = OnnxForward(float_path)
    segmenter = Segmenter(forward, InferenceOptions())
    feeds = [forward.feed(segmenter.prepare([image]).x) for image in images]  # type: ignore[arg-type]
    log.info("calibrating INT8 on %d images", len(feeds))
    return quantize_onnx(float_path, int8_path, feeds, options)


def compare_exports(
    model: SegFormer,
    int8_path: Path,
    held_out: Sequence[np.ndarray],
    eval_dataset: SampleSource | None,
    eval_options: InferenceOptions | None,
    eval_max_samples: int | None,
) -> tuple[Comparison, str]:
    """The INT8 graph as `Segmenter(OnnxForward(path), options)` against the float PyTorch model, as every export is
    checked (`gate.py`), on the held-out images (each at its own size) or on the eval dataset with `eval_options`;
    returns the comparison and what it ran on."""
    candidate = OnnxForward(int8_path)
    config = model.config
    if eval_dataset is None:
        samples: Any = [(image, None) for image in held_out]
        options, source = InferenceOptions(), "held-out calibration images"
    else:
        samples = dataset_samples(eval_dataset, eval_max_samples)
        options, source = eval_options or InferenceOptions(), "images of the eval dataset"
    if candidate.labels_output and (options.mode != "whole" or options.passes > 1):
        log.info("INT8 check: the graph outputs labels, so whole-image inference in one pass (no slide or TTA)")
        options = options.replace(mode="whole", scales=None, flip=False)
    result = compare(
        Segmenter(model, options),
        Segmenter(candidate, options),
        samples,
        config.num_classes,
        ignore_index=as_dataset(eval_dataset).ignore_index if eval_dataset is not None else IGNORE_INDEX,
        class_names=config.class_names,
    )
    return result, source


def write_int8(int8_path: Path, path: Path, options: QuantizeOptions, report: Int8Report) -> None:
    """The INT8 graph at `path` (atomically) with what was checked in its metadata ("segformer_int8")."""
    import onnx

    proto = onnx.load(str(int8_path))
    entry = proto.metadata_props.add()
    entry.key = "segformer_int8"
    entry.value = json.dumps(
        {
            "keep_float": list(options.keep_float),
            "per_channel": options.per_channel,
            "calibration": options.calibrate_method,
            "calibration_images": report.calibration_images,
            "agreement": round(report.agreement, 6),
            "checked_on": f"{report.check_images} {report.check_source}",
            "float_miou": report.float_miou,
            "int8_miou": report.int8_miou,
        }
    )
    atomic_write(path, lambda tmp: onnx.save(proto, tmp))
    report.path = path
    report.size_mb = path.stat().st_size / 1e6
