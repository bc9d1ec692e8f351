"""Inference the way the paper's numbers were measured (mmseg test modes), at the original image size.

- whole: resize the image (keep aspect) to the test scale, e.g. ADE20K (2048, 512) = long side <= 2048 and short
  side <= 512 (mmcv `rescale_size`: factor min(long/max(h, w), short/min(h, w)), sizes rounded half up), optionally
  both sides rounded up to a multiple of `size_divisor` (the official ADE20K `AlignedResize`, size_divisor 32);
  with `scale=None` the image runs at its own size. Logits are resized bilinearly (align_corners=False) to the
  network input size, then to the original size, as mmseg's `encode_decode` + rescale.
- slide: the image is padded (bottom/right, with the mean colour) to at least the crop, cut into crop-sized
  windows every `stride` pixels (the last window in each direction ends at the border), each window's logits are
  upsampled to the crop size and added, the sum is divided by how many windows covered each pixel.
- multi-scale + flip (TTA): the above at each ratio of `scales` (times the test scale, or the image size when
  `scale=None`) and, with `flip`, on the horizontally flipped image too; softmax probabilities are averaged.

Image resizing uses torch bilinear interpolation (align_corners=False, no antialiasing) on the normalised float
image; mmseg uses cv2 INTER_LINEAR on uint8, which samples the same way but rounds to integers, and its
AlignedResize resizes twice (to the scale, then to the aligned size) where this resizes once, straight to the
aligned size; results can differ in the last digits of mIoU.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from .config import SegFormerConfig, TestProtocol, channel_stats
from .constants import MEAN, STD
from .data.catalog import protocol_for_classes
from .imageio import (
    ChannelMismatchError,
    read_image,
    to_rgb,
)
from .runtime import autocast, check_amp

ImageLike = str | Path | Image.Image | np.ndarray | Tensor


@dataclass(frozen=True)
class InferenceOptions:
    """How to run the model on one image: mode "whole" or "slide", test scale, windows and TTA.

    The one options object of `Segmenter`, `predict_logits`, `evaluate` and the eval/predict CLI: each takes
    `options` and/or keyword overrides of these fields (`InferenceOptions.build`).
    """

    mode: str = "whole"
    scale: tuple[int, int] | None = None  # mmseg img_scale (long, short); None = the image's own size
    crop: tuple[int, int] | None = None  # slide window (H, W)
    stride: tuple[int, int] | None = None  # slide step (H, W)
    scales: tuple[float, ...] | None = None  # TTA ratios; None = (1.0,)
    flip: bool = False  # also run on the horizontally flipped image and average
    size_divisor: int | None = None  # round resized sides up to a multiple (official ADE20K: 32)
    batch_size: int = 8  # images (whole) or windows (slide) per forward pass
    amp: str = "none"  # "bf16" / "fp16": run the model under autocast (logits are averaged in float32)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _pair(self.scale, "scale"))
        object.__setattr__(self, "crop", _pair(self.crop, "crop"))
        object.__setattr__(self, "stride", _pair(self.stride, "stride"))
        if self.scales is not None:
            object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"mode {self.mode!r} is not one of 'whole', 'slide'")
        if self.mode == "slide":
            if self.crop is None:
                raise ValueError("slide mode needs a crop size (e.g. crop=(1024, 1024), stride=(768, 768))")
            stride = self.stride or self.crop
            if min(self.crop) < 1 or min(stride) < 1 or stride[0] > self.crop[0] or stride[1] > self.crop[1]:
                raise ValueError(
                    f"slide stride {stride} must be between 1 and the crop {self.crop}, or windows leave gaps"
                )
            object.__setattr__(self, "stride", stride)
        if self.scales is not None and (not self.scales or min(self.scales) <= 0):
            raise ValueError(f"TTA scales {self.scales} must be positive ratios such as 0.75 1.0 1.25")
        if self.size_divisor is not None and self.size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {self.size_divisor}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        check_amp(self.amp)

    @property
    def passes(self) -> int:
        """Forward passes averaged per image (1 without TTA)."""
        return len(self.scales or (1.0,)) * (2 if self.flip else 1)

    @classmethod
    def for_dataset(cls, info: Any, tta: bool = False, **overrides: Any) -> InferenceOptions:
        """The paper's test settings of a `segformer.data.DatasetInfo` (scale, mode, window; TTA ratios + flip).
        The official ADE20K pipeline is AlignedResize (sides rounded up to multiples of 32), worth ~0.5-1 mIoU."""
        if tta:
            overrides = {"scales": tuple(info.tta_scales), "flip": True, **overrides}
        return cls.from_protocol(info.test_protocol, **overrides)

    @classmethod
    def from_protocol(cls, protocol: TestProtocol | None, **overrides: Any) -> InferenceOptions:
        """Options running a stored `config.TestProtocol` (None: each image at its own size); None overrides
        are left out, so flags that were not given keep the protocol's values."""
        values = dataclasses.asdict(protocol) if protocol is not None else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def for_model(cls, config: SegFormerConfig, **overrides: Any) -> InferenceOptions:
        """The test protocol saved with the model (by `segformer train`), else the paper's when its classes are
        those of a standard dataset (official and hub checkpoints), else each image at its own size."""
        return cls.from_protocol(config.test_protocol or protocol_for_classes(config.class_names), **overrides)

    def replace(self, **changes: Any) -> InferenceOptions:
        return replace(self, **changes)

    @classmethod
    def build(cls, options: InferenceOptions | None = None, **overrides: Any) -> InferenceOptions:
        """`options` (default: whole image at its own size) with the given fields replaced (validated again)."""
        options = options or cls()
        return options.replace(**overrides) if overrides else options


