"""Training losses: cross-entropy (class weights, mmseg's `avg_non_ignore`), OHEM cross-entropy, Dice, Focal,
Lovasz-softmax, and weighted sums of them from a spec such as "ce:1.0,dice:0.5".

Shared conventions: logits (N, K, h, w) are upsampled bilinearly (align_corners=False) to the label size (N, H, W)
and computed in float32; pixels labelled `ignore_index` take no part; a batch without any labelled pixel gives 0,
never NaN. Class weights, when given, are one non-negative number per class.

mmseg and segmentation_models_pytorch (smp) define some of these differently; each function says which definition
it follows. The tests check every loss against smp 0.6.0 or against a re-implementation of mmseg's definition.

`segmentation_loss` is the paper's plain cross-entropy (the default `--loss ce`). The logits come at 1/4 of the
label size, so the paper's loss first upsamples them (bilinear) to the label size: for
ADE20K's 150 classes at 512x512 that is 39M floats per image, written, soft-maxed, kept for the backward pass and
read back several times. When the label size is a whole multiple of the logits' size (every crop divisible by 4),
`upsampled_cross_entropy` computes the same loss and its gradient in one pass over slabs of rows instead: each slab
is upsampled with the same `F.interpolate`, its log-softmax, loss and gradient (softmax minus one-hot) are taken
while it is small, and the gradient is mapped back through the upsampling (its adjoint) into a gradient of the
low-resolution logits, which is all the backward pass needs. Nothing of label size is ever stored.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..constants import IGNORE_INDEX
from ..data.base import SampleSource, as_dataset
from ..data.datasets import SegmentationDataset

log = logging.getLogger("segformer")


def _upsampled(logits: Tensor, target: Tensor) -> Tensor:
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return logits.float()


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


# ------------------------------------------------------------------------------------------------ the losses


@dataclass(frozen=True)
class LossOptions:
    """What the losses share: ignore index, class weights, CE averaging, OHEM settings."""

    ignore_index: int = IGNORE_INDEX
    class_weights: tuple[float, ...] | None = None
    avg_non_ignore: bool = True  # mmseg's flag: mean over labelled pixels (True) or over all pixels (False)
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100_000  # per image, as mmseg (the batch keeps min_kept * N)

    def weights(self, num_classes: int, like: Tensor) -> Tensor | None:
        if self.class_weights is None:
            return None
        if len(self.class_weights) != num_classes:
            raise ValueError(f"{len(self.class_weights)} class weights for logits of {num_classes} classes")
        return torch.tensor(self.class_weights, dtype=torch.float32, device=like.device)


def cross_entropy(
    logits: Tensor, target: Tensor, options: LossOptions = LossOptions(), pixel_weight: Tensor | None = None
) -> Tensor:
    """mmseg's CrossEntropyLoss: sum_i w[y_i] * s_i * -log softmax(z_i)[y_i], divided by the number of labelled
    pixels (`avg_non_ignore=True`) or of all pixels (False). With class weights this is *not* torch's weighted
    mean (which divides by sum_i w[y_i]); without them and with avg_non_ignore it is torch's and HF's mean.
    `pixel_weight` (N, H, W) is the OHEM selection s_i (1 elsewhere)."""
    logits = _upsampled(logits, target)
    weight = options.weights(logits.shape[1], logits)
    per_pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=options.ignore_index, reduction="none")
    if pixel_weight is not None:
        per_pixel = per_pixel * pixel_weight
    count = (target != options.ignore_index).sum() if options.avg_non_ignore else target.new_tensor(target.numel())
    return per_pixel.sum() / count.clamp(min=1)


@torch.no_grad()
def ohem_selection(logits: Tensor, target: Tensor, options: LossOptions = LossOptions()) -> Tensor:
    """mmseg's OHEMPixelSampler with a threshold: 1 for the hard pixels, 0 elsewhere (ignored pixels: 0).

    p_i = softmax probability of the true class. With the labelled p sorted ascending, the cut is
    max(thresh, p_sorted[min(min_kept * N, |V| - 1)]), and pixels with p_i strictly below it are kept: at least
    about min_kept * N of the hardest pixels, more when more are below `thresh`. When the batch has fewer
    labelled pixels than that, every labelled pixel is kept except the most confident one(s)."""
    logits = _upsampled(logits, target)
    valid = target != options.ignore_index
    prob = logits.softmax(dim=1).gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
    selected = torch.zeros_like(prob)
    scores = prob[valid]
    if scores.numel() == 0:
        return selected
    kept = options.ohem_min_kept * target.shape[0]
    cut = torch.sort(scores).values[min(kept, scores.numel() - 1)]
    cut = torch.clamp(cut, min=options.ohem_thresh)
    selected[valid] = (scores < cut).float()
    return selected


def ohem_cross_entropy(logits: Tensor, target: Tensor, options: LossOptions = LossOptions()) -> Tensor:
    """Cross-entropy over the OHEM-selected pixels; the denominator stays as `cross_entropy`'s (all labelled
    pixels, or all pixels), as mmseg, not the number of selected pixels."""
    logits = _upsampled(logits, target)
    return cross_entropy(logits, target, options, pixel_weight=ohem_selection(logits, target, options))


def _one_hot(target: Tensor, num_classes: int, valid: Tensor) -> Tensor:
    """(N, K, H, W) float one-hot of the labels, all zero at ignored pixels."""
    hot = F.one_hot(torch.where(valid, target, 0), num_classes).permute(0, 3, 1, 2).float()
    return hot * valid.unsqueeze(1)


def _class_mean(per_class: Tensor, weight: Tensor | None) -> Tensor:
    if weight is None:
        return per_class.mean()
    return (per_class * weight).sum() / weight.sum().clamp(min=torch.finfo(torch.float32).tiny)


def dice_loss(logits: Tensor, target: Tensor, options: LossOptions = LossOptions(), eps: float = 1e-7) -> Tensor:
    """smp's multiclass DiceLoss (smooth 0; v0.3.4 and v0.4+ agree there): softmax probabilities p and one-hot
    labels t with ignored pixels removed from both; per class c over batch and pixels, dice_c = 2 sum(p t) /
    max(sum p + sum t, eps); loss_c = 1 - dice_c, set to 0 for classes absent from the labels, which still count
    in the mean over classes (class weights: sum(w_c loss_c) / sum(w_c), as smp 0.6).
    Not mmseg's: mmseg 1.x uses a sigmoid per image without masking ignored pixels, 0.x smooth 1 and squares."""
    logits = _upsampled(logits, target)
    valid = target != options.ignore_index
    prob = logits.softmax(dim=1) * valid.unsqueeze(1)
    hot = _one_hot(target, logits.shape[1], valid)
    dims = (0, 2, 3)
    intersection = (prob * hot).sum(dims)
    cardinality = prob.sum(dims) + hot.sum(dims)
    per_class = (1.0 - 2.0 * intersection / cardinality.clamp(min=eps)) * (hot.sum(dims) > 0)
    return _class_mean(per_class, options.weights(logits.shape[1], logits))


