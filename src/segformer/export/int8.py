"""INT8 ONNX export with an accuracy gate: ONNX Runtime static quantisation (QDQ) calibrated on the user's images,
measured against the float export on held-out images (and a labelled dataset when given), written only when it
agrees with the float model well enough.

What stays in float is a list of named groups (`FLOAT_GROUPS`); `DEFAULT_KEEP_FLOAT` is what the measurements in
BENCHMARKS.md ("INT8 ONNX") chose: the convolutions and every MatMul run in INT8, except the first conv and the
classifier; everything whose accuracy or speed does not gain from 8 bits stays in float. The float export's Gemms
are first written as MatMul + Add (`unfuse_gemm`), the form this recipe quantises. Three rewrites make the INT8
graph faster in ONNX Runtime: GELU is fused into one node before quantisation, Shape nodes read the INT8 tensors,
and bias additions join their INT8 products (`fuse_gelu`, `shapes_from_quantized`, `fuse_bias`).

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
import torch
import torch.nn.functional as F
from PIL import Image

from ..constants import IGNORE_INDEX, MEAN, STD
from ..data.base import SampleSource, as_dataset
from ..evaluation.metrics import ConfusionMatrix
from ..fileio import atomic_write
from ..imageio import IMAGE_SUFFIXES, ImageReadError, read_image
from ..inference import InferenceOptions, normalize_batch, resized_size
from ..model.config import SegFormerConfig
from ..model.segformer import SegFormer
from .onnx import export_onnx, ort_session

log = logging.getLogger("segformer")

# Groups of nodes that can be kept in float, found by structure (op types, initializers), not by node names.
FLOAT_GROUPS = {
    "layernorm": "LayerNormalization nodes",
    "softmax": "attention Softmax",
    "gelu": "the GELU of the Mix-FFN (fused into one Gelu node; Div, Erf, Add, Mul, Mul before that)",
    "elementwise": "residual and bias Add, Mul (the attention scale), and the other element-wise ops",
    "attention": "MatMuls of two activations: attention QK^T and AV",
    "upsampling": "the decoder's bilinear upsampling of levels 2-4 (Resize; in older exports, MatMuls with "
    "interpolation matrices built from the input size)",
    "first_conv": "the first convolution (stage 1 patch embedding, on the raw pixels)",
    "classifier": "the classifier: the last product with weights, whose output is the logits",
}
DEFAULT_KEEP_FLOAT = ("layernorm", "softmax", "gelu", "elementwise", "first_conv", "classifier")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib operators (the INT8 file is for ONNX Runtime)


class QuantizationRejected(RuntimeError):
    """The INT8 model agreed with the float model less than required; `report` holds the measurements."""

    def __init__(self, message: str, report: Int8Report) -> None:
        super().__init__(message)
        self.report = report


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
            f"  calibrated on {self.calibration_images} images; checked on {self.check_images} {self.check_source}",
            f"  pixel agreement with float: {100 * self.agreement:.2f}% (min {100 * self.min_agreement:.2f}%),"
            f" mean IoU of INT8 vs float labels {100 * self.iou_vs_float:.2f}%",
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


# ---------------------------------------------------------------------------------------------------------------
# Choosing what to quantise
# ---------------------------------------------------------------------------------------------------------------
def node_groups(proto: Any) -> dict[str, list[str]]:
    """Names of the graph's nodes in each of `FLOAT_GROUPS`, plus "weights": Conv and MatMul nodes with a constant
    weight (what INT8 is for). Found by structure (op types, constants, what depends on the pixels), not by names,
    so it works on any SegFormer graph (and after optimisation)."""
    graph = proto.graph
    consts = _constant_tensors(graph)
    groups: dict[str, list[str]] = {name: [] for name in (*FLOAT_GROUPS, "weights")}
    producers = {o: n for n in graph.node for o in n.output}

    erf_outputs = {n.output[0] for n in graph.node if n.op_type == "Erf"}
    gelu: set[str] = set()
    for n in graph.node:  # x * 0.5 * (1 + erf(x / sqrt 2)): the Div before Erf, the Add after, the two Muls
        if n.op_type == "Erf":
            gelu.add(n.name)
            source = producers.get(n.input[0])
            if source is not None and source.op_type == "Div":
                gelu.add(source.name)
    frontier = set(erf_outputs)
    for _ in range(3):
        reached = {o for n in graph.node if n.op_type in ("Add", "Mul") and set(n.input) & frontier for o in n.output}
        gelu |= {n.name for n in graph.node if n.op_type in ("Add", "Mul") and set(n.input) & frontier}
        frontier = reached

    # Tensors that depend on the pixel values (a Shape output does not: it only knows the size).
    data = {i.name for i in graph.input}
    for n in graph.node:
        if n.op_type != "Shape" and any(i in data for i in n.input):
            data.update(n.output)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    products = [n for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and _weight_product(n, consts, data)]
    classifier = products[-1] if products else None  # the last product with weights makes the logits
    decoder = True  # before the classifier: a later Resize upsamples the logits (a label-map graph's postprocessing)
    for n in graph.node:
        decoder = decoder and n is not classifier
        if n.op_type == "LayerNormalization":
            groups["layernorm"].append(n.name)
        elif n.op_type == "Softmax":
            groups["softmax"].append(n.name)
        elif n.name in gelu or n.op_type == "Gelu":
            groups["gelu"].append(n.name)
        elif n.op_type in ("Add", "Mul", "Sub", "Div"):
            groups["elementwise"].append(n.name)
        elif n is classifier:
            groups["classifier"].append(n.name)
        elif n.op_type in ("MatMul", "Gemm"):
            if not any(i in data for i in n.input[:2]):
                continue  # a product of constants (folded by ONNX Runtime): nothing to quantise
            if _weight_product(n, consts, data):
                groups["weights"].append(n.name)
            else:
                groups["attention" if all(i in data for i in n.input[:2]) else "upsampling"].append(n.name)
        elif n.op_type == "Conv":
            groups["first_conv" if n is convs[0] else "weights"].append(n.name)
        elif n.op_type == "Resize" and decoder:
            groups["upsampling"].append(n.name)
    return groups


def _constant_tensors(graph: Any) -> set[str]:
    """Initializers, Constant outputs, and the outputs of nodes that read only those (weights the exporter left as
    a Slice, Flatten or scaling of a parameter, which ONNX Runtime folds when it loads the graph)."""
    consts = {t.name for t in graph.initializer}
    for n in graph.node:  # nodes are in topological order
        if all(i in consts for i in n.input if i):
            consts.update(n.output)
    return consts


def _weight_product(node: Any, consts: set[str], data: set[str]) -> bool:
    """A Conv, MatMul or Gemm of the pixel-dependent data with a constant (weight) operand."""
    a, b = node.input[0], node.input[1]
    return (a in data and b in consts) or (node.op_type == "MatMul" and a in consts and b in data)


def quantization_plan(proto: Any, keep_float: Sequence[str]) -> tuple[list[str] | None, list[str], dict[str, int]]:
    """(op types to quantise, node names to exclude, nodes kept float per group) for `quantize_static`.

    Nodes of the kept groups are excluded by name; the op types are those of the weight nodes and the other groups.
    With nothing kept, op types are None: ONNX Runtime's whole registry (Transpose, Reshape, Resize... too)."""
    groups = node_groups(proto)
    kept = {name: len(groups[name]) for name in FLOAT_GROUPS if name in keep_float}
    if not keep_float:
        return None, [], kept
    types = {n.name: n.op_type for n in proto.graph.node}
    quantized = [name for group, names in groups.items() if group not in keep_float for name in names]
    op_types = sorted({types[name] for name in quantized} | {"Conv", "MatMul"})
    exclude = [name for group in keep_float for name in groups[group]]
    return op_types, exclude, kept