def _pair(value: Any, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {value}")
    return value  # type: ignore[return-value]


def resized_size(
    height: int, width: int, scale: tuple[int, int] | None, ratio: float = 1.0, size_divisor: int | None = None
) -> tuple[int, int]:
    """The (H, W) the network sees: keep-ratio rescale to `scale` x `ratio` (mmcv rules), then aligned."""
    if scale is None:
        h, w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    else:
        long_side, short_side = int(max(scale) * ratio), int(min(scale) * ratio)
        factor = min(long_side / max(height, width), short_side / min(height, width))
        h, w = int(height * factor + 0.5), int(width * factor + 0.5)
    if size_divisor:
        h, w = math.ceil(h / size_divisor) * size_divisor, math.ceil(w / size_divisor) * size_divisor
    return max(h, 1), max(w, 1)


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """RGB uint8 (H, W, 3) from a path, PIL image or array (grayscale/RGBA/16-bit converted; paths EXIF-rotated)."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    return to_rgb(image)


def to_model_array(image: ImageLike, channels: int = 3) -> np.ndarray:
    """What a `channels`-input model reads: RGB uint8 (H, W, 3) as `to_rgb_array` for 3 channels; otherwise the
    (H, W, channels) bands of a multi-band TIFF / .npy path or of an array (checked)."""
    if channels == 3 and not (isinstance(image, (str, Path)) and Path(image).suffix.lower() == ".npy"):
        return to_rgb_array(image)
    if isinstance(image, (str, Path)):
        return read_image(image, channels)
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    if arr.ndim != 3 or arr.shape[2] != channels:
        raise ChannelMismatchError(f"an array of shape {arr.shape} is not an (H, W, {channels}) image for this model")
    return arr


def stack_images(images: Sequence[np.ndarray]) -> Tensor:
    """(B, H, W, C) tensor of same-sized images: uint8 stays uint8 (cheap to move), other types become float32."""
    batch = np.stack(images)
    return torch.from_numpy(batch if batch.dtype == np.uint8 else batch.astype(np.float32))


def normalize_batch(images: Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> Tensor:
    """(B, H, W, C) raw pixels on any device -> normalised float (B, C, H, W); normalising on the GPU saves copies.
    Default: uint8 RGB with the ImageNet mean/std; pass a model's `channel_stats(model.config)` otherwise."""
    x = images.permute(0, 3, 1, 2).float()  # (B, H, W, C) -> (B, C, H, W)
    if x.data_ptr() == images.data_ptr():
        x = x.clone()  # never normalise the caller's float pixels in place
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.sub_(mean_t).div_(std_t)  # in place: one full-size float tensor (145 MB for 12 MP), not three


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _whole(model: Callable[[Tensor], Tensor], x: Tensor, batch_size: int, resize: bool = True) -> Tensor:
    """Logits (B, K, h, w) at the size of the normalised input x (B, C, h, w), or with `resize=False` the model's
    own (B, K, h/4, w/4)."""
    outs = [model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)]
    return torch.cat([_resize(out, x.shape[-2:]) if resize else out for out in outs])


