"""The SegFormer training pipeline (mmseg semantics): random rescale, cat_max_ratio crop, flip, photometric
distortion, normalise, pad. Image and mask move together; masks are always resampled nearest and padded with 255.

Every random decision is drawn from the `np.random.Generator` passed in, so a sample is a pure function of
(image, mask, generator state): training can seed per (seed, iteration, sample) and resume exactly.

Speed: the random crop is chosen on the rescaled *mask* (cheap, uint8, nearest) and only the cropped region of
the image is resampled, via Pillow's `resize(box=...)`. That gives the pixels of "resize the whole image, then
crop" (Pillow maps output pixel centres through the same affine map and clamps at the image, not the box border;
float rounding leaves at most 1 grey level of difference) at a fraction of the cost for the up-to-2x upscaled
images of the recipe.

Differences from mmseg (cv2): Pillow's bilinear filter antialiases when shrinking and its nearest filter samples
pixel centres; the HSV round trip uses Pillow's 8-bit HSV (hue in 256 steps rather than 180) and saturation and
hue share one round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..constants import IGNORE_INDEX, MEAN, STD


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of an image rescaled keeping aspect to fit `scale` = (long, short) in any order, as mmcv's keep_ratio
    rescale: factor = min(long / max(H, W), short / min(H, W))."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def random_scale(scale: tuple[int, int], ratio_range: tuple[float, float] | None, rng: np.random.Generator) -> tuple:
    """mmseg's `Resize(ratio_range=...)` target: `scale` times a ratio drawn uniformly from `ratio_range`."""
    if ratio_range is None:
        return scale
    lo, hi = ratio_range
    ratio = rng.uniform(lo, hi) if hi > lo else lo
    return int(scale[0] * ratio), int(scale[1] * ratio)


def choose_crop(
    mask: np.ndarray,
    crop: tuple[int, int],
    rng: np.random.Generator,
    cat_max_ratio: float = 0.75,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[int, int, int, int]:
    """A random crop window (y0, x0, h, w) of `mask`, re-drawn (at most 10 times, as mmseg's RandomCrop) while one
    class covers `cat_max_ratio` or more of the crop's labelled pixels, or the crop holds a single class."""
    height, width = mask.shape
    ch, cw = min(crop[0], height), min(crop[1], width)

    def draw() -> tuple[int, int]:
        return int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))

    y0, x0 = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            counts = np.bincount(mask[y0 : y0 + ch, x0 : x0 + cw].ravel(), minlength=256)
            counts[ignore_index] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y0, x0 = draw()
    return y0, x0, ch, cw


def _lut(alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """uint8 -> uint8 table of mmseg's `convert`: float32(v) * alpha + beta, clipped to 0..255, truncated."""
    values = np.arange(256, dtype=np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(values, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class PhotoMetricDistortion:
    """mmseg's PhotoMetricDistortion on uint8 RGB: brightness, contrast (before or after the colour steps),
    saturation and hue, each applied with probability 0.5. `hue_delta` is in OpenCV units (180 per turn)."""

    brightness_delta: float = 32
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # Brightness and contrast are per-value maps: compose them into one 256-entry table (applied by Pillow).
        lut = np.arange(256, dtype=np.uint8)
        if rng.integers(2):
            lut = _lut(beta=rng.uniform(-self.brightness_delta, self.brightness_delta))[lut]
        contrast_first = bool(rng.integers(2))
        contrast = _lut(alpha=rng.uniform(*self.contrast_range)) if rng.integers(2) else None
        if contrast_first and contrast is not None:
            lut = contrast[lut]
        saturation = rng.uniform(*self.saturation_range) if rng.integers(2) else None
        hue = int(rng.integers(-self.hue_delta, self.hue_delta)) if rng.integers(2) and self.hue_delta > 0 else None
        img = Image.fromarray(image).point(lut.tolist() * 3)
        if saturation is not None or hue is not None:
            h, s, v = img.convert("HSV").split()  # Pillow's 8-bit HSV: hue 0..255 per turn
            if saturation is not None:
                s = s.point(_lut(alpha=saturation).tolist())
            if hue is not None:
                shift = round(hue * 256 / 180)
                h = h.point([(i + shift) % 256 for i in range(256)])
            img = Image.merge("HSV", (h, s, v)).convert("RGB")
        if not contrast_first and contrast is not None:
            img = img.point(contrast.tolist() * 3)
        return np.array(img)


def _resize_bands(image: np.ndarray, size: tuple[int, int], box: tuple[float, ...]) -> np.ndarray:
    """Bilinear resize of the `box` region of an (H, W, C) array of any number type to `size` (W, H), band by band
    in float32 with Pillow's filter (the one the RGB path uses)."""
    bands = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32)).resize(size, _BILINEAR, box=box)
        )
        for c in range(image.shape[2])
    ]
    return np.stack(bands, axis=2)


_BILINEAR = Image.Resampling.BILINEAR