def focal_loss(logits: Tensor, target: Tensor, options: LossOptions = LossOptions(), gamma: float = 2.0) -> Tensor:
    """smp 0.6's multiclass FocalLoss (alpha None, gamma 2): one-vs-rest sigmoid focal terms
    (1 - p_t)^gamma * BCE(z_ic, t_ic), averaged over the labelled pixels for each class, then averaged over the
    classes (class weights: sum(w_c loss_c) / sum(w_c)). smp 0.5.0 summed over the classes instead; mmseg averages
    over all N*H*W*K entries, ignored pixels included, with alpha 0.5."""
    logits = _upsampled(logits, target)
    valid = target != options.ignore_index
    count = valid.sum()
    if count == 0:
        return logits.sum() * 0.0
    hot = _one_hot(target, logits.shape[1], valid)
    bce = F.binary_cross_entropy_with_logits(logits, hot, reduction="none")
    focal = (1.0 - torch.exp(-bce)).pow(gamma) * bce
    per_class = (focal * valid.unsqueeze(1)).sum(dim=(0, 2, 3)) / count
    return _class_mean(per_class, options.weights(logits.shape[1], logits))


def _lovasz_gradient(fg_sorted: Tensor) -> Tensor:
    """The Lovasz extension's gradient of the Jaccard loss at errors sorted in decreasing order (Berman et al.,
    CVPR 2018, eq. 9): J_k = 1 - (G - cumsum fg)_k / (G + cumsum(1 - fg))_k with G = sum fg; grad = diff(J)."""
    total = fg_sorted.sum()
    intersection = total - fg_sorted.cumsum(0)
    union = total + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax(logits: Tensor, target: Tensor, options: LossOptions = LossOptions()) -> Tensor:
    """Lovasz-softmax (Berman et al. 2018; mmseg and smp agree: classes='present', per_image=False): over the
    labelled pixels of the batch, for each class present in the labels, <sorted |fg - p_c|, Lovasz gradient>;
    the mean over those classes. Class weights follow mmseg: loss_c * w_c, then the plain mean."""
    logits = _upsampled(logits, target)
    num_classes = logits.shape[1]
    valid = target != options.ignore_index
    prob = logits.softmax(dim=1).permute(0, 2, 3, 1)[valid]  # (|V|, K)
    labels = target[valid]
    weight = options.weights(num_classes, logits)
    losses = []
    for c in labels.unique().tolist():
        fg = (labels == c).float()
        errors, order = (fg - prob[:, c]).abs().sort(descending=True)
        loss = torch.dot(errors, _lovasz_gradient(fg[order]))
        losses.append(loss * weight[c] if weight is not None else loss)
    if not losses:
        return logits.sum() * 0.0
    return torch.stack(losses).mean()


