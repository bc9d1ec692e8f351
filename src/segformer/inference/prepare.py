"""Stage 1 of test-time inference: images in, the normalised network input out, with what `finish` needs to map the
logits back (the images' size and the settings).

Resizing follows mmcv's keep-ratio rules (`resized_size`) with torch bilinear interpolation (align_corners=False,
no antialiasing) on the normalised float image; mmseg uses cv2 INTER_LINEAR on uint8, which samples the same way
but rounds to integers, and its AlignedResize resizes twice (to the scale, then to the aligned size) where this
resizes once, straight to the aligned size; results can differ in the last digits of mIoU.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..constants import MEAN, STD
from ..imageio import ChannelMismatchError, read_image, to_rgb
from ..protocol import InferenceOptions

ImageLike = str | Path | Image.Image | np.ndarray | Tensor


@dataclass(frozen=True)
class Prepared:
    """A batch of same-sized images ready for `run`.

    `x` (B, C, h, w) is the normalised input: for a single pass already at the network input size (so that
    reader processes can do the resize), otherwise at the images' own size (each TTA pass resizes it). `image_size`
    (H, W) is where `finish` puts the labels; `options` say how `run` and `finish` treat it. `x` is None once a
    `Prepared` only tells `finish` where to go (`without_input`, what predict's writers receive).
    """

    x: Tensor | None
    image_size: tuple[int, int]
    options: InferenceOptions

    @property
    def resized(self) -> bool:
        """Whether `x` is at the network input size already (one pass)."""
        return self.options.passes == 1

    def without_input(self) -> Prepared:
        return replace(self, x=None)

    @classmethod
    def concat(cls, items: Sequence[Prepared]) -> Prepared:
        """One batch of prepared single images whose inputs share a size (`image_size`: the first's, as `finish`
        takes one size per batch; callers that batch images of different sizes finish them one by one)."""
        x = torch.cat([item.x for item in items]) if len(items) > 1 else items[0].x  # type: ignore[misc]
        return cls(x, items[0].image_size, items[0].options)


def prepare(
    images: Tensor, options: InferenceOptions, mean: Sequence[float] = MEAN, std: Sequence[float] = STD
) -> Prepared:
    """Raw pixels (B, H, W, C) on any device (uint8 RGB, or the bands of a multi-band model) -> `Prepared`:
    normalised with `mean`/`std` (the model's `channel_stats`) and, for a single pass, resized to the network input
    size (`resized_size` at the test scale and the only TTA ratio)."""
    return prepare_normalized(normalize_batch(images, mean, std), options)


def prepare_normalized(x: Tensor, options: InferenceOptions) -> Prepared:
    """`prepare` for an input that is normalised already (B, C, H, W)."""
    h, w = x.shape[-2:]
    if options.passes == 1:
        x = resize(x, resized_size(h, w, options.scale, options.ratios[0], options.size_divisor))
    return Prepared(x, (int(h), int(w)), options)


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


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (align_corners=False) resize of (B, C, h, w) to `size`; x itself when it has that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


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
    """(B, H, W, C) tensor of same-sized images: uint8 stays uint8 (cheap to move), other types become float32.
    A single uint8 image is shared, not copied (a 12 MP photo is 36 MB): the tensor is only read (`normalize_batch`
    makes a new float tensor), so arrays that numpy marks read-only (PIL's) are shared too."""
    first = images[0]
    if len(images) == 1 and first.dtype == np.uint8:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(np.ascontiguousarray(first))[None]
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
