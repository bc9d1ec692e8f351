"""Mix Transformer (MiT) encoder: overlapping patch embeddings, efficient self-attention, Mix-FFN.

No positional encoding: the 3x3 depthwise conv in Mix-FFN leaks enough position information (paper section 3.1).
The paper's ablation of that choice (Table 1c) is a config option, off by default (`SegFormerConfig.pos_embed_size`):
FFNs without the depthwise conv, and a learned absolute positional encoding added after each patch embedding.
Tokens travel as (B, N, C); maps made from them with `to_map` are channels-last views. Every conv weight is stored
channels-last too (`_channels_last`): oneDNN then reads those views directly and returns channels-last maps, whose
`to_tokens` is again a view. With NCHW weights each conv reordered its input and output (about a third of B0's CPU
time went to copies). State-dict keys and values are unchanged; only the weights' memory layout differs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import SegFormerConfig
from .layers import (
    EXPORT,
    EXPORT_ORT,
    EXPORTS,
    FAST,
    PLAIN,
    DropPath,
    dense_inference,
    drop_path_rates,
    execution_path,
    to_map,
    to_tokens,
)


def _channels_last(conv: nn.Conv2d) -> nn.Conv2d:
    """Store the weight channels-last, so the conv consumes and produces channels-last maps (no reorder copies)."""
    # clone, not contiguous(): a depthwise weight (C, 1, k, k) counts as contiguous either way and keeps NCHW strides
    conv.weight.data = conv.weight.data.clone(memory_format=torch.channels_last)
    return conv


def _dense(x: Tensor, linear: nn.Linear, fast: bool) -> Tensor:
    """`linear(x)`; on the FAST path (eager inference) as oneDNN's GEMM with the bias inside (`dense_inference`)."""
    return dense_inference(x, linear.weight, linear.bias) if fast else linear(x)


def _linear_add(x: Tensor, linear: nn.Linear, residual: Tensor) -> Tensor:
    """`residual + linear(x)` for inference: oneDNN's GEMM with the bias inside, then the residual added in place
    into its fresh output (one pass over (B, N, C), as many as accumulating into `residual + bias` with MKL's
    addmm_, whose GEMM is about twice as slow on AMD EPYC: see `dense_inference`)."""
    return dense_inference(x, linear.weight, linear.bias).add_(residual)


def _export_map(x: Tensor, size: Sequence[int], channels: int) -> Tensor:
    """(B*H*W, C) tokens -> (B, C, H, W) map view for a conv in an exported graph; `size` = (B, H, W)."""
    return x.view(*size, channels).permute(0, 3, 1, 2)


def _export_tokens(x: Tensor, channels: int) -> Tensor:
    """A conv's (B, C, H, W) output -> (B*H*W, C) tokens in an exported graph: the NHWC Transpose, which ONNX Runtime
    folds into the conv's layout reorder, then a Reshape of constant shape. Sizes are never read from the conv's
    output: a Shape there (even of the Transpose) makes ONNX Runtime reorder the whole map a second time, to NCHW,
    only to take its shape."""
    return x.permute(0, 2, 3, 1).reshape(-1, channels)  # (B, H, W, C) -> (B*H*W, C)


