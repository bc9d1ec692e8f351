"""All-MLP decoder: unify channels per level, upsample to 1/4, fuse, classify (paper section 3.2).

The paper's order (project, upsample, concat, 1x1 fuse conv) spends most of B0's MACs on the fuse conv. Every step
before the BatchNorm is linear, and bilinear weights sum to one, so

    fuse(concat(up(L4 c4), ..., L1 c1)) = sum_i up(W_fuse_i L_i c_i) + sum_i W_fuse_i b_i

where W_fuse_i is the fuse conv's column block for level i. `forward` therefore applies one composed C_i -> C
projection per level at that level's own resolution, upsamples and adds (and, in eval mode, folds the BatchNorm into
that projection too). The result is the same function (about 1e-7 apart in fp32); `forward_unfolded` keeps the
paper's literal order for tests and for anyone who wants to check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import EXPORTS, FAST, dense_inference, execution_path, to_map, to_tokens


def _linear(tokens: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """(B, N, C_in) -> (B, N, C) as one 2-D GEMM: a 3-D input whose size-1 batch has an odd stride otherwise falls
    to a batched kernel about 2.5x slower for these thin (K = 32..512) products."""
    out = F.linear(tokens.reshape(-1, tokens.shape[-1]), weight, bias)  # (B*N, C)
    return out.view(tokens.shape[0], tokens.shape[1], weight.shape[0])


def _bilinear_matrix(n_in: int, n_out: int, like: Tensor) -> Tensor:
    """(n_out, n_in) weights of 1-D linear resampling as `F.interpolate(mode="bilinear", align_corners=False)`
    does it (source = (i + 0.5) * n_in / n_out - 0.5, clamped at 0; neighbours clamped at the last sample).
    Built from tensor ops only, so traced sizes stay symbolic in an exported graph."""
    dst = torch.arange(n_out, device=like.device).to(like.dtype)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor()
    lam = (src - i0)[:, None]  # (n_out, 1)
    i1 = torch.clamp(i0 + 1, max=n_in - 1)  # n_in is a 0-d tensor while traced: clamp keeps it symbolic
    cols = torch.arange(n_in, device=like.device).to(like.dtype)[None, :]  # (1, n_in)
    return (cols == i0[:, None]).to(like.dtype) * (1 - lam) + (cols == i1[:, None]).to(like.dtype) * lam


def _band(n_in: int, n_out: int, rows: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """The (n_out, n_in) matrix of `_bilinear_matrix` cut into G = ceil(n_out / rows) bands of `rows` output
    indices: band g reads only the source indices index[g] (k = ceil(rows * n_in / n_out) + 2 of them, from the first
    tap of its first output on), with the weights (G, rows, k). Indices past the end point at the last source with
    weight 0, output indices past the end repeat the last one. Tensor ops only, so traced sizes stay symbolic."""
    full = _bilinear_matrix(n_in, n_out, like)  # (n_out, n_in)
    groups = (n_out + rows - 1) // rows
    k = (n_in * rows + n_out - 1) // n_out + 2
    first = torch.arange(groups, device=like.device) * rows  # (G,) first output index of each band
    start = ((first.to(like.dtype) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0).floor().long()  # as in full
    index = start[:, None] + torch.arange(k, device=like.device)[None, :]  # (G, k)
    inside = (index < n_in).to(like.dtype)
    index = torch.clamp(index, max=n_in - 1)
    out = torch.clamp(first[:, None] + torch.arange(rows, device=like.device)[None, :], max=n_out - 1)  # (G, rows)
    weights = full.index_select(0, out.flatten()).view(groups, rows, n_in)  # (G, rows, n_in)
    weights = weights.gather(2, index[:, None, :].expand(groups, rows, k))  # (G, rows, k)
    return index, weights * inside[:, None, :]


class AllMLPHead(nn.Module):
    """Per-level Linear(C_i -> C), bilinear upsample to the stride-4 size, concat [c4, c3, c2, c1],
    1x1 conv (no bias) + BN + ReLU, Dropout2d, 1x1 classifier. Logits come out at 1/4 of the input size.

    `fold` (default True) selects the folded computation described in the module docstring; set it to False to run
    the literal one. Both have the same parameters and state-dict keys.
    """

    BAND = 16  # most output rows per band of the eager height upsampling (`_sum_levels_inference`)

    def __init__(self, in_dims: tuple[int, ...], dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(c, dim) for c in in_dims)
        self.fuse = nn.Conv2d(dim * len(in_dims), dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(dim, num_classes, 1)
        self.fold = True
        self._cache: tuple[tuple, list[Tensor], Tensor] | None = None

    def forward(self, features: list[Tensor], path: str | None = None) -> Tensor:
        """`path` as `layers.execution_path` (decided from the features when not given)."""
        if not self.fold:
            return self.forward_unfolded(features)
        return self.forward_folded(features, path or execution_path(features[0]))

    def forward_unfolded(self, features: list[Tensor]) -> Tensor:
        """The paper's order of operations, kept as the reference the folded path is tested against."""
        return self.classifier(self.dropout(self.fused_features(features)))

    def fused_features(self, features: list[Tensor]) -> Tensor:
        """The fused map the classifier reads, (B, C, H/4, W/4), in the paper's order: per-level projection,
        upsampling, concat [c4, c3, c2, c1], 1x1 fuse conv, BN, ReLU (what the paper's Fig. 3 calls the head)."""
        size = features[0].shape[-2:]
        levels = []
        for feature, proj in zip(features, self.proj, strict=True):
            x = to_map(proj(to_tokens(feature)), feature.shape[-2:])  # (B, C, h_i, w_i)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            levels.append(x)
        x = torch.cat(levels[::-1], dim=1)  # (B, 4C, H/4, W/4) in the original order c4, c3, c2, c1
        return F.relu(self.bn(self.fuse(x)))

    def forward_folded(self, features: list[Tensor], path: str) -> Tensor:
        """Composed projections at each level's resolution, upsample-and-add, (folded) BN, ReLU, classifier."""
        size = features[0].shape[-2:]
        weights, bias = self.folded_weights(cache=path == FAST)
        if path in EXPORTS:
            # A BatchNorm with batch statistics is not folded into the weights: the NCHW graph applies it.
            if self._bn_folded() and not self.dropout.training:
                return self._forward_folded_tokens(features, weights, bias)
            return self._forward_folded_nchw(features, weights, bias)
        inplace = path == FAST
        if inplace and len(features) > 1:
            x = self._sum_levels_inference(features, weights, bias)
        else:
            # Bias: added to the coarsest level before its upsampling (bilinear weights sum to 1, so it passes
            # through unchanged) - a tiny map, instead of a bias-broadcast pass over the full stride-4 output.
            x = None
            for i in reversed(range(len(features))):  # coarse to fine: c4, c3, c2, c1
                feature = features[i]
                y = _linear(to_tokens(feature), weights[i], bias if x is None else None)
                y = to_map(y, feature.shape[-2:])  # (B, C, h_i, w_i): projected at the level's own resolution
                if i > 0:  # levels 2-4 are always smaller; no size test keeps the graph static for export/compile
                    y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
                x = y if x is None else x + y  # (B, C, H/4, W/4), channels-last
        if not self._bn_folded():
            x = self.bn(x)
        x = F.relu(x, inplace=inplace)
        x = self.dropout(x)
        if not inplace:
            # Training: the classifier as one GEMM on the tokens (a view of the channels-last map). A 1x1 conv whose
            # weight is a channels-last copy runs oneDNN's GEMM forward but falls to a slow generic conv kernel in
            # the backward pass, and leaves the weight's gradient channels-last (DDP then copies it per step).
            logits = _linear(to_tokens(x), self.classifier.weight.flatten(1), self.classifier.bias)  # (B, N, K)
            return to_map(logits, size)  # (B, K, H/4, W/4), channels-last
        # Inference: oneDNN's GEMM on the tokens (a view of the channels-last map), the bias added inside it.
        logits = dense_inference(to_tokens(x), self.classifier.weight.flatten(1), self.classifier.bias)  # (B, N, K)
        return to_map(logits, size)  # (B, K, H/4, W/4), channels-last

    def _sum_levels_inference(self, features: list[Tensor], weights: list[Tensor], bias: Tensor) -> Tensor:
        """Pre-BN sum of the projected, upsampled levels without full-size temporaries (inference, no autograd).

        Bilinear upsampling is separable, up(y) = A_h y A_w^T. Levels 2-4 are resampled along the width at their
        own height (small); then along the height in bands of output rows, each reading only the few source rows
        under it (`_band`: about a fifth of the multiply-adds of the dense [A_h,2 | A_h,3 | A_h,4] @ rows), one
        batched GEMM accumulating all three levels in place into the level-1 projection: no three full-size
        upsampled maps, no three full-size additions."""
        height, width = features[0].shape[-2:]
        b, dim = features[0].shape[0], weights[0].shape[0]
        x = dense_inference(to_tokens(features[0]), weights[0])  # (B, H*W, C), level 1 is at the output size already
        band = max(r for r in range(1, self.BAND + 1) if height % r == 0)  # output rows per band, a divisor of H
        groups = height // band
        gathered, bands = [], []
        for i in range(1, len(features)):
            h, w = features[i].shape[-2:]
            y = dense_inference(to_tokens(features[i]), weights[i], bias if i == len(features) - 1 else None)
            y = y.view(b, h, w, dim)  # (B, h_i, w_i, C) at the level's own resolution; bias rides on the coarsest
            rows = torch.matmul(_bilinear_matrix(w, width, y), y).view(b, h, width * dim)  # (B, h_i, W*C)
            index, weight = _band(h, height, band, y)  # (G, k_i), (G, band, k_i)
            gathered.append(rows.index_select(1, index.flatten()).view(b, groups, -1, width * dim))  # (B, G, k_i, W*C)
            bands.append(weight)
        source = torch.cat(gathered, dim=2).view(b * groups, -1, width * dim)  # (B*G, K, W*C)
        a = torch.cat(bands, dim=2).repeat(b, 1, 1)  # (B*G, band, K)
        x.view(b * groups, band, width * dim).baddbmm_(a, source)  # += each band's rows, per image
        return to_map(x, (height, width))  # (B, C, H, W), channels-last

    def _forward_folded_nchw(self, features: list[Tensor], weights: list[Tensor], bias: Tensor) -> Tensor:
        """The same computation for ONNX graphs with a BatchNorm on batch statistics (not folded), in NCHW: 1x1 convs
        (ONNX Runtime runs them in its blocked layout, no Transposes), and the upsample-and-add of levels 2-4 as two
        matrix products instead of three full-size NCHW Resize + Add passes. Bilinear upsampling is separable,
        up(y) = A_h y A_w^T, so sum_i A_h,i (y_i A_w,i^T) = [A_h,2 | A_h,3 | A_h,4] @ concat_rows(y_i A_w,i^T): one
        (H, sum h_i) product."""
        size = features[0].shape[-2:]
        x = F.conv2d(features[0], weights[0][:, :, None, None], bias)  # (B, C, H, W)
        if len(features) > 1:
            rows, a_h = [], []
            for feature, weight in zip(features[1:], weights[1:], strict=True):
                y = F.conv2d(feature, weight[:, :, None, None])  # (B, C, h_i, w_i)
                rows.append(y @ _bilinear_matrix(y.shape[-1], size[1], y).t())  # (B, C, h_i, W)
                a_h.append(_bilinear_matrix(y.shape[-2], size[0], y))  # (H, h_i)
            x = x + torch.cat(a_h, dim=1) @ torch.cat(rows, dim=2)  # (H, sum h_i) @ (B, C, sum h_i, W)
        if not self._bn_folded():
            x = self.bn(x)
        return self.classifier(self.dropout(F.relu(x)))

    def _forward_folded_tokens(self, features: list[Tensor], weights: list[Tensor], bias: Tensor) -> Tensor:
        """The same computation for ONNX Runtime, on tokens (each level's map is a transposed view of the encoder's
        tokens, so the Transposes cancel). Levels 2-4 are projected by 2-D GEMMs and upsampled by Resize on their
        NHWC maps, which ONNX Runtime runs with its channels-last bilinear kernel (about 1 ms per level at 512x512 on
        one thread, a fifth of its NCHW kernel, and less than banded products with their gathers and the matrices
        they build from the sizes). The level-1 projection is a MatMul, and the sum an Add: a Gemm taking the sum as
        its C input is as fast on one thread, but ONNX Runtime copies C into the output single-threaded, a serial
        full-size pass with more threads. The classifier is one (K, C) @ (C, H*W) product per image, which leaves the
        logits in (B, K, H, W) order without a Transpose; its bias is the last operation (a Reshape that wrote the
        graph's output would copy it)."""
        maps = [f.permute(0, 2, 3, 1) for f in features]  # (B, h_i, w_i, C_i): sizes read here, not from NCHW maps
        b, height, width = maps[0].shape[:3]
        dim = weights[0].shape[0]
        tokens = maps[0].reshape(b, -1, self.proj[0].in_features)  # (B, H*W, C_1)
        up = None
        for i in range(1, len(features)):
            h, w = maps[i].shape[1:3]
            y = maps[i].reshape(-1, self.proj[i].in_features)  # (B*h_i*w_i, C_i)
            y = F.linear(y, weights[i], bias if i == len(features) - 1 else None)  # bias rides on the coarsest
            y = y.view(b, h, w, dim).permute(0, 3, 1, 2)  # (B, C, h_i, w_i), an NCHW view of NHWC memory
            y = F.interpolate(y, size=(height, width), mode="bilinear", align_corners=False)  # ORT: NHWC Resize
            up = y if up is None else up + y  # (B, C, H, W)
        x = torch.matmul(tokens, weights[0].t())  # (B, H*W, C); not a Gemm taking the sum as C (see docstring)
        x = F.relu(x + (bias if up is None else up.permute(0, 2, 3, 1).reshape(b, -1, dim)))
        logits = torch.matmul(self.classifier.weight[:, :, 0, 0], x.transpose(1, 2))  # (B, K, H*W)
        return logits.view(b, -1, height, width) + self.classifier.bias[:, None, None]

    def _bn_folded(self) -> bool:
        """BN is an affine map only when it normalises with running statistics (eval mode, stats tracked)."""
        bn = self.bn
        return not bn.training and bn.running_mean is not None and bn.running_var is not None

    def folded_weights(self, cache: bool = False) -> tuple[list[Tensor], Tensor]:
        """Per level a (C, C_i) weight W_fuse_i @ W_i, and one (C,) bias sum_i W_fuse_i b_i; in eval mode with the
        BatchNorm folded in as well. With `cache` (eager inference only: no gradient has to flow into them) they are
        kept and recomputed whenever a parameter or buffer changed (tensor versions), so they never go stale after
        loading weights or an optimiser step."""
        tensors = [*self.proj.parameters(), self.fuse.weight, *self.bn.parameters(), *self.bn.buffers()]
        cacheable = cache and not any(t.is_inference() for t in tensors)  # those have no version counter
        if cacheable:
            key = (self._bn_folded(), *((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors))
            if self._cache is not None and self._cache[0] == key:
                return self._cache[1], self._cache[2]
        device = self.fuse.weight.device.type
        if torch.amp.is_autocast_available(device):  # compose in full precision even inside an autocast region
            with torch.autocast(device, enabled=False):
                weights, bias = self._compose()
        else:  # e.g. the meta device (shape and FLOP counting)
            weights, bias = self._compose()
        if cacheable:
            self._cache = (key, weights, bias)
        return weights, bias

    def _compose(self) -> tuple[list[Tensor], Tensor]:
        n, dim = len(self.proj), self.fuse.out_channels
        fuse = self.fuse.weight.flatten(1)  # (C, n*C, 1, 1) -> (C, n*C)
        weights, bias = [], None
        for i, proj in enumerate(self.proj):
            block = fuse[:, (n - 1 - i) * dim : (n - i) * dim]  # concat order is c4, c3, c2, c1
            weights.append(block @ proj.weight)  # (C, C_i)
            b = block @ proj.bias  # (C,)
            bias = b if bias is None else bias + b
        if self._bn_folded():
            bn = self.bn
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale
            if bn.bias is not None:
                shift = shift + bn.bias
            weights = [w * scale[:, None] for w in weights]
            bias = bias * scale + shift
        return weights, bias
