"""Stage 3 of test-time inference: the passes' logits -> label maps (and probabilities) at the original size.

One pass and labels only: the exact argmax of the logits resized to the network input size and then to the image
size (mmseg's two bilinear resizes), without making the (B, K, H, W) scores (`argmax_resized`: a 12 MP photo with 150
classes would need 7 GB). Several passes (TTA) or probabilities: each pass resized, softmaxed and averaged.

A runtime whose graph ends in the argmax (an ONNX export with postprocessing) gives one pass of integer class ids
(B, h, w) or (B, 1, h, w) at the network input size instead of logits: they are resized to the image size by nearest
neighbour (the bilinear resize of the scores happened inside the graph, at the input size). Such a pass cannot be
averaged, so TTA, slide mode and probabilities need logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .prepare import Prepared, resize
from .run import LABELS_ONE_PASS, Pass


@dataclass(frozen=True)
class Finished:
    """Class ids (B, H, W) int64 at the images' size, and with `probabilities` the averaged softmax (B, K, H, W)."""

    labels: Tensor
    probabilities: Tensor | None = None


def finish(passes: Iterable[Pass], prepared: Prepared, probabilities: bool = False) -> Finished:
    """Label maps (and, with `probabilities`, softmax probabilities) at `prepared.image_size` from `run`'s passes.
    Run it under `torch.inference_mode()` (the callers do) so that no graph is kept."""
    size = prepared.image_size
    if prepared.options.passes == 1 and not probabilities:
        (only,) = passes
        if not only.logits.is_floating_point():
            return Finished(nearest_labels(only.logits, size))
        return Finished(argmax_resized(only.logits, size, via=only.size))
    scores = average_probabilities(passes, size, prepared.options.passes)
    return Finished(scores.argmax(dim=1), scores if probabilities else None)


def nearest_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Class ids (B, h, w) or (B, 1, h, w) -> int64 (B, H, W) at `size` by nearest neighbour (F.interpolate's)."""
    labels = labels if labels.ndim == 4 else labels[:, None]  # (B, h, w) -> (B, 1, h, w)
    if tuple(labels.shape[-2:]) != tuple(size):
        labels = F.interpolate(labels.float(), size=size, mode="nearest")  # exact for ids below 2**24
    return labels[:, 0].long()


def average_probabilities(passes: Iterable[Pass], size: tuple[int, int], count: int, softmax: bool = True) -> Tensor:
    """(B, K, H, W): each pass's logits resized to its input size, then to `size`, softmaxed; the mean over the
    `count` passes (one pass: its softmax, or with `softmax=False` the resized logits, which have the same argmax)."""
    total: Tensor | None = None
    for p in passes:
        if not p.logits.is_floating_point():
            raise ValueError(LABELS_ONE_PASS)
        out = resize(resize(p.logits, p.size), size)
        out = out.softmax(dim=1) if softmax or count > 1 else out
        total = out if total is None else total + out
    assert total is not None
    return total / count if count > 1 else total


BAND_BYTES = 32 << 20  # float32 scores held at once while resizing logits to the output size
DENSE_UPTO = 4  # output pixels per source pixel up to which all classes are resized (evaluation sizes)
# Output pixels per input-size pixel up to which both resizes are done in one step. Beyond, the first resize (small
# next to the output) is done in full: cells taken at the input size span a quarter of a source pixel each way, so
# far fewer of them have several possible winners (12 MP from noise-like logits, 1 thread: 1.2 s instead of 11.4 s).
ONE_STEP_UPTO = 4
TIE_TOLERANCE = 1e-5  # relative to max |logit|: far above float32 rounding, so no possible winner is pruned


def argmax_resized(
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
        logits, via = resize(logits, via), None  # a big photo: first resize in full, cells at the input size
        b, k, h, w = logits.shape
    if tuple(logits.shape[-2:]) == tuple(size) and via is None:
        return logits.argmax(dim=1)
    if size[0] * size[1] <= DENSE_UPTO * h * w:  # little upsampling: resizing every class is cheaper than pruning
        logits = logits if via is None else resize(logits, via)
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
        value, index = resize(logits[:, start : start + chunk], size).max(dim=1)  # (B, H, W)
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
