"""ExecuTorch export: `torch.export` of the model, lowered to the XNNPACK delegate, written as a `.pte` program that
ExecuTorch runs on phones, embedded boards and desktop CPUs (`runtimes.PteForward` runs it here).

The program takes a normalised float (1, C, H, W) batch and returns logits (1, K, ceil(H/4), ceil(W/4)). It is traced
through the eager path with the paper-order decoder (its weights are plain parameters, which XNNPACK takes as
constants; the export path's weights are computed in the graph, so XNNPACK leaves those products to ExecuTorch's
portable kernels, ~18x slower measured here), with one change of layout that XNNPACK needs (measured with
ExecuTorch 1.5.1; the accuracy gate is what found it): with dynamic sizes it computes wrong values when a depthwise
conv's channels-last output is flattened into tokens as a transposed view, so the Mix-FFN flattens it as NHWC
(`_NhwcMixFFN`, the same arithmetic).

- dynamic (default): any height and width between the model's minimum size and `max_size`. Memory is planned for
  `max_size` (the attention's scores grow with the square of the pixels: 2048 needs ~9 GB for B0, 1024 ~0.6 GB);
- fixed (`dynamic=False`): one size, `sample_size`, stored in the metadata; predict runs it on windows of that size
  (slide mode, `runtimes.runtime_options`).

The size bounds and the model's config are stored in the program (a constant method, `segformer_metadata`).

With `calibration`, PT2E quantisation with the XNNPACK quantizer (symmetric int8, per-channel weights) calibrated on
the user's images; what it has no int8 kernel for stays fp32 (`Int8Plan`).

executorch is the optional `executorch` extra; it is imported inside functions.
"""

from __future__ import annotations

import copy
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fileio import atomic_write
from ..model.config import channel_stats
from ..model.layers import PLAIN, to_map, to_tokens
from ..model.mit import EfficientSelfAttention, MixFFN
from ..model.segformer import SegFormer

METADATA_METHOD = "segformer_metadata"
# Operations that compute (not views or reshapes), reported by the int8 plan.
COMPUTE_OPS = (
    "conv2d", "linear", "layer_norm", "scaled_dot_product_attention", "softmax", "gelu", "upsample_bilinear2d",
    "add", "mul", "matmul", "relu", "cat", "batch_norm",
)  # fmt: skip
INT8_KERNELS = ("conv2d", "linear", "add", "mul", "cat")  # what XNNPACK runs in int8 among COMPUTE_OPS
# Why an operation stays fp32 in the int8 program (printed by the gate's report).
WHY_FP32 = {
    "layer_norm": "XNNPACK has no int8 LayerNorm (per-token statistics)",
    "softmax": "XNNPACK has no int8 softmax (the attention probabilities)",
    "gelu": "XNNPACK has no int8 GELU",
    "matmul": "products of two activations (q k^T, attention x v), whose ranges change with every image; "
    "XNNPACK's quantizer leaves them fp32",
    "upsample_bilinear2d": "the decoder's bilinear resizes: no int8 kernel",
    "scaled_dot_product_attention": "no int8 kernel",
}
WHY_FP32_OTHER = "not annotated by XNNPACK's quantizer (no int8 pattern matched it here)"
MAX_SIZE = 1024  # default largest height/width of a dynamic program (memory is planned for it)


def require_executorch() -> None:
    """Raise a one-line RuntimeError naming what to install when executorch is missing."""
    try:
        import executorch.exir  # noqa: F401
        import executorch.runtime  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            f"ExecuTorch export and .pte files need executorch ({e.msg}): pip install 'segformer[executorch]'"
        ) from None