class TrainTransform:
    """The training pipeline: `(image (H, W, C), mask uint8 (H, W), rng)` -> (normalised float (C, h, w), long
    (h, w)) with (h, w) = `crop`; areas outside the image are 0 in the image and 255 in the mask.

    `scale` is mmseg's img_scale (long, short), e.g. (2048, 512) for ADE20K; `None` keeps each image's own size
    (the ratio still applies). `ratio_range=None` rescales to exactly `scale`. Images are uint8 RGB, normalised
    with `mean`/`std` (default ImageNet's), or any other number of bands of any number type (multi-band TIFF,
    .npy), resized band by band in float32; the photometric distortion applies to uint8 RGB images only.
    """

    def __init__(
        self,
        scale: tuple[int, int] | None = (2048, 512),
        ratio_range: tuple[float, float] | None = (0.5, 2.0),
        crop: tuple[int, int] = (512, 512),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        ignore_index: int = IGNORE_INDEX,
        mean: tuple[float, ...] = MEAN,
        std: tuple[float, ...] = STD,
    ) -> None:
        if scale is not None and (len(scale) != 2 or min(scale) < 1):
            raise ValueError(f"scale must be two positive ints (long, short), got {scale!r}")
        if len(crop) != 2 or min(crop) < 1:
            raise ValueError(f"crop must be two positive ints (H, W), got {crop!r}")
        if ratio_range is not None and not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must be (low, high) with 0 < low <= high, got {ratio_range!r}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob!r}")
        self.scale = tuple(scale) if scale is not None else None
        self.ratio_range = tuple(ratio_range) if ratio_range is not None else None
        self.crop = tuple(crop)
        self.cat_max_ratio = cat_max_ratio
        self.flip_prob = flip_prob
        self.photometric = PhotoMetricDistortion() if photometric else None
        self.ignore_index = ignore_index
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean {mean} and std {std} must have one value per channel, std > 0")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(scale={self.scale}, ratio_range={self.ratio_range}, crop={self.crop}, "
            f"cat_max_ratio={self.cat_max_ratio}, flip_prob={self.flip_prob}, "
            f"photometric={self.photometric is not None})"
        )

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.augment(image, mask, rng)
        return self.to_tensors(image, mask)

    def augment(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The random steps on uint8 arrays: rescale + crop, flip, photometric (before normalise and pad)."""
        if image.shape[:2] != mask.shape:
            raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} sizes differ")
        height, width = mask.shape
        base = self.scale if self.scale is not None else (max(height, width), min(height, width))
        new_h, new_w = rescale_size(height, width, random_scale(base, self.ratio_range, rng))

        mask_img = Image.fromarray(mask)
        if (new_h, new_w) != (height, width):
            mask_img = mask_img.resize((new_w, new_h), Image.Resampling.NEAREST)
        big_mask = np.asarray(mask_img)
        y0, x0, ch, cw = choose_crop(big_mask, self.crop, rng, self.cat_max_ratio, self.ignore_index)
        mask = big_mask[y0 : y0 + ch, x0 : x0 + cw]
        rgb = image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        if (new_h, new_w) != (height, width):
            sy, sx = height / new_h, width / new_w  # source pixels per output pixel
            box = (x0 * sx, y0 * sy, (x0 + cw) * sx, (y0 + ch) * sy)
            if rgb:
                image = np.asarray(Image.fromarray(image).resize((cw, ch), _BILINEAR, box=box))
            else:
                image = _resize_bands(image, (cw, ch), box)
        else:
            image = image[y0 : y0 + ch, x0 : x0 + cw]

        if rng.random() < self.flip_prob:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if self.photometric is not None and rgb:
            image = self.photometric(np.ascontiguousarray(image), rng)
        return np.array(image, order="C"), np.array(mask, order="C")  # writable copies, as torch expects

    def to_tensors(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalise with `mean`/`std` and pad to `crop` (image 0 after normalising, mask 255)."""
        h, w = mask.shape
        ch, cw = self.crop
        if image.shape[2] != self.mean.shape[0]:
            raise ValueError(f"image has {image.shape[2]} channels but the normalisation {self.mean.shape[0]}")
        if image.dtype != np.uint8:  # uint16, uint32, float64 ...: torch handles float32 everywhere
            image = image.astype(np.float32, copy=False)
        x = torch.from_numpy(image).permute(2, 0, 1)  # (H, W, C) -> (C, H, W), a view
        x = x.to(torch.float32, memory_format=torch.contiguous_format).sub_(self.mean).div_(self.std)
        y = torch.from_numpy(mask.astype(np.int64))
        if (h, w) != (ch, cw):
            x_pad = torch.zeros(x.shape[0], ch, cw)
            x_pad[:, :h, :w] = x
            y_pad = torch.full((ch, cw), self.ignore_index, dtype=torch.int64)
            y_pad[:h, :w] = y
            x, y = x_pad, y_pad
        return x, y
