"""Stage 2 of test-time inference: the test modes around any forward function (mmseg test modes, plus TTA).

- whole: one forward of the input resized to the test scale; optionally both sides rounded up to a multiple of
  `size_divisor` (the official ADE20K `AlignedResize`, size_divisor 32). The logits stay at the model's stride
  (1/4), and `finish` resizes them to the input size, then to the original size, as mmseg's `encode_decode` +
  rescale.
- slide: the input is padded (bottom/right, with the mean colour) to at least the crop, cut into crop-sized windows
  every `stride` pixels (the last window in each direction ends at the border), each window's logits are
  upsampled to the crop size and added, the sum is divided by how many windows covered each pixel.
- multi-scale + flip (TTA): the above at each ratio of `scales` (times the test scale, or the image size when
  `scale=None`) and, with `flip`, on the horizontally flipped input too; `finish` averages the probabilities.

A runtime is only a `forward`: (B, C, h, w) normalised float -> (B, K, h', w') logits, e.g. `eager_forward(model,
amp)`, an ONNX Runtime session (`export.runtimes.OnnxForward`), a compiled or exported program. A new test mode is a
branch of `run` and a row of `protocol.MODES`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..runtime import autocast, compile_unavailable
from .prepare import Prepared, resize, resized_size

log = logging.getLogger("segformer")

Forward = Callable[[Tensor], Tensor]
# A forward may return class ids instead of logits (an exported graph with its argmax inside): `finish` resizes those
# by nearest, which is all that can be done with them.
LABELS_ONE_PASS = (
    "this runtime outputs class ids (an export with --with-postprocess): it runs whole images in one pass only; "
    "export without --with-postprocess for slide mode, TTA or probabilities"
)


@dataclass(frozen=True)
class Pass:
    """One TTA pass: `logits` (B, K, h', w') for a network input of `size` (h, w), flipped back when the pass was
    flipped. They are at `size` (slide, flip), or at the model's own stride of it (a plain whole pass)."""

    logits: Tensor
    size: tuple[int, int]


def eager_forward(model: nn.Module, amp: str = "none") -> Forward:
    """The PyTorch model as a forward function, under autocast when `amp` is "bf16"/"fp16" (the logits then come
    back as float32 from `run`)."""

    def forward(batch: Tensor) -> Tensor:
        with autocast(batch.device, amp):
            return model(batch)

    return forward


def compiled_forward(model: nn.Module, amp: str = "none") -> Forward:
    """`eager_forward` of `torch.compile(model)` (compiled on the first call of each new input shape). Where
    compiling cannot work here (no C++ compiler for the CPU backend, an unsupported Python or platform), it says so
    in one line and runs eagerly from then on; an error eager inference raises too is the caller's and is raised."""
    eager = eager_forward(model, amp)
    param = next(model.parameters(), None)
    reason = compile_unavailable(param.device if param is not None else "cpu")
    if reason is None:
        try:
            chosen = [eager_forward(torch.compile(model), amp)]
        except RuntimeError as e:  # torch.compile refuses at once on an unsupported Python
            reason = str(e).strip().splitlines()[0]
    if reason is not None:
        log.warning("torch.compile is not available here (%s); running eagerly", reason)
        return eager

    def forward(batch: Tensor) -> Tensor:
        if chosen[0] is eager:
            return eager(batch)
        try:
            return chosen[0](batch)
        except Exception as e:  # noqa: BLE001 - any compiler failure; eager decides whether the input is at fault
            out = eager(batch)
            chosen[0] = eager
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.warning("torch.compile failed here (%s: %s); running eagerly", type(e).__name__, reason[:200])
            return out

    return forward


def run(forward: Forward, prepared: Prepared) -> Iterator[Pass]:
    """The passes of `prepared.options` (one per TTA ratio and flip), each run in batches of `batch_size`.
    A generator: `finish` consumes one pass at a time, so TTA never holds all passes' logits at once."""
    options = prepared.options
    x = prepared.x
    assert x is not None, "run needs the prepared input (Prepared.x)"
    h, w = prepared.image_size
    for ratio in options.ratios:
        xs = x if prepared.resized else resize(x, resized_size(h, w, options.scale, ratio, options.size_divisor))
        for flip in (False, True) if options.flip else (False,):
            xi = xs.flip(-1) if flip else xs
            if options.mode == "slide":
                logits = _slide(forward, xi, options.crop, options.stride, options.batch_size)  # type: ignore[arg-type]
            else:
                logits = _whole(forward, xi, options.batch_size, resize_to_input=flip)
            yield Pass(logits.flip(-1) if flip else logits, (int(xs.shape[-2]), int(xs.shape[-1])))


def _whole(forward: Forward, x: Tensor, batch_size: int, resize_to_input: bool) -> Tensor:
    """Logits (B, K, h/4, w/4) of the normalised input x (B, C, h, w), or with `resize_to_input` at (h, w) (a
    flipped pass is resized before it is flipped back)."""
    outs = [forward(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    if not outs[0].is_floating_point():  # class ids (B, h, w): kept as they are for `finish`
        if resize_to_input:
            raise ValueError(LABELS_ONE_PASS)
        return torch.cat(outs)
    return torch.cat([resize(out.float(), x.shape[-2:]) if resize_to_input else out.float() for out in outs])


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


def _slide(forward: Forward, x: Tensor, crop: tuple[int, int], stride: tuple[int, int], batch_size: int) -> Tensor:
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
        logits = forward(batch)
        if not logits.is_floating_point():
            raise ValueError(LABELS_ONE_PASS)
        logits = resize(logits.float(), crop)
        if total is None:
            total = x.new_zeros(b, logits.shape[1], hp, wp, dtype=torch.float32)
        for k, (y1, y2, x1, x2) in enumerate(chunk):
            total[:, :, y1:y2, x1:x2] += logits[k * b : (k + 1) * b]
            count[:, :, y1:y2, x1:x2] += 1
    assert total is not None
    return (total / count)[:, :, :h, :w]