def _constant(proto: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for t in proto.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.output[0] == name and n.attribute and n.attribute[0].name == "value":
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def fuse_gelu(proto: Any) -> int:
    """Replace each exact GELU as torch exports it, x * 0.5 * (1 + erf(x / sqrt 2)), by one com.microsoft Gelu node.

    ONNX Runtime fuses this pattern itself in a float graph, but not once x is dequantised: it gives each consumer
    of a DequantizeLinear its own copy, and x has two (the Div and the Mul), so the pattern breaks and x is
    dequantised twice. Fused before quantisation, x has one consumer. Returns the number of GELUs fused."""
    from onnx import helper

    graph = proto.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def only(tensor: str, op: str) -> Any:
        found = consumers.get(tensor, [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    def close(name: str, value: float) -> bool:
        array = _constant(proto, name)
        return array is not None and array.size == 1 and abs(float(array.reshape(-1)[0]) - value) < 1e-3

    gelus: list[tuple[str, Any]] = []
    remove: set[str] = set()
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        div = producers.get(erf.input[0])
        if div is None or div.op_type != "Div" or not close(div.input[1], 2**0.5):
            continue
        x = div.input[0]
        add = only(erf.output[0], "Add")
        if add is None or not close(next((i for i in add.input if i != erf.output[0]), ""), 1.0):
            continue
        mul = only(add.output[0], "Mul")
        if mul is None or x not in mul.input:
            continue
        half = only(mul.output[0], "Mul")
        if half is None or not close(next((i for i in half.input if i != mul.output[0]), ""), 0.5):
            continue
        if len(consumers.get(div.output[0], [])) != 1:
            continue
        node = helper.make_node("Gelu", [x], [half.output[0]], name=erf.name.replace("Erf", "Gelu"), domain=MS_DOMAIN)
        gelus.append((div.output[0], node))
        remove |= {div.output[0], erf.output[0], add.output[0], mul.output[0], half.output[0]}
    if gelus:
        first = dict(gelus)
        nodes = []
        for n in graph.node:
            if n.output[0] in first:
                nodes.append(first[n.output[0]])  # where the Div was: x exists, the result is not read yet
            if n.output[0] not in remove:
                nodes.append(n)
        used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
        _replace_nodes(graph, [n for n in nodes if n.op_type != "Constant" or n.output[0] in used])
        unused = [t for t in graph.initializer if t.name not in used]  # the GELUs' constants
        for t in unused:
            graph.initializer.remove(t)
        if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(gelus)


def shapes_from_quantized(proto: Any) -> int:
    """Shape nodes that read a (De)QuantizeLinear output read its input instead (same shape): otherwise ONNX Runtime
    dequantises a whole tensor only to take its shape. Q/DQ nodes left without consumers are removed."""
    graph = proto.graph
    producers = {o: n for n in graph.node for o in n.output}
    moved = 0
    for n in graph.node:
        source = producers.get(n.input[0]) if n.op_type == "Shape" else None
        if source is not None and source.op_type in ("QuantizeLinear", "DequantizeLinear"):
            n.input[0] = source.input[0]
            moved += 1
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    _replace_nodes(graph, [n for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                           or n.output[0] in used])  # fmt: skip
    return moved


def fuse_bias(proto: Any) -> int:
    """DequantizeLinear x2 -> MatMul -> Add(bias) becomes one com.microsoft MatMulIntegerToFloat with the bias input:
    ONNX Runtime makes the same INT8 product out of the first three but adds the bias in a separate pass over the
    output. Only for constant weights whose scale is per tensor or per output column. Returns the number fused."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    weights = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    fused: dict[str, Any] = {}
    absorbed: set[str] = set()
    for n in graph.node:
        if n.op_type != "MatMul" or n.output[0] in outputs:
            continue
        a, b = (producers.get(i) for i in n.input)
        if a is None or b is None or a.op_type != "DequantizeLinear" or b.op_type != "DequantizeLinear":
            continue
        users = consumers.get(n.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add" or b.input[0] not in weights:
            continue
        add = users[0]
        bias = next((i for i in add.input if i != n.output[0]), "")
        w_shape = tuple(weights[b.input[0]].dims)
        scale = weights.get(b.input[1])
        if bias not in weights or len(w_shape) != 2 or tuple(weights[bias].dims) != (w_shape[1],) or scale is None:
            continue
        axis = next((att.i for att in b.attribute if att.name == "axis"), 1)
        if numpy_helper.to_array(scale).size > 1 and axis not in (1, -1):
            continue  # per-row scales: not what MatMulIntegerToFloat takes
        inputs = [a.input[0], b.input[0], a.input[1], b.input[1]]
        inputs += [a.input[2] if len(a.input) > 2 else "", b.input[2] if len(b.input) > 2 else "", bias]
        fused[n.output[0]] = helper.make_node(
            "MatMulIntegerToFloat", inputs, [add.output[0]], name=n.name, domain=MS_DOMAIN
        )
        absorbed.add(add.output[0])
    if fused:
        nodes = [fused.get(n.output[0], n) for n in graph.node if n.output[0] not in absorbed]
        used = {i for n in nodes for i in n.input} | outputs
        _replace_nodes(graph, [n for n in nodes if n.op_type != "DequantizeLinear" or n.output[0] in used])
        if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(fused)


def unfuse_gemm(proto: Any) -> int:
    """Each Gemm with a constant weight becomes MatMul (+ Add of its C input): the form the INT8 recipe quantises
    (the weight per output column, the bias joined back by `fuse_bias`). The float export writes Gemms because
    ONNX Runtime runs them fastest in float. Returns the number of Gemms rewritten."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    weights = {t.name: t for t in graph.initializer}
    nodes, count = [], 0
    for n in graph.node:
        att = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        plain = att.get("alpha", 1.0) == 1.0 and att.get("beta", 1.0) == 1.0 and not att.get("transA", 0)
        if n.op_type != "Gemm" or not plain or n.input[1] not in weights:
            nodes.append(n)
            continue
        weight = n.input[1]
        if att.get("transB", 0):
            array = numpy_helper.to_array(weights[weight]).T
            weight = f"{n.input[1]}_t"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), weight))
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
        product = n.output[0] if bias is None else f"{n.output[0]}_matmul"
        nodes.append(helper.make_node("MatMul", [n.input[0], weight], [product], name=n.name))
        if bias is not None:
            nodes.append(helper.make_node("Add", [product, bias], [n.output[0]], name=f"{n.name}_bias"))
        count += 1
    if count:
        _replace_nodes(graph, nodes)
        used = {i for n in graph.node for i in n.input}
        for t in [t for t in graph.initializer if t.name not in used]:  # transposed away
            graph.initializer.remove(t)
    return count


