"""Small building blocks shared by the encoder and the decoder: token/map reshapes, DropPath, weight init, and the
choice of compute path."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Compute paths, chosen once per forward by `execution_path` and passed down to every block and the decoder.
PLAIN = "plain"  # differentiable out-of-place ops: training, autocast, tracing, torch.compile, the meta device
FAST = "fast"  # eager inference: residual GEMMs accumulate in place, folded decoder weights are cached
EXPORT = "export"  # torch.onnx export: the graph ONNX Runtime runs fastest, in standard ONNX operators
EXPORT_ORT = "export_ort"  # the same, with ONNX Runtime's fused com.microsoft operators (runs in ONNX Runtime only)
EXPORTS = (EXPORT, EXPORT_ORT)


def execution_path(x: Tensor, onnxruntime_ops: bool = False) -> str:
    """The compute path for input `x`: FAST only for eager inference without autograd, autocast or tracing; while
    exporting to ONNX, EXPORT (EXPORT_ORT with `onnxruntime_ops`)."""
    if torch.onnx.is_in_onnx_export():
        return EXPORT_ORT if onnxruntime_ops else EXPORT
    device = x.device.type
    plain = (
        torch.is_grad_enabled()
        or device == "meta"  # shape/FLOP counting
        or not torch.amp.is_autocast_available(device)
        or torch.is_autocast_enabled(device)  # autocast does not cast in-place ops
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
    )
    return PLAIN if plain else FAST


def dense_inference(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(x, weight, bias)` on (B, N, C_in) tokens for inference (no autograd), run as oneDNN's 1x1
    convolution over the tokens viewed as a (B, C_in, N, 1) channels-last map; returns (B, N, C_out) tokens, a view of
    the channels-last output. F.linear calls MKL's sgemm, which on AMD EPYC (AVX-512) runs these thin products at
    about half oneDNN's speed, and copies the bias into its output before the GEMM (oneDNN adds it inside).
    `torch.mkldnn_convolution` directly: `F.conv2d` picks a slow non-oneDNN kernel for 1x1 convs on one thread.
    Falls back to F.linear off the CPU, for other dtypes, or without oneDNN."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return F.linear(x, weight, bias)
    b, n, c = x.shape
    x_map = x.reshape(b, n, 1, c).permute(0, 3, 1, 2)  # (B, C_in, N, 1), a channels-last view of the tokens
    out = torch.mkldnn_convolution(x_map, weight[:, :, None, None], bias, (0, 0), (1, 1), (1, 1), 1)
    return out.permute(0, 2, 3, 1).reshape(b, n, -1)  # (B, C_out, N, 1) channels-last -> (B, N, C_out), a view


def to_map(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """(B, N, C) tokens -> (B, C, H, W) map, channels-last in memory: a view of contiguous tokens, no copy.

    Sizes read from the tensor (not `unflatten`) keep H and W symbolic when traced, so an exported ONNX graph runs at
    any size; and the batch stride stays N*C even when B == 1, so `F.interpolate` recognises the channels-last map
    instead of copying it to NCHW first.
    """
    return x.reshape(x.shape[0], hw[0], hw[1], x.shape[2]).permute(0, 3, 1, 2)


def to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) map -> (B, N, C) tokens. A view when the map is channels-last (what convs here return)."""
    return x.flatten(2).transpose(1, 2)


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample, rescaling the kept ones (Huang et al. 2016)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(depths: tuple[int, ...], max_rate: float) -> list[list[float]]:
    """Per-block drop rates rising linearly from 0 to `max_rate` over all blocks, split by stage (as the original)."""
    n = sum(depths)
    rates = [max_rate * i / max(n - 1, 1) for i in range(n)]
    out, start = [], 0
    for depth in depths:
        out.append(rates[start : start + depth])
        start += depth
    return out


@torch.no_grad()
def init_weights(module: nn.Module) -> None:
    """The original initialisation, applied once to the whole model with `model.apply(init_weights)`.

    Linear: truncated normal std 0.02; Conv2d: normal with std sqrt(2 / fan_out), fan_out = k*k*out/groups
    (what the MiT encoder and mmcv's ConvModule use); norms: weight 1, bias 0; all biases 0.
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        fan_out = kh * kw * module.out_channels // module.groups
        module.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm | nn.modules.batchnorm._BatchNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@torch.no_grad()
def init_classifier(conv: nn.Conv2d) -> None:
    """The last 1x1 conv starts small (normal std 0.01, mmseg's rule for segmentation classifiers), so initial logits
    are near zero and the loss starts near ln(K); the fan-out rule above would give std sqrt(2/K), far too large."""
    nn.init.normal_(conv.weight, std=0.01)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