class _NhwcMixFFN(nn.Module):
    """`MixFFN` (same modules, same arithmetic) with the depthwise conv's output flattened into tokens through an
    NHWC permute instead of `to_tokens`' transposed view, which XNNPACK gets wrong with dynamic sizes."""

    def __init__(self, ffn: MixFFN) -> None:
        super().__init__()
        self.fc1, self.dwconv, self.fc2 = ffn.fc1, ffn.dwconv, ffn.fc2

    def forward(self, x: Tensor, hw: tuple[int, int], residual: Tensor | None = None) -> Tensor:
        b, n, _ = x.shape
        y = self.dwconv(to_map(self.fc1(x), hw))  # (B, 4C, H, W)
        y = self.fc2(F.gelu(y.permute(0, 2, 3, 1).reshape(b, n, -1)))  # (B, H, W, 4C) -> (B, N, 4C) -> (B, N, C)
        return y if residual is None else residual + y


class _ExplicitAttention(nn.Module):
    """`EfficientSelfAttention` (same modules, same arithmetic) with the attention written out: softmax(q k^T / sqrt(d))
    v. XNNPACK runs these products and the softmax; `F.scaled_dot_product_attention` decomposes into them plus masking
    ops (for fully masked rows, which SegFormer never has) that fall to ExecuTorch's slow portable kernels."""

    def __init__(self, attn: EfficientSelfAttention) -> None:
        super().__init__()
        self.num_heads, self.sr_ratio = attn.num_heads, attn.sr_ratio
        self.q, self.kv, self.proj = attn.q, attn.kv, attn.proj
        if attn.sr_ratio > 1:
            self.sr, self.norm = attn.sr, attn.norm

    def forward(self, x: Tensor, hw: tuple[int, int], residual: Tensor | None = None) -> Tensor:
        b, n, c = x.shape
        q = self.q(x).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (B, h, N, d)
        if self.sr_ratio > 1:
            x = self.norm(to_tokens(self.sr(to_map(x, hw))))  # (B, M, C), M = N / sr^2
        k, v = self.kv(x).unflatten(-1, (2, self.num_heads, -1)).permute(2, 0, 3, 1, 4)  # 2 x (B, h, M, d)
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, h, N, M)
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)  # (B, h, N, d) -> (B, N, C)
        out = self.proj(out)
        return out if residual is None else residual + out


class ExecuTorchWrapper(nn.Module):
    """What the .pte computes: the model's logits through its eager path and the paper-order decoder, on a copy
    whose conv weights are plain NCHW (the model keeps channels-last copies for oneDNN; XNNPACK's layout pass expects
    NCHW constants), whose Mix-FFNs flatten NHWC (`_NhwcMixFFN`) and whose attention is written out
    (`_ExplicitAttention`)."""

    def __init__(self, model: SegFormer) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        for module in self.model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.data = module.weight.data.contiguous()
            for name, child in module.named_children():
                if isinstance(child, MixFFN):
                    setattr(module, name, _NhwcMixFFN(child))
                elif isinstance(child, EfficientSelfAttention):
                    setattr(module, name, _ExplicitAttention(child))

    def forward(self, x: Tensor) -> Tensor:
        return self.model.head.forward_unfolded(self.model.encoder(x, PLAIN))


@dataclass
class Int8Plan:
    """What PT2E quantised (op name -> nodes reading int8 tensors) and what stayed fp32 (op name -> nodes)."""

    quantized: dict[str, int] = field(default_factory=dict)
    kept_float: dict[str, int] = field(default_factory=dict)