# One table: the names `--loss` accepts.
LOSSES: dict[str, Callable[[Tensor, Tensor, LossOptions], Tensor]] = {
    "ce": cross_entropy,
    "ohem": ohem_cross_entropy,
    "dice": dice_loss,
    "focal": focal_loss,
    "lovasz": lovasz_softmax,
}

LossSpec = tuple[tuple[str, float], ...]


def parse_loss_spec(text: str) -> LossSpec:
    """'ce:1.0,dice:0.5' -> (('ce', 1.0), ('dice', 0.5)); a bare name has weight 1."""
    terms: list[tuple[str, float]] = []
    parts = [p.strip() for p in str(text).split(",")]
    if not text or not str(text).strip() or any(not p for p in parts):
        raise ValueError(f"loss {text!r} is malformed: expected NAME[:WEIGHT] terms separated by commas")
    for part in parts:
        name, sep, weight_text = (s.strip() for s in part.partition(":"))
        if name not in LOSSES:
            raise ValueError(f"loss {text!r}: unknown loss {name!r}; choose from {', '.join(LOSSES)}")
        try:
            weight = float(weight_text) if sep else 1.0
        except ValueError:
            raise ValueError(f"loss {text!r}: weight {weight_text!r} of {name!r} is not a number") from None
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"loss {text!r}: weight {weight_text!r} of {name!r} must be a positive number")
        if any(name == n for n, _ in terms):
            raise ValueError(f"loss {text!r}: {name!r} appears twice")
        terms.append((name, weight))
    return tuple(terms)


def format_loss_spec(terms: LossSpec) -> str:
    """The canonical text of a spec: 'ce:1.0,dice:0.5'."""
    return ",".join(f"{name}:{float(weight)!r}" for name, weight in terms)