class OverlapPatchEmbed(nn.Module):
    """Strided conv whose kernel is larger than its stride (7/4 then 3/2), so neighbouring patches overlap."""

    def __init__(self, in_channels: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = _channels_last(nn.Conv2d(in_channels, dim, kernel, stride, padding=kernel // 2))
        self.norm = nn.LayerNorm(dim)  # torch default eps 1e-5, as the original

    def forward(self, x: Tensor, path: str = PLAIN) -> tuple[Tensor, Sequence[int]]:
        """(B, N, C) tokens and (H', W'); on the export paths `forward_export`'s (B*N, C) tokens and (B, H', W')."""
        if path in EXPORTS:
            return self.forward_export(x)
        x = self.proj(x)  # (B, C, ceil(H/s), ceil(W/s))
        return self.norm(to_tokens(x)), (x.shape[2], x.shape[3])

    def forward_export(self, x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        """(B*N, C) tokens and their size (B, H', W'), computed from the input's size: ONNX Runtime answers a Shape of
        the conv's output, even through the NHWC Transpose, by reordering the whole map to NCHW (`_export_tokens`).
        The input's size is read through an NHWC view too: an input map is a view of tokens, and this Transpose
        cancels its own, so the Shape reads the tokens rather than keeping a full NCHW copy for itself."""
        b, h, w, _ = x.permute(0, 2, 3, 1).shape
        (k, _), (s, _), (p, _) = self.proj.kernel_size, self.proj.stride, self.proj.padding
        size = (b, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
        return self.norm(_export_tokens(self.proj(x), self.proj.out_channels)), size


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a map shrunk by a strided conv (sequence / sr_ratio^2)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # rows [:dim] -> keys, [dim:] -> values (the official layout)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = _channels_last(nn.Conv2d(dim, dim, sr_ratio, sr_ratio))
            self.norm = nn.LayerNorm(dim)  # eps 1e-5, as the original

    def forward(self, x: Tensor, hw: tuple[int, int], residual: Tensor | None = None) -> Tensor:
        """Attention output; `residual + output` when a residual is given (inference only, see `_linear_add`)."""
        b, n, c = x.shape
        fast = residual is not None
        q = _dense(x, self.q, fast).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (B, h, N, d)
        if self.sr_ratio > 1:
            x = self.norm(to_tokens(self.sr(to_map(x, hw))))  # (B, N / sr^2, C)
        kv = _dense(x, self.kv, fast)  # (B, M, 2C)
        k, v = kv.unflatten(-1, (2, self.num_heads, -1)).permute(2, 0, 3, 1, 4)  # 2 x (B, h, M, d)
        out = F.scaled_dot_product_attention(q, k, v)  # scale d^-0.5, as the original
        out = out.transpose(1, 2).reshape(b, n, c)  # (B, h, N, d) -> (B, N, C); a view: SDPA returns it (B, N, h, d)
        return self.proj(out) if residual is None else _linear_add(out, self.proj, residual)

    def forward_export(self, x: Tensor, size: Sequence[int], residual: Tensor, fused: bool = False) -> Tensor:
        """`residual + attention(x)` on (B*N, C) tokens as ONNX Runtime runs it fastest: 2-D GEMMs with their bias
        inside (Gemm), keys and values as two GEMMs (no Split), and either ONNX Runtime's fused MultiHeadAttention
        (`fused`) or standard MatMul / Softmax / MatMul with the scale folded into the query weights (a constant after
        export) and no Transposes around the products with one head (the largest stage). With one head the output
        projection is folded into the values as well: the attention rows sum to one, so proj(attn @ v) =
        attn @ proj(v), a GEMM on the M reduced tokens instead of the N queries."""
        c, heads = self.q.in_features, self.num_heads  # Python ints: weight slices and the scale fold to constants
        d, b = c // heads, size[0]
        scale = 1.0 if fused else d**-0.5
        q = F.linear(x, self.q.weight * scale, self.q.bias * scale)  # (B*N, C)
        if self.sr_ratio > 1:
            x = self.norm(_export_tokens(self.sr(_export_map(x, size, c)), c))  # (B*M, C)
        k = F.linear(x, self.kv.weight[:c], self.kv.bias[:c])  # (B*M, C)
        v_weight, v_bias = self.kv.weight[c:], self.kv.bias[c:]
        if heads == 1:  # constants after export
            v_weight, v_bias = self.proj.weight @ v_weight, self.proj.weight @ v_bias + self.proj.bias
        v = F.linear(x, v_weight, v_bias)  # (B*M, C)
        if fused:
            out = _OrtAttention.apply(q.view(b, -1, c), k.view(b, -1, c), v.view(b, -1, c), heads)  # (B, N, C)
        elif heads == 1:
            attn = torch.matmul(q.view(b, -1, c), k.view(b, -1, c).transpose(1, 2)).softmax(dim=-1)  # (B, N, M)
            out = torch.matmul(attn, v.view(b, -1, c))  # (B, N, C)
        else:
            q = q.view(b, -1, heads, d).transpose(1, 2)  # (B, h, N, d)
            k = k.view(b, -1, heads, d).permute(0, 2, 3, 1)  # (B, h, d, M)
            attn = torch.matmul(q, k).softmax(dim=-1)  # (B, h, N, M)
            out = torch.matmul(attn, v.view(b, -1, heads, d).transpose(1, 2)).transpose(1, 2)  # (B, N, h, d)
        out = out.reshape(-1, c)  # (B*N, C)
        return (out if heads == 1 else F.linear(out, self.proj.weight, self.proj.bias)) + residual


class _OrtAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d)) v for (B, N, C) queries and (B, M, C) keys and values split into `heads`; exported
    as ONNX Runtime's com.microsoft MultiHeadAttention (one fused kernel, no (N, M) scores in memory)."""

    @staticmethod
    def forward(ctx: object, q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
        b, n, c = q.shape
        split = [t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v)]  # (B, h, ., d)
        return F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(b, n, c)

    @staticmethod
    def symbolic(g, q, k, v, heads: int):  # g: the torch.onnx graph context
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=heads)
        out.setType(q.type())
        return out


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv -> GELU -> Linear (the conv comes before the activation, as the original).

    `conv=False` leaves the depthwise conv out (a plain transformer FFN): the positional-encoding ablation."""

    def __init__(self, dim: int, hidden: int, conv: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = _channels_last(nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)) if conv else None
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, hw: tuple[int, int], residual: Tensor | None = None) -> Tensor:
        x = _dense(x, self.fc1, residual is not None)
        if self.dwconv is not None:
            x = to_tokens(self.dwconv(to_map(x, hw)))
        x = F.gelu(x)
        return self.fc2(x) if residual is None else _linear_add(x, self.fc2, residual)

    def forward_export(self, x: Tensor, size: Sequence[int], residual: Tensor) -> Tensor:
        """`residual + ffn(x)` on (B*N, C) tokens for ONNX Runtime: fc1 and fc2 as 1x1 convs around the depthwise
        conv and the GELU, so that all of it runs in ONNX Runtime's blocked layout (its GELU is element-wise, layout
        blind): one layout reorder in and one out, both of the narrow C channels. With fc2 as a GEMM on tokens the
        wide 4C-channel map left the blocked layout instead, through ONNX Runtime's single-threaded NHWC reorder."""
        c = self.fc1.in_features
        y = F.conv2d(_export_map(x, size, c), self.fc1.weight[:, :, None, None], self.fc1.bias)  # (B, 4C, H, W)
        y = y if self.dwconv is None else self.dwconv(y)
        y = F.conv2d(F.gelu(y), self.fc2.weight[:, :, None, None], self.fc2.bias)  # (B, C, H, W)
        return _export_tokens(y, c) + residual


class PositionEmbedding(nn.Module):
    """A learned absolute positional encoding (1, C, h, w) on one stage's token grid, resized bilinearly
    (align_corners=False, so exactly itself at its own size) to the tokens of any other input; the paper's ablation
    of Mix-FFN (Table 1c), as in PVT: added after the patch embedding, initialised with a truncated normal std 0.02."""

    def __init__(self, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, dim, *grid), std=0.02))

    def forward(self, hw: Sequence[int]) -> Tensor:
        """(1, h*w, C) encodings for an (h, w) token grid."""
        return to_tokens(F.interpolate(self.weight, size=(hw[0], hw[1]), mode="bilinear", align_corners=False))

    def extra_repr(self) -> str:
        return f"dim={self.weight.shape[1]}, grid={tuple(self.weight.shape[2:])}"


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(attn(LN(x))), then x + DropPath(ffn(LN(x)))."""

    def __init__(
        self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float, eps: float, conv: bool = True
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.ffn = MixFFN(dim, dim * mlp_ratio, conv)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, hw: tuple[int, int], path: str = PLAIN) -> Tensor:
        """`path` as `layers.execution_path`: FAST runs oneDNN's GEMMs and adds each residual in place, the export paths
        run `forward_export` on (B*N, C) tokens with `hw` = (B, H, W); neither has DropPath (inference)."""
        if path in EXPORTS:
            return self.forward_export(x, hw, fused=path == EXPORT_ORT)
        if path == FAST and (self.drop_path.p == 0.0 or not self.training):
            x = self.attn(self.norm1(x), hw, residual=x)
            return self.ffn(self.norm2(x), hw, residual=x)
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.ffn(self.norm2(x), hw))

    def forward_export(self, x: Tensor, size: Sequence[int], fused: bool = False) -> Tensor:
        """The block on (B*N, C) tokens for ONNX export, without DropPath (inference); `size` = (B, H, W)."""
        x = self.attn.forward_export(self.norm1(x), size, residual=x, fused=fused)
        return self.ffn.forward_export(self.norm2(x), size, residual=x)


class Stage(nn.Module):
    """Patch embedding, a stack of blocks, and a final LayerNorm; returns a (B, C, H, W) map."""

    def __init__(
        self,
        in_channels: int,
        dim: int,
        depth: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: int,
        drop_paths: list[float],
        eps: float,
        first: bool,
        pos_grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, kernel=7 if first else 3, stride=4 if first else 2)
        # The ablation: a positional encoding instead of Mix-FFN's depthwise conv (None: the paper's model).
        self.pos_embed = PositionEmbedding(dim, pos_grid) if pos_grid is not None else None
        conv = pos_grid is None
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, sr_ratio, mlp_ratio, p, eps, conv) for p in drop_paths[:depth]
        )
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.grad_checkpointing = False

    def forward(self, x: Tensor, path: str = PLAIN) -> Tensor:
        if path in EXPORTS and (not self.training or all(b.drop_path.p == 0.0 for b in self.blocks)):
            return self.forward_export(x, path)
        path = PLAIN if path in EXPORTS else path  # exporting a training model with DropPath
        x, hw = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed(hw)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(block, x, hw, path, use_reentrant=False)
            else:
                x = block(x, hw, path)
        return to_map(self.norm(x), hw)

    def forward_export(self, x: Tensor, path: str = EXPORT) -> Tensor:
        """The stage as exported to ONNX: every token tensor 2-D (B*N, C), so GEMMs, LayerNorms and residual Adds need
        no Reshape, and the sizes (B, H, W) are found once (`OverlapPatchEmbed.forward_export`) for the few Reshapes
        around the convs and the attention products. Returns the (B, C, H, W) map, a view of the tokens (its Shape reads
        the tokens)."""
        x, size = self.patch_embed(x, path)  # called as modules: node names keep their scopes
        if self.pos_embed is not None:
            c = self.norm.normalized_shape[0]
            x = (x.view(size[0], -1, c) + self.pos_embed(size[1:])).view(-1, c)  # (B, N, C) + (1, N, C) -> (B*N, C)
        for block in self.blocks:
            x = block(x, size, path)
        return _export_map(self.norm(x), size, self.norm.normalized_shape[0])


def position_grids(config: SegFormerConfig) -> list[tuple[int, int] | None]:
    """Each stage's token grid for `config.pos_embed_size` (ceil(H/4) x ceil(W/4), then halved, rounded up, as the
    patch embeddings shrink any input); None per stage for the paper's model (Mix-FFN, no positional encoding)."""
    if config.pos_embed_size is None:
        return [None] * len(config.embed_dims)
    h, w = config.pos_embed_size
    return [(-(-h // (4 * 2**i)), -(-w // (4 * 2**i))) for i in range(len(config.embed_dims))]


class MixTransformer(nn.Module):
    """The hierarchical encoder: four maps at strides 4, 8, 16, 32 (sizes ceil(H/4), ceil(H/8), ...)."""

    def __init__(self, config: SegFormerConfig) -> None:
        super().__init__()
        rates = drop_path_rates(config.depths, config.drop_path_rate)
        in_dims = (config.in_channels, *config.embed_dims[:-1])
        grids = position_grids(config)
        self.stages = nn.ModuleList(
            Stage(cin, dim, depth, heads, sr, ratio, dp, config.layer_norm_eps, i == 0, grids[i])
            for i, (cin, dim, depth, heads, sr, ratio, dp) in enumerate(
                zip(
                    in_dims,
                    config.embed_dims,
                    config.depths,
                    config.num_heads,
                    config.sr_ratios,
                    config.mlp_ratios,
                    rates,
                    strict=True,
                )
            )
        )
        # Smallest input side for which every reduction conv still sees at least one full window.
        self.min_size = min(
            h for h in range(1, 4096) if all(-(-h // (4 * 2**i)) >= sr for i, sr in enumerate(config.sr_ratios))
        )
        self.feature_info = [
            {"num_chs": dim, "reduction": 4 * 2**i, "module": f"stages.{i}"} for i, dim in enumerate(config.embed_dims)
        ]

    def forward(self, x: Tensor, path: str | None = None) -> list[Tensor]:
        """`path` as `layers.execution_path` (decided from `x` when not given, e.g. by `SegFormer.forward`)."""
        if min(x.shape[-2], x.shape[-1]) < self.min_size:
            raise ValueError(
                f"input of size {tuple(x.shape[-2:])} is too small: this model needs H, W >= {self.min_size} pixels"
            )
        path = path or execution_path(x)
        features = []
        for stage in self.stages:
            x = stage(x, path)
            features.append(x)
        return features

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward: much less memory for high-resolution crops."""
        for stage in self.stages:
            stage.grad_checkpointing = enable