def _replace_nodes(graph: Any, nodes: list[Any]) -> None:
    """The graph's node list becomes `nodes` (copied first: they may be the list's own elements)."""
    copies = []
    for n in nodes:
        copy = type(n)()
        copy.CopyFrom(n)
        copies.append(copy)
    del graph.node[:]
    graph.node.extend(copies)


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
    quantized = _count_quantized(out, op_types, set(exclude))
    return {"quantized": quantized, "kept_float": kept, "reduce_range": reduce_range}


class _quiet_ort_logging:
    """onnxruntime.quantization logs a warning per LayerNorm weight through the root logger; silence it here."""

    def __enter__(self) -> None:
        self.level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().setLevel(self.level)


def _count_quantized(proto: Any, op_types: Sequence[str] | None, exclude: set[str]) -> int:
    """Nodes of the quantised op types that read a DequantizeLinear output (those ONNX Runtime runs on INT8)."""
    dq = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    skip = {"QuantizeLinear", "DequantizeLinear"}
    return sum(
        1
        for n in proto.graph.node
        if n.op_type == "MatMulIntegerToFloat"  # fused by fuse_bias: reads the INT8 tensors directly
        or (
            n.op_type not in skip
            and (op_types is None or n.op_type in op_types)
            and n.name not in exclude
            and set(n.input) & dq
        )
    )


