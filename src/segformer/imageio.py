"""Reading images and masks the way users have them (EXIF-rotated, grayscale, RGBA, 16-bit), normalising them
for the model, and writing label maps whose pixel values are the exact class ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .constants import MEAN, STD

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """An image or mask file that cannot be read; the message names the file."""


def _open(path: str | Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: unreadable or truncated image ({e})") from None
    return img


def read_image(path: str | Path) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array, upright (EXIF orientation applied), from any common image file."""
    return to_rgb(ImageOps.exif_transpose(_open(path)))


def to_rgb(img: Image.Image | np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) from a PIL image or array: grayscale is repeated, alpha dropped, 16-bit scaled to 8."""
    if isinstance(img, Image.Image):
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            img = np.asarray(img)
        elif img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
    if isinstance(img, np.ndarray):
        arr = img
        if arr.dtype == np.uint16 or (arr.dtype.kind in "iu" and arr.max(initial=0) > 255):
            arr = (arr.astype(np.float64) * (255.0 / 65535.0)).round()
        elif arr.dtype.kind == "f":
            arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        elif arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        elif arr.shape[2] == 4:
            arr = arr[:, :, :3]
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ImageReadError(f"cannot make an RGB image from an array of shape {img.shape}")
        return np.ascontiguousarray(arr)
    return np.asarray(img.convert("RGB"))


def read_mask(path: str | Path) -> np.ndarray:
    """Class ids as a (H, W) array. Palette PNGs give their indices (not colours); no EXIF rotation, as mmseg."""
    img = _open(path)
    if img.mode in ("RGB", "RGBA"):
        raise ImageReadError(f"{path}: mask is a colour image; masks must hold class ids (L or P mode PNG)")
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise ImageReadError(f"{path}: mask must be single-channel, got shape {arr.shape}")
    return arr


def write_label_png(path: str | Path, labels: np.ndarray, palette: np.ndarray | None = None) -> None:
    """A palette-indexed PNG: pixel values are the exact class ids, and viewers show the class colours."""
    if labels.max(initial=0) > 255:
        Image.fromarray(labels.astype(np.uint16)).save(path)
        return
    img = Image.fromarray(labels.astype(np.uint8)).convert("P")
    if palette is not None:
        flat = np.zeros((256, 3), np.uint8)
        flat[: len(palette)] = np.asarray(palette, np.uint8)[:256]
        img.putpalette(flat.flatten().tolist())
    img.save(path)


def normalize(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB (H, W, 3) -> float (3, H, W) with the ImageNet mean/std on 0..255 (as every checkpoint)."""
    x = torch.as_tensor(image).permute(2, 0, 1).float()
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (x - mean) / std


def default_palette(num_classes: int) -> np.ndarray:
    """Distinct, deterministic colours for datasets without their own palette (class 0 black)."""
    rng = np.random.default_rng(12345)
    pal = rng.integers(40, 256, size=(num_classes, 3), dtype=np.uint8)
    if num_classes:
        pal[0] = 0
    return pal
