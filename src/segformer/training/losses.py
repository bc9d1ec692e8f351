"""Training losses. `segmentation_loss` is the paper's: cross-entropy over labelled pixels at label resolution.

The logits come at 1/4 of the label size, so the paper's loss first upsamples them (bilinear) to the label size: for
ADE20K's 150 classes at 512x512 that is 39M floats per image, written, soft-maxed, kept for the backward pass and
read back several times. When the label size is a whole multiple of the logits' size (every crop divisible by 4),
`upsampled_cross_entropy` computes the same loss and its gradient in one pass over slabs of rows instead: each slab
is upsampled with the same `F.interpolate`, its log-softmax, loss and gradient (softmax minus one-hot) are taken
while it is small, and the gradient is mapped back through the upsampling (its adjoint) into a gradient of the
low-resolution logits, which is all the backward pass needs. Nothing of label size is ever stored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..constants import IGNORE_INDEX

# Floats of label size one slab may hold (its upsampled logits; the softmax and gradient are the same size).
SLAB_ELEMENTS = 1 << 22


def segmentation_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Cross-entropy over labelled pixels, logits upsampled (bilinear) to the label size, as the original.

    A batch without any labelled pixel gives 0 (not NaN), so a crop of pure 'ignore' cannot stop a run. Label sizes
    that are whole multiples of the logits' size take `upsampled_cross_entropy` (the same loss, far less memory).
    """
    if logits.shape[-2:] != target.shape[-2:]:
        if _whole_multiple(logits, target) and not torch.compiler.is_compiling() and not torch.jit.is_tracing():
            return upsampled_cross_entropy(logits, target, ignore_index)
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    count = (target != ignore_index).sum().clamp(min=1)
    return total / count


def upsampled_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """`cross_entropy(interpolate(logits, size=target size, bilinear), target)` averaged over labelled pixels, for a
    label size that is a whole multiple of the logits' size, computed slab by slab (see the module docstring).

    The loss is computed in float32 at least (float64 logits stay float64); its gradient comes back in the logits'
    dtype.
    """
    if not _whole_multiple(logits, target):
        raise ValueError(
            f"label size {tuple(target.shape[-2:])} is not a multiple of logits {tuple(logits.shape[-2:])}"
        )
    return _UpsampledCrossEntropy.apply(logits, target, ignore_index)


def _whole_multiple(logits: Tensor, target: Tensor) -> bool:
    (h, w), (H, W) = logits.shape[-2:], target.shape[-2:]
    return H % h == 0 and W % w == 0 and h <= H and w <= W


class _UpsampledCrossEntropy(torch.autograd.Function):
    """Loss and d loss / d logits in one forward pass; backward scales the stored gradient."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
        total, count, grad = _loss_and_grad(logits, target, ignore_index, want_grad=ctx.needs_input_grad[0])
        count = count.clamp(min=1).to(total.dtype)
        if grad is not None:
            ctx.save_for_backward(grad.div_(count).to(logits.dtype))
        return total / count

    @staticmethod
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor | None, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_loss.to(grad.dtype), None, None


def _loss_and_grad(
    logits: Tensor, target: Tensor, ignore_index: int, want_grad: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(summed loss over labelled pixels, their count, gradient of the sum w.r.t. the logits or None).

    Integer scale s per axis. A slab of logit rows [a, b) upsampled on its own (what `F.interpolate` does with
    `scale_factor=s`, the same source coordinates as the whole map) gives exactly the whole map's rows
    [s*a + s//2, s*b - s//2): only the outermost rows see the slab's clamped border instead of the neighbour row
    (none are lost at the map's own borders). Consecutive slabs therefore overlap by one logit row.
    """
    b, k, h, w = logits.shape
    H, W = target.shape[-2:]
    sh, sw = H // h, W // w
    # Rows per slab: as many as fit SLAB_ELEMENTS floats upsampled, at least 3 (2 border rows + progress).
    rows = max(3, SLAB_ELEMENTS // max(1, k * sh * W))
    dtype = torch.promote_types(logits.dtype, torch.float32)  # float32 at least (bf16/fp16 logits under autocast)
    total = logits.new_zeros((), dtype=dtype)
    count = (target != ignore_index).sum()
    grad = torch.zeros_like(logits, dtype=dtype) if want_grad else None
    for i in range(b):
        done = 0  # label rows of image i finished
        a = 0
        while done < H:
            end = min(h, a + rows)
            slab = logits[i : i + 1, :, a:end].to(dtype)  # (1, K, r, w)
            last = H if end == h else sh * end - sh // 2  # exact rows of this slab: [done, last)
            lo, hi = done - sh * a, last - sh * a  # ... in the slab's own upsampled rows
            loss, slab_grad = _slab(slab, target[i : i + 1, done:last], (sh, sw), (lo, hi), ignore_index, want_grad)
            total += loss
            if grad is not None:
                grad[i : i + 1, :, a:end] += slab_grad
            done = last
            a = end - 1  # the next slab starts one row back: its first rows see this slab's last row
    return total, count, grad


def _slab(
    slab: Tensor, target: Tensor, scale: tuple[int, int], rows: tuple[int, int], ignore_index: int, want_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Summed loss of one slab's exact rows and, when asked, its gradient w.r.t. the slab (softmax - one-hot,
    mapped back through the upsampling by autograd: the adjoint of `F.interpolate`)."""
    # Channels-last (classes innermost): the softmax reduces over contiguous memory, and the CPU kernels of
    # interpolate and of its backward are several times faster in this layout.
    slab = slab.contiguous(memory_format=torch.channels_last)
    with torch.enable_grad():
        leaf = slab.detach().requires_grad_(want_grad)
        full = F.interpolate(leaf, scale_factor=scale, mode="bilinear", align_corners=False)  # (1, K, s*r, W)
    # (1, r, W, K) views of channels-last maps: classes innermost and contiguous, the fastest softmax there is.
    up = full.detach()[:, :, rows[0] : rows[1]].permute(0, 2, 3, 1)  # the exact rows
    valid = (target != ignore_index)[..., None]  # (1, r, W, 1)
    label = torch.where(valid, target[..., None], 0)
    logp = torch.log_softmax(up, dim=-1)
    loss = -torch.where(valid, logp.gather(-1, label), 0.0).sum()
    if not want_grad:
        return loss, None
    grad_full = torch.empty_like(full)  # channels-last like `full`; the border rows are not this slab's: no gradient
    grad_full[:, :, : rows[0]].zero_()
    grad_full[:, :, rows[1] :].zero_()
    prob = torch.exp(logp, out=grad_full[:, :, rows[0] : rows[1]].permute(0, 2, 3, 1))  # softmax over classes
    prob.scatter_add_(-1, label, -valid.to(prob.dtype))  # minus the one-hot of the label
    prob.mul_(valid)  # ignored pixels give no gradient
    (slab_grad,) = torch.autograd.grad(full, leaf, grad_full)
    return loss, slab_grad