# ---------------------------------------------------------------------------------------------------------------
# Running an export on images, and comparing two exports
# ---------------------------------------------------------------------------------------------------------------
class OnnxSegmenter:
    """Label maps from an exported ONNX file, whichever input (float or uint8) and output (logits or labels) it has.

    `segmenter(image, net_size)` runs the graph on the image resized to `net_size` (default: its own size) and
    returns class ids (H, W) at the image's size: logits are resized bilinearly and argmaxed, labels nearest.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.session = ort_session(path, threads)
        self.input = self.session.get_inputs()[0]
        self.uint8_input = self.input.type == "tensor(uint8)"
        self.labels_output = self.session.get_outputs()[0].type != "tensor(float)"

    def feed(self, image: np.ndarray, net_size: tuple[int, int] | None = None) -> np.ndarray:
        """The graph input (batch 1) for an RGB uint8 (H, W, 3) image resized to `net_size`."""
        x = normalize_batch(torch.from_numpy(np.array(image, np.uint8))[None])  # (1, 3, H, W)
        if net_size is not None and tuple(net_size) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=tuple(net_size), mode="bilinear", align_corners=False)
        if not self.uint8_input:
            return x.numpy()
        mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
        pixels = (x * std + mean).round().clamp(0, 255).to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).contiguous().numpy()  # (1, h, w, 3)

    def __call__(self, image: np.ndarray, net_size: tuple[int, int] | None = None) -> np.ndarray:
        out = torch.from_numpy(self.session.run(None, {self.input.name: self.feed(image, net_size)})[0])
        size = image.shape[:2]
        if self.labels_output:
            out = out[:, None].float()
            if tuple(out.shape[-2:]) != tuple(size):
                out = F.interpolate(out, size=size, mode="nearest")
            return out[0, 0].long().numpy()
        out = F.interpolate(out.float(), size=size, mode="bilinear", align_corners=False)
        return out[0].argmax(0).numpy()


@dataclass
class Comparison:
    """Float vs INT8 on a set of images: pixel agreement, IoU of INT8 against float labels, and mIoU of each against
    ground truth when there is one."""

    images: int
    agreement: float
    iou_vs_float: float
    float_miou: float | None = None
    int8_miou: float | None = None


def compare(
    reference: OnnxSegmenter,
    candidate: OnnxSegmenter,
    samples: Sequence[tuple[np.ndarray, np.ndarray | None]] | Any,
    num_classes: int,
    *,
    net_size: Any = None,
    ignore_index: int = IGNORE_INDEX,
    class_names: Sequence[str] | None = None,
) -> Comparison:
    """Run both on every (image, mask-or-None) of `samples`. `net_size(h, w)` gives the network input size for an
    image (None: its own size)."""
    from ..evaluation.evaluate import check_labels

    vs_float = ConfusionMatrix(num_classes)
    truth = [ConfusionMatrix(num_classes, ignore_index=ignore_index, class_names=class_names) for _ in range(2)]
    equal = total = images = 0
    labelled = True
    for image, mask in samples:
        size = net_size(*image.shape[:2]) if net_size is not None else None
        a, b = reference(image, size), candidate(image, size)
        equal += int((a == b).sum())
        total += a.size
        vs_float.update(b, a)
        images += 1
        if mask is None:
            labelled = False
            continue
        mask = np.asarray(mask)
        check_labels(mask, num_classes, ignore_index, "eval dataset")
        truth[0].update(a, mask.copy())
        truth[1].update(b, mask.copy())
    if not images:
        raise ValueError("no images to compare the INT8 model on")
    result = Comparison(images, equal / total, vs_float.compute()["mIoU"])
    if labelled:
        result.float_miou, result.int8_miou = truth[0].compute()["mIoU"], truth[1].compute()["mIoU"]
    return result


# ---------------------------------------------------------------------------------------------------------------
# The checked export
# ---------------------------------------------------------------------------------------------------------------
def calibration_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Image files (sorted) of a folder (searched recursively), an image file, or a list of them."""
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"calibration images: {path}: no such file or folder")
    if not files:
        where = ", ".join(str(i) for i in items)
        raise ValueError(f"calibration images: no images ({' '.join(IMAGE_SUFFIXES)}) in {where}")
    return files