def export_pte(
    model: SegFormer,
    path: str | os.PathLike,
    *,
    sample_size: tuple[int, int] = (512, 512),
    max_size: int = MAX_SIZE,
    dynamic: bool = True,
    calibration: Sequence[Tensor] | None = None,
) -> Int8Plan | None:
    """Write `model` to `path` as an XNNPACK-delegated ExecuTorch program (no accuracy check: `formats.export_model`
    is the checked path). With `calibration` (normalised (1, C, H, W) inputs), PT2E int8 calibrated on them; returns
    what was quantised then. `dynamic=False` fixes the size at `sample_size` (stored in the metadata)."""
    require_executorch()
    wrapper = ExecuTorchWrapper(model)
    min_size = model.encoder.min_size
    if max(sample_size) > max_size or min(sample_size) < min_size:
        raise ValueError(f"sample size {sample_size} must be between {min_size} and --max-size {max_size}")
    sample = torch.randn(1, model.config.in_channels, *sample_size, generator=torch.Generator().manual_seed(0))
    shapes = _dynamic_shapes(min_size, max_size) if dynamic else None
    with torch.no_grad():
        program = torch.export.export(wrapper, (sample,), dynamic_shapes=shapes)
        plan = None
        if calibration is not None:
            if not dynamic:  # a fixed program sees every calibration image at its one size
                calibration = [F.interpolate(x, size=sample_size, mode="bilinear") for x in calibration]
            program, plan = _quantize(program, sample, shapes, calibration)
    bounds = _bounds(program, max_size) if dynamic else {"fixed_size": list(sample_size)}
    metadata = _metadata(model, int8=plan is not None, **bounds)
    buffer = _lower(program, metadata)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer))
    return plan


def _dynamic_shapes(min_size: int, max_size: int) -> dict[str, dict[int, Any]]:
    from torch.export import Dim

    # AUTO: torch.export finds the sizes' own constraints (stage strides); the bounds limit what XNNPACK plans for.
    return {"x": {2: Dim.AUTO(min=min_size, max=max_size), 3: Dim.AUTO(min=min_size, max=max_size)}}


def _bounds(program: Any, max_size: int) -> dict[str, list[int]]:
    """The (height, width) ranges the traced program accepts: torch.export narrows the requested one to what the
    model's arithmetic allows (its strides and size tests)."""
    x = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == "x")
    low, high = [1, 1], [max_size, max_size]
    for i, dim in enumerate(x.meta["val"].shape[2:]):
        bound = program.range_constraints.get(dim.node.expr) if isinstance(dim, torch.SymInt) else None
        if bound is not None:
            low[i], high[i] = int(bound.lower), min(max_size, int(bound.upper))
    return {"min_size": low, "max_size": high}


def _metadata(model: SegFormer, **extra: Any) -> str:
    mean, std = channel_stats(model.config)
    return json.dumps({"segformer_config": model.config.to_dict(), "mean": mean, "std": std, **extra})


def _lower(program: Any, metadata: str) -> bytes:
    """The XNNPACK-delegated ExecuTorch program, with `metadata` (JSON) returned by its `segformer_metadata`
    method."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(
        program, partitioner=[XnnpackPartitioner()], constant_methods={METADATA_METHOD: metadata}
    )
    return edge.to_executorch().buffer


def _quantize(program: Any, sample: Tensor, shapes: Any, calibration: Sequence[Tensor]) -> tuple[Any, Int8Plan]:
    """PT2E: XNNPACK's quantizer annotates the graph, observers see the calibration inputs, convert puts
    quantize/dequantize pairs around what runs in int8; exported again for lowering."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calibration:
        raise ValueError("no calibration inputs")
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(program.module(), quantizer)
    for x in calibration:
        prepared(x)
    converted = convert_pt2e(prepared)
    plan = _int8_plan(converted)
    return torch.export.export(converted, (sample,), dynamic_shapes=shapes), plan


def _int8_plan(graph_module: Any) -> Int8Plan:
    """Per compute operation (`COMPUTE_OPS`), the nodes that run in int8 (an op XNNPACK has an int8 kernel for, reading
    a dequantised tensor and quantised again after: the pattern it lowers to that kernel) and those left in fp32."""
    quantized: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    for node in graph_module.graph.nodes:
        name = str(node.target).split(".")[-2] if node.op == "call_function" and "." in str(node.target) else ""
        if name not in COMPUTE_OPS:
            continue
        inputs = [a for a in node.args if isinstance(a, torch.fx.Node)]
        reads_int8 = any("dequantize" in str(a.target) for a in inputs)
        writes_int8 = bool(node.users) and all("quantize_per" in str(u.target) for u in node.users)
        (quantized if name in INT8_KERNELS and reads_int8 and writes_int8 else kept)[name] += 1
    return Int8Plan(dict(quantized), dict(kept))