class WeightedLoss:
    """sum_k weight_k * loss_k(logits, target): the logits are upsampled once and shared by the terms."""

    def __init__(self, terms: LossSpec, options: LossOptions = LossOptions()) -> None:
        self.terms = tuple(terms)
        self.options = options

    def __repr__(self) -> str:
        return f"WeightedLoss({format_loss_spec(self.terms)!r}, {self.options})"

    def __call__(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.terms == (("ce", 1.0),) and self.options.class_weights is None and self.options.avg_non_ignore:
            return segmentation_loss(logits, target, self.options.ignore_index)  # the same value, never label-sized
        logits = _upsampled(logits, target)
        total = None
        for name, weight in self.terms:
            value = weight * LOSSES[name](logits, target, self.options)
            total = value if total is None else total + value
        assert total is not None
        return total


def build_loss(spec: str | LossSpec = "ce", options: LossOptions = LossOptions()) -> WeightedLoss:
    """The training loss for a spec ('ce', 'ce:1.0,dice:0.5', or parsed terms) and shared options."""
    terms = parse_loss_spec(spec) if isinstance(spec, str) else tuple(spec)
    return WeightedLoss(terms, options)


# --------------------------------------------------------------------------------------------- class weights


def parse_class_weights(text: str) -> str | tuple[float, ...] | Path:
    """`--class-weights`: 'auto', numbers 'w1,w2,...' (checked: finite, >= 0, one > 0), or else a file path."""
    text = str(text).strip()
    if text == "auto":
        return "auto"
    parts = [p.strip() for p in text.replace(";", ",").split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        if len(parts) > 1 or not text:
            raise ValueError(
                f"class_weights {text!r}: expected 'auto', numbers like 1.0,2.5,0.8, or a file of numbers"
            ) from None
        return Path(text)
    return check_class_weights(values, f"class_weights {text!r}")


def check_class_weights(values: Sequence[float], where: str, num_classes: int | None = None) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if not values:
        raise ValueError(f"{where}: no weights")
    bad = next((v for v in values if not math.isfinite(v) or v < 0), None)
    if bad is not None:
        raise ValueError(f"{where}: weight {bad} is negative or not finite; class weights must be >= 0")
    if not any(values):
        raise ValueError(f"{where}: every weight is 0; at least one class must count")
    if num_classes is not None and len(values) != num_classes:
        raise ValueError(
            f"{where}: {len(values)} weights but the dataset has {num_classes} classes; give one per class"
        )
    return values


def read_class_weights(path: str | Path) -> tuple[float, ...]:
    """Weights from a file: a JSON list, or numbers separated by commas, spaces or lines ('#' starts a comment)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class weights file {path}: no such file (or pass 'auto' or numbers like 1,2.5,0.8)")
    text = path.read_text()
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError:
        lines = [line.split("#", 1)[0] for line in text.splitlines()]
        data = " ".join(lines).replace(",", " ").split()
    if not isinstance(data, list):
        raise ValueError(f"class weights file {path}: expected a list of numbers")
    try:
        values = [float(v) for v in data]
    except (TypeError, ValueError):
        raise ValueError(f"class weights file {path}: holds something that is not a number") from None
    return check_class_weights(values, f"class weights file {path}")


def count_class_pixels(dataset: SampleSource, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Labelled pixels per class 0..K-1 over the training masks. Datasets read from files or Hugging Face rows
    (`data.SegmentationDataset`) are counted by `data.check.class_pixel_counts`, which reads the masks alone, in
    parallel; a dataset that counts itself (`Dataset.class_pixel_counts`: rasters, read whole) gives its counts;
    any other dataset (`len`, `load(i)` -> (image, mask, name)) through `load`."""
    own = as_dataset(dataset).class_pixel_counts()
    if own is not None:
        return np.asarray(own, np.int64)[:num_classes]
    if isinstance(dataset, SegmentationDataset):
        from ..data.check import class_pixel_counts

        return np.asarray(class_pixel_counts(dataset, progress=False), np.int64)[:num_classes]
    counts = np.zeros(num_classes, np.int64)
    for i in range(len(dataset)):
        mask = np.asarray(dataset.load(i)[1]).ravel()
        mask = mask[mask != ignore_index]
        counts += np.bincount(mask, minlength=num_classes)[:num_classes]
    return counts


def auto_class_weights(dataset: SampleSource, ignore_index: int = IGNORE_INDEX) -> list[float]:
    """`--class-weights auto`: ENet's weighting (Paszke et al. 2016, arXiv:1606.02147) of the training set's label
    pixel counts n_c, `data.check.class_weights(counts, "enet")`: w_c = 1 / ln(1.02 + n_c / sum n), in
    [1/ln 2.02, 1/ln 1.02] = [1.42, 50.5]; a class without pixels gets 0."""
    from ..data.check import class_weights

    num_classes = as_dataset(dataset).num_classes
    if num_classes is None:
        raise ValueError("class weights 'auto': the dataset has neither num_classes nor class_names")
    counts = count_class_pixels(dataset, num_classes, ignore_index)
    if counts.sum() <= 0:
        raise ValueError("class weights 'auto': the training masks hold no labelled pixel")
    return [float(w) for w in class_weights(counts, "enet")]


def resolve_class_weights(
    value: str | None, dataset: SampleSource, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[float, ...] | None:
    """The concrete weights of a `class_weights` setting ('auto', numbers, a file, or None) for a dataset."""
    if value is None:
        return None
    parsed = parse_class_weights(value)
    if parsed == "auto":
        values: Sequence[float] = auto_class_weights(dataset, ignore_index)
        where = "class weights 'auto'"
    elif isinstance(parsed, Path):
        values, where = read_class_weights(parsed), f"class weights file {parsed}"
    else:
        values, where = parsed, f"class_weights {value!r}"
    return check_class_weights(values, where, num_classes)