def fit_size(height: int, width: int, limit: tuple[int, int]) -> tuple[int, int]:
    """(H, W) shrunk, keeping the aspect ratio, so the long side is <= max(limit) and the short side <= min(limit);
    smaller images keep their size."""
    factor = min(1.0, max(limit) / max(height, width), min(limit) / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


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
    export, and write `path` only if the labels agree on at least `min_agreement` of the pixels (or `force`).

    Images are shuffled (`seed`); `calib_count` calibrate and up to `check_count` others are held out for the
    comparison, or, with `eval_dataset` (anything with `len` and `load(i)` -> (image, mask, name)), the comparison
    runs there (its first `eval_max_samples`) and also gives the float and INT8 mIoU, with `eval_options` (whole
    mode: its scale and size divisor).
    Images larger than `size` are shrunk to fit it (also the ONNX tracing size). `export_kwargs` go to
    `export_onnx` (with_preprocess, with_postprocess, label_dtype, opset, exporter).

    Raises `QuantizationRejected` (with the report) when the gate refuses; nothing is written then, and a file
    already at `path` is left as it was. Otherwise the file appears at once, complete (temporary name, rename).
    """
    require_quantization()
    import onnx

    start = time.perf_counter()
    if calib_count < 1 or check_count < 1:
        raise ValueError(f"calib_count {calib_count} and check_count {check_count} must be >= 1")
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement {min_agreement} must be between 0 and 1")
    if eval_options is not None and (eval_options.mode != "whole" or eval_options.passes > 1):
        log.info("INT8 check: whole-image inference at the test scale (no sliding window or TTA)")
    path = Path(path)
    files = calibration_files(calibrate)
    order = np.random.default_rng(seed).permutation(len(files))
    files = [files[i] for i in order]
    if eval_dataset is None:
        if len(files) < 2:
            raise ValueError(
                f"calibration images: found {len(files)}; at least 2 are needed (some are held out to check the "
                "INT8 model), or pass an eval dataset"
            )
        hold = min(check_count, len(files) - calib_count) if len(files) > calib_count else max(1, len(files) // 4)
        calib_files, check_files = files[: min(calib_count, len(files) - hold)], files[len(files) - hold :]
    else:
        calib_files, check_files = files[:calib_count], []

    unreadable: list[str] = []

    def load(paths: Sequence[Path]) -> list[np.ndarray]:
        images = []
        for p in paths:
            try:
                image = read_image(p)
            except (ImageReadError, OSError) as e:
                unreadable.append(str(e).splitlines()[0])
                continue
            h, w = fit_size(*image.shape[:2], size)
            if (h, w) != image.shape[:2]:
                image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
            images.append(image)
        return images

    calib_images, check_images = load(calib_files), load(check_files)
    if not calib_images or (eval_dataset is None and not check_images):
        which = "calibration" if not calib_images else "held-out"
        raise ValueError(
            f"calibration images: none of the {len(calib_files) if not calib_images else len(check_files)} "
            f"{which} files could be read (first: {unreadable[0]})"
        )
    if unreadable:
        log.warning("skipped %d unreadable calibration images (first: %s)", len(unreadable), unreadable[0])

    options = options or QuantizeOptions()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="segformer-int8-") as tmp:
        float_path, int8_path = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        sample = (max(model.encoder.min_size, min(size)),) * 2
        export_onnx(model, float_path, sample_size=sample, **export_kwargs)
        reference = OnnxSegmenter(float_path)
        feeds = [reference.feed(image) for image in calib_images]
        log.info("calibrating INT8 on %d images", len(feeds))
        info = quantize_onnx(float_path, int8_path, feeds, options)
        candidate = OnnxSegmenter(int8_path)
        config: SegFormerConfig = model.config
        if eval_dataset is not None:
            samples = _dataset_samples(eval_dataset, eval_max_samples)
            eval_options = eval_options or InferenceOptions()

            def net_size(h: int, w: int) -> tuple[int, int] | None:
                if eval_options.scale is None and not eval_options.size_divisor:
                    return None
                return resized_size(h, w, eval_options.scale, 1.0, eval_options.size_divisor)

            result = compare(
                reference,
                candidate,
                samples,
                config.num_classes,
                net_size=net_size,
                ignore_index=as_dataset(eval_dataset).ignore_index,
                class_names=config.class_names,
            )
            source = "images of the eval dataset"
        else:
            result = compare(reference, candidate, [(image, None) for image in check_images], config.num_classes)
            source = "held-out calibration images"
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
            int8_miou=result.int8_miou,
            quantized_nodes=info["quantized"],
            kept_float=info["kept_float"],
            reduce_range=info["reduce_range"],
        )
        report.seconds = time.perf_counter() - start
        if not report.passed and not force:
            raise QuantizationRejected(
                f"INT8 labels agree with float on {100 * report.agreement:.2f}% of pixels, below the required "
                f"{100 * min_agreement:.2f}%: {path} not written (more or more typical --calibrate images, a lower "
                "--min-agreement, or --force to write it anyway)",
                report,
            )
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
    return report


def _dataset_samples(dataset: SampleSource, limit: int | None) -> Any:
    for i in range(len(dataset) if limit is None else min(limit, len(dataset))):
        image, mask, _ = dataset.load(i)
        yield image, mask