def slide_windows(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of every window over an image at least as large as the crop (mmseg grid rules)."""
    (ch, cw), (sh, sw) = crop, stride
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    out = []
    for i in range(rows):
        for j in range(cols):
            y2, x2 = min(i * sh + ch, height), min(j * sw + cw, width)
            out.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return out


def _slide(
    model: Callable[[Tensor], Tensor], x: Tensor, crop: tuple[int, int], stride: tuple[int, int], batch_size: int
) -> Tensor:
    """Logits (B, K, h, w) at the size of x from overlapping crop-sized windows, averaged by coverage."""
    b, _, h, w = x.shape
    pad_h, pad_w = max(crop[0] - h, 0), max(crop[1] - w, 0)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))  # zeros = the mean colour after normalisation
    hp, wp = x.shape[-2:]
    windows = slide_windows(hp, wp, crop, stride)
    total: Tensor | None = None
    count = torch.zeros(1, 1, hp, wp, device=x.device)
    per_pass = max(1, batch_size // b)
    for start in range(0, len(windows), per_pass):
        chunk = windows[start : start + per_pass]
        batch = torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])  # (len(chunk) * B, C, ch, cw)
        logits = _resize(model(batch).float(), crop)
        if total is None:
            total = x.new_zeros(b, logits.shape[1], hp, wp, dtype=torch.float32)
        for k, (y1, y2, x1, x2) in enumerate(chunk):
            total[:, :, y1:y2, x1:x2] += logits[k * b : (k + 1) * b]
            count[:, :, y1:y2, x1:x2] += 1
    assert total is not None
    return (total / count)[:, :, :h, :w]


def _passes(
    model: nn.Module, x: Tensor, options: InferenceOptions, resize: bool = True
) -> Iterator[tuple[Tensor, tuple[int, int]]]:
    """Per TTA pass, the logits (B, K, h', w') at the size (h', w') that pass resized x to (flipped back when
    flipped), with that size; with `resize=False`, whole mode gives the model's own (B, K, h'/4, w'/4) instead."""
    h, w = x.shape[-2:]

    def forward(batch: Tensor) -> Tensor:
        with autocast(batch.device, options.amp):
            return model(batch)

    for ratio in options.scales or (1.0,):
        xs = _resize(x, resized_size(h, w, options.scale, ratio, options.size_divisor))
        for flip in (False, True) if options.flip else (False,):
            xi = xs.flip(-1) if flip else xs
            if options.mode == "slide":
                logits = _slide(forward, xi, options.crop, options.stride, options.batch_size)  # type: ignore[arg-type]
            else:
                logits = _whole(forward, xi, options.batch_size, resize=resize or flip)
            yield logits.flip(-1) if flip else logits, tuple(xs.shape[-2:])


def predict_batch(model: nn.Module, x: Tensor, options: InferenceOptions, softmax: bool = True) -> Tensor:
    """(B, K, H, W) at the size of the normalised batch x (B, C, H, W): softmax probabilities (averaged over
    the TTA passes), or, with `softmax=False` and a single pass, the resized logits (same argmax, cheaper).
    The caller puts the model in eval mode (dropout and BatchNorm statistics)."""
    total: Tensor | None = None
    with torch.inference_mode():
        for logits, _ in _passes(model, x, options):
            out = _resize(logits, x.shape[-2:])
            if softmax or options.passes > 1:
                out = out.softmax(dim=1)
            total = out if total is None else total + out
    assert total is not None
    return total / options.passes if options.passes > 1 else total


def predict_labels(model: nn.Module, x: Tensor, options: InferenceOptions) -> Tensor:
    """(B, H, W) int64 class ids at the size of x: the argmax of `predict_batch`, computed without the
    full-size (B, K, H, W) scores when there is one pass (a 12 MP photo with 150 classes would need 7 GB), and
    in whole mode without the (B, K, h', w') scores at the model input size either (both resizes in one step)."""
    if options.passes > 1:
        return predict_batch(model, x, options, softmax=True).argmax(dim=1)
    with torch.inference_mode():
        ((logits, size),) = _passes(model, x, options, resize=False)
        return _argmax_resized(logits, x.shape[-2:], via=size)


BAND_BYTES = 32 << 20  # float32 scores held at once while resizing logits to the output size
DENSE_UPTO = 4  # output pixels per source pixel up to which all classes are resized (evaluation sizes)
# Output pixels per input-size pixel up to which both resizes are done in one step. Beyond, the first resize (small
# next to the output) is done in full: cells taken at the input size span a quarter of a source pixel each way, so
# far fewer of them have several possible winners (12 MP from noise-like logits, 1 thread: 1.2 s instead of 11.4 s).
ONE_STEP_UPTO = 4
TIE_TOLERANCE = 1e-5  # relative to max |logit|: far above float32 rounding, so no possible winner is pruned


def _argmax_resized(
    logits: Tensor, size: tuple[int, int], band_bytes: int = BAND_BYTES, via: tuple[int, int] | None = None
) -> Tensor:
    """argmax over K of `logits` (B, K, h, w) resized bilinearly (align_corners=False) to `size` (with `via`: first
    to `via`, then to `size`, as mmseg resizes the model's logits to the input size and then to the image's), without
    the (B, K, H, W) scores: memory ~ `band_bytes`, time ~ the output pixels where more than one class can win.

    A resized score is a convex blend of the few source pixels under it (its "cell": 2x2 for one resize, at most 3x3
    for two, `_Taps`), so only classes whose cell maximum reaches the best cell minimum can win inside a cell
    (`_cell_candidates`). A cell with one such class gives it to all its output pixels; in the others each pixel
    blends the candidates with PyTorch's source rows/columns and weights (two resizes: their products). The scores
    equal F.interpolate's up to float rounding (~1 ulp), so the labels are its argmax wherever the top two classes
    differ by more than that; exact ties go to the lower class id, as torch.argmax. (Bit-exact agreement is not
    possible: F.interpolate's own last bit depends on how many channels one call resizes.) Up to `DENSE_UPTO`
    output pixels per source pixel (evaluation at the label size), all classes are resized instead, a band's worth
    of classes at a time (`_argmax_dense`); two resizes at `via` are cheaper that way too, as then nothing is big.
    Beyond `ONE_STEP_UPTO` output pixels per `via` pixel (big photos), the first resize is done in full.
    """
    logits = logits.float()
    b, k, h, w = logits.shape
    if via is not None and tuple(via) in ((h, w), tuple(size)):
        via = None  # one resize: the logits are at the input size already, or the input size is the output's
    if via is not None and size[0] * size[1] > ONE_STEP_UPTO * via[0] * via[1]:
        logits, via = _resize(logits, via), None  # a big photo: first resize in full, cells at the input size
        b, k, h, w = logits.shape
    if tuple(logits.shape[-2:]) == tuple(size) and via is None:
        return logits.argmax(dim=1)
    if size[0] * size[1] <= DENSE_UPTO * h * w:  # little upsampling: resizing every class is cheaper than pruning
        logits = logits if via is None else _resize(logits, via)
        return _argmax_dense(logits, size, max(1, band_bytes // (4 * b * size[0] * size[1])))
    rows = _Taps.of(h, int(size[0]), via and via[0], logits.device)
    cols = _Taps.of(w, int(size[1]), via and via[1], logits.device)
    tol = TIE_TOLERANCE * float(logits.abs().amax()) if logits.numel() else 0.0
    labels = torch.empty((b, int(size[0]), int(size[1])), dtype=torch.int64, device=logits.device)
    step = max(1, band_bytes // (b * k * w * 4 * 8))  # ~8 band-sized temporaries per cell band
    for r0 in range(0, h, step):
        r1 = min(r0 + step, h)
        first, count, present = _cell_candidates(logits, r0, r1, tol, rows.count, cols.count)  # (B, n, w) x2, (K',)
        y0, y1 = int(rows.first[r0]), int(rows.end[r1 - 1])  # the output rows inside these cells
        labels[:, y0:y1] = first[..., cols.base].index_select(1, rows.base[y0:y1] - r0)  # (B, R, W)
        covers = (rows.end > rows.first)[r0:r1, None] & (cols.end > cols.first)[None, :]  # cells with output pixels
        unsettled = torch.nonzero((count > 1) & covers)  # (u, 3): batch, cell row - r0, cell column
        taps = rows.count * cols.count
        per = max(1, band_bytes // (4 * taps * (k + 4 * rows.span * cols.span)))  # cells settled at once
        for start in range(0, len(unsettled), per):
            cells = unsettled[start : start + per]
            _settle(labels, logits, present, cells[:, 0], cells[:, 1] + r0, cells[:, 2], rows, cols, tol)
    return labels


def _argmax_dense(logits: Tensor, size: tuple[int, int], chunk: int) -> Tensor:
    """argmax over K of `logits` resized to `size` by F.interpolate, `chunk` classes at a time (a running maximum;
    ties keep the lower class id)."""
    best = labels = None
    for start in range(0, logits.shape[1], chunk):
        value, index = _resize(logits[:, start : start + chunk], size).max(dim=1)  # (B, H, W)
        if best is None:
            best, labels = value, index
        else:
            better = value > best
            best = torch.where(better, value, best)
            labels = torch.where(better, index + start, labels)
    assert labels is not None
    return labels


def _window(x: Tensor, dim: int, start: int, stop: int, count: int, reduce: Callable[..., Tensor]) -> Tensor:
    """`reduce` (torch.maximum / minimum) over indices i .. i + count - 1 of `dim` (clamped at the border, where
    the shorter window already holds the last index), for i in start..stop."""
    out = x.narrow(dim, start, stop - start)
    for t in range(1, count):
        near = min(stop + t, x.shape[dim]) - start - t  # how many i have an i + t
        if near <= 0:
            break
        out = out.clone() if t == 1 else out  # a view of x until now
        head = out.narrow(dim, 0, near)
        reduce(head, x.narrow(dim, start + t, near), out=head)
    return out


def _cell_candidates(logits: Tensor, r0: int, r1: int, tol: float, t_rows: int, t_cols: int) -> tuple[Tensor, ...]:
    """For the cells of source rows r0..r1 (pixel (i, j) with the `t_rows` - 1 pixels below and `t_cols` - 1 to the
    right, clamped at the border): the class with the highest cell minimum (the winner where it is the only
    candidate) and the number of candidates, classes whose cell maximum reaches that minimum (B, n, w); and the ids
    of the classes that are candidates in some cell with several (ascending)."""
    w = logits.shape[3]
    high = _window(_window(logits, 2, r0, r1, t_rows, torch.maximum), 3, 0, w, t_cols, torch.maximum)  # (B, K, n, w)
    low = _window(_window(logits, 2, r0, r1, t_rows, torch.minimum), 3, 0, w, t_cols, torch.minimum)
    best, first = low.max(dim=1)  # (B, n, w)
    candidate = high >= (best - tol).unsqueeze(1)  # (B, K, n, w)
    count = candidate.sum(dim=1)
    present = torch.nonzero((candidate & (count > 1).unsqueeze(1)).any(dim=0).flatten(1).any(dim=1)).flatten()
    return first, count, present


def _settle(
    labels: Tensor,
    logits: Tensor,
    present: Tensor,
    bi: Tensor,
    ci: Tensor,
    cj: Tensor,
    rows: _Taps,
    cols: _Taps,
    tol: float,
) -> None:
    """Write the labels of every output pixel of the cells (bi, ci, cj) that have several candidates: each
    candidate's score blended as F.interpolate does (along the width, then the height), the best kept (the
    lowest id on ties); `present`: the classes that can be candidates there."""
    h, w = logits.shape[2:]
    ii = [(ci + t).clamp_max(h - 1)[:, None] for t in range(rows.count)]
    jj = [(cj + t).clamp_max(w - 1)[:, None] for t in range(cols.count)]
    grid = [[logits[bi[:, None], present, i, j] for j in jj] for i in ii]  # rows x cols of (u, K')
    flat = [v for line in grid for v in line]
    high, low = flat[0], flat[0]
    for v in flat[1:]:
        high, low = torch.maximum(high, v), torch.minimum(low, v)
    candidate = high >= low.amax(dim=1, keepdim=True) - tol  # (u, K')
    rank = candidate * torch.arange(candidate.shape[1], 0, -1, device=logits.device)  # a lower id ranks higher
    cand = rank.topk(int(candidate.sum(dim=1).max()), dim=1).indices  # (u, M): candidates by id, then others
    ys, xs = rows.span_of(ci), cols.span_of(cj)  # (u, P), (u, Q)
    across, down = cols.weights[xs].unsqueeze(1), rows.weights[ys].unsqueeze(1)  # (u, 1, Q, Tc), (u, 1, P, Tr)
    score = None
    for t, line in enumerate(grid):
        row = None  # this source row blended along the width: (u, M, Q)
        for s, v in enumerate(line):
            term = v.gather(1, cand).unsqueeze(-1) * across[..., s]
            row = term if row is None else row.add_(term)
        assert row is not None
        term = row.unsqueeze(2) * down[..., t, None]  # (u, M, P, Q)
        score = term if score is None else score.add_(term)
    assert score is not None
    cand = present[cand]  # class ids
    winner = score.max(dim=1).indices  # the first maximum, as argmax, which is 5x slower over dim 1 here
    best = cand.gather(1, winner.flatten(1)).view(winner.shape)  # (u, P, Q)
    labels[bi[:, None, None], ys[:, :, None], xs[:, None, :]] = best


def _bilinear(in_size: int, out_size: int) -> tuple[Tensor, Tensor]:
    """Per output index of a bilinear resize (align_corners=False) from `in_size` to `out_size`: the lower source
    index and the float32 weight of the next one, as PyTorch computes them: scale = float32(in) / out, source
    position scale * (y + 0.5) - 0.5 clamped at 0, lower index floor(position) (at most in - 1), the next one
    clamped at the border, weights 1 - frac and frac."""
    if in_size == out_size:
        return torch.arange(out_size), torch.zeros(out_size)
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    y = torch.arange(out_size, dtype=torch.float64)
    pos = (scale.double() * (y + 0.5) - 0.5).float().clamp_min(0)
    lower = pos.floor().long().clamp_max(in_size - 1)
    return lower, (pos - lower.float()).clamp(0, 1)


@dataclass(frozen=True)
class _Taps:
    """Along one axis, per output index: the first source index `base` and the float32 weights (out, count) of
    source indices base, base + 1, ... (clamped at the border); per source index i, the `first` and `end` output
    index whose base is i (bases never decrease), and the most output indices one source index is base of."""

    base: Tensor
    weights: Tensor
    first: Tensor
    end: Tensor

    @property
    def count(self) -> int:
        return self.weights.shape[1]

    @property
    def span(self) -> int:
        return max(1, int((self.end - self.first).max()))

    @classmethod
    def of(cls, in_size: int, out_size: int, via: int | None, device: torch.device) -> _Taps:
        """One resize in_size -> out_size, or two (in_size -> via -> out_size): the second's two rows, each a
        blend of two of the first's, make up to 3 consecutive source rows when the first upsamples, with the
        products of the two weights (in float64, then float32)."""
        lower, frac = _bilinear(in_size, out_size if via is None else via)
        if via is None:
            base, weights = lower, torch.stack([1 - frac, frac], dim=1)  # (out, 2)
        else:
            mid, frac2 = _bilinear(via, out_size)
            base = lower[mid]
            pairs = ((mid, 1 - frac2.double()), ((mid + 1).clamp_max(via - 1), frac2.double()))
            count = 2 + max(int((lower[m] - base).max()) for m, _ in pairs)
            weights = torch.zeros(out_size, count, dtype=torch.float64)
            for m, share in pairs:
                offset = (lower[m] - base)[:, None]  # (out, 1): where the first resize's lower row sits
                weights.scatter_add_(1, offset, (share * (1 - frac[m].double()))[:, None])
                weights.scatter_add_(1, offset + 1, (share * frac[m].double())[:, None])
            weights = weights.float()
        source = torch.arange(in_size)
        first, end = torch.searchsorted(base, source), torch.searchsorted(base, source, right=True)
        return cls(*(t.to(device) for t in (base, weights, first, end)))

    def span_of(self, cell: Tensor) -> Tensor:
        """Output indices (u, P) whose base is each source index in `cell`, padded by repeating the last one (a
        repeat recomputes the same pixel, so writing it twice is harmless); every cell must cover some output."""
        first, end = self.first[cell], self.end[cell]
        offset = torch.arange(self.span, device=cell.device)
        return torch.minimum(first[:, None] + offset, end[:, None] - 1)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def predict_logits(
    model: nn.Module, image: ImageLike, options: InferenceOptions | None = None, **overrides: Any
) -> Tensor:
    """Softmax probabilities (K, H, W) at the original image size, on the model's device.

    `image` is a path, PIL image, uint8 (H, W, 3) array (a multi-band model: (H, W, C) array or TIFF / .npy
    path), or an already normalised float tensor (C, H, W). The model is put in eval mode. `options`/`overrides`
    as `InferenceOptions.build`; the argmax over K is the label map.
    """
    options = InferenceOptions.build(options, **overrides)
    model.eval()
    device = _model_device(model)
    if isinstance(image, Tensor) and image.is_floating_point() and image.ndim == 3:
        x = image.to(device).unsqueeze(0)
    else:
        config = model.config
        array = to_model_array(image, config.in_channels)
        x = normalize_batch(stack_images([array]).to(device), *channel_stats(config))
    return predict_batch(model, x, options)[0].clone()  # a normal tensor: inference-mode ones refuse in-place ops


def iter_same_size(items: Iterable[Any], size_of: Any, limit: int) -> Iterable[list[Any]]:
    """Consecutive items grouped into lists of at most `limit` sharing `size_of(item)` (for batching)."""
    group: list[Any] = []
    for item in items:
        if group and (len(group) >= limit or size_of(item) != size_of(group[0])):
            yield group
            group = []
        group.append(item)
    if group:
        yield group


class Segmenter:
    """`segmenter(image)` -> (H, W) int64 class ids at the original size, for a path, PIL image or uint8 array
    (multi-band models: a TIFF / .npy path or an (H, W, C) array, normalised with the statistics in the model's
    config).

    >>> seg = Segmenter(load_model("nvidia/segformer-b0-finetuned-ade-512-512"), device="cuda")
    >>> labels = seg("room.jpg")
    >>> seg = Segmenter(model, InferenceOptions.for_dataset(DATASETS["cityscapes"]), flip=True)

    Without `options` it runs the model's own test protocol (`InferenceOptions.for_model`): what training stored,
    or the paper's for an official checkpoint of a standard dataset; pass `InferenceOptions()` for each image at
    its own size.
    """

    def __init__(
        self,
        model: nn.Module,
        options: InferenceOptions | None = None,
        device: str | torch.device | None = None,
        **overrides: Any,
    ) -> None:
        config = getattr(model, "config", None)
        if options is None and isinstance(config, SegFormerConfig):
            options = InferenceOptions.for_model(config)
        self.options = InferenceOptions.build(options, **overrides)
        self.model = model.eval() if device is None else model.to(device).eval()
        self.device = _model_device(self.model)
        self.channels = config.in_channels if isinstance(config, SegFormerConfig) else 3
        self.mean, self.std = channel_stats(config) if isinstance(config, SegFormerConfig) else (MEAN, STD)

    def read(self, image: ImageLike) -> np.ndarray:
        """The array this segmenter's model reads from a path, PIL image or array."""
        return to_model_array(image, self.channels)

    def probabilities(self, image: ImageLike) -> Tensor:
        """Softmax probabilities (K, H, W) on the CPU at the original size."""
        x = normalize_batch(stack_images([self.read(image)]).to(self.device), self.mean, self.std)
        return predict_batch(self.model, x, self.options)[0].cpu().clone()  # clone: not an inference-mode tensor

    def __call__(self, image: ImageLike) -> np.ndarray:
        return self.predict_arrays([self.read(image)])[0]

    def predict_arrays(self, images: Sequence[np.ndarray], softmax: bool = False) -> list[Any]:
        """Label maps (or, with `softmax`, (labels, probabilities) pairs) for RGB uint8 arrays (multi-band
        models: (H, W, C) arrays); images of the same size go through the model together."""
        out: list[Any] = [None] * len(images)
        groups = iter_same_size(range(len(images)), lambda i: images[i].shape, self.options.batch_size)
        for group in groups:
            batch = _batch([images[i] for i in group]).to(self.device)  # (B, H, W, C)
            x = normalize_batch(batch, self.mean, self.std)
            del batch
            scores = predict_batch(self.model, x, self.options) if softmax else None
            labels = scores.argmax(dim=1) if scores is not None else predict_labels(self.model, x, self.options)
            del x
            labels = labels.cpu().numpy().astype(np.int64, copy=False)
            for k, i in enumerate(group):
                out[i] = (labels[k], scores[k].cpu()) if scores is not None else labels[k]
        return out


def _batch(arrays: list[np.ndarray]) -> Tensor:
    """`stack_images`, without copying a single uint8 image (a 12 MP photo is 36 MB). The tensor is only read
    (`normalize_batch` makes a new float tensor), so arrays that numpy marks read-only (PIL's) are shared too."""
    first = arrays[0]
    if len(arrays) != 1 or first.dtype != np.uint8:
        return stack_images(arrays)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(first))[None]
