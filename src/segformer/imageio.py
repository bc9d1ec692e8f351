"""Reading images and masks the way users have them (EXIF-rotated, grayscale, RGBA, 16-bit; multi-band TIFF and
.npy), normalising them for the model, and writing label maps whose pixel values are the exact class ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .constants import MEAN, STD

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".npy")
MULTIBAND_SUFFIXES = (".tif", ".tiff", ".npy")


class ImageReadError(ValueError):
    """An image or mask file that cannot be read; the message names the file."""


class ChannelMismatchError(ImageReadError):
    """An image whose number of bands is not the number of channels asked for (every file of a dataset is usually
    alike, so this is a setting to fix rather than a bad sample to skip)."""


def _open(path: str | Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: unreadable or truncated image ({e})") from None
    return img


def read_image(path: str | Path, channels: int = 3) -> np.ndarray:
    """The image as an (H, W, channels) array.

    3 channels: RGB uint8, upright (EXIF orientation applied), from any common image file; a TIFF must hold 1 or 3
    bands (checked from its header with tifffile when installed, so RGB+NIR is never read as RGBA and cut to RGB);
    a .npy file gives its 3 bands as stored. Any other count: the bands of a multi-band TIFF or .npy file, in
    their own dtype (uint8, uint16, float, ...). A band count that does not match raises ChannelMismatchError.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if channels == 3 and suffix != ".npy":
        if suffix in (".tif", ".tiff"):
            _check_tiff_bands(path, channels)
        return to_rgb(ImageOps.exif_transpose(_open(path)))
    if suffix not in MULTIBAND_SUFFIXES:
        raise ChannelMismatchError(
            f"{path}: a {suffix or 'suffix-less'} image holds RGB, not {channels} channels; "
            f"{channels}-channel input must be multi-band TIFF or .npy files"
        )
    return read_bands(path, channels)


def _bands_axis(shape: tuple[int, ...], axes: str, channels: int | None) -> int:
    """Which axis of a 3-D image array holds the bands: the TIFF's sample axis when it says, else the axis whose
    length is `channels` (last one first), else the shorter of the first and last."""
    if axes.endswith("S"):
        return -1
    if axes[:1] in ("S", "C"):
        return 0
    if channels is not None and shape[-1] == channels:
        return -1
    if channels is not None and shape[0] == channels:
        return 0
    return -1 if shape[-1] <= shape[0] else 0


def _check_tiff_bands(path: Path, channels: int) -> None:
    try:
        import tifffile
    except ImportError:
        return  # Pillow decides, as before
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes = tuple(series.shape), series.axes
    except Exception:  # not a TIFF tifffile understands: Pillow reports it
        return
    shape, axes = _squeeze(shape, axes)
    bands = 1 if len(shape) == 2 else shape[_bands_axis(shape, axes, channels)]
    if bands not in (1, channels):
        raise ChannelMismatchError(_band_message(path, bands, channels))


def _squeeze(shape: tuple[int, ...], axes: str) -> tuple[tuple[int, ...], str]:
    while len(shape) > 3 and shape[0] == 1:
        shape, axes = shape[1:], axes[1:]
    return shape, axes


def _band_message(path: Path, bands: int, channels: int) -> str:
    return (
        f"{path}: has {bands} band{'s' if bands != 1 else ''} but {channels} channels are expected "
        f"(--in-channels for training; a trained model takes the channels it was trained with)"
    )


def read_bands(path: str | Path, channels: int | None = None) -> np.ndarray:
    """(H, W, C) bands of a multi-band TIFF (tifffile: `pip install 'segformer[multiband]'`) or .npy file, in
    their own dtype. (C, H, W) arrays are transposed; with `channels`, a different band count raises."""
    path = Path(path)
    axes = ""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise ImageReadError(f"{path}: no such file") from None
        except (OSError, ValueError, EOFError) as e:
            raise ImageReadError(
                f"{path}: not a readable .npy array ({str(e).splitlines()[0] if str(e) else e})"
            ) from None
    else:
        try:
            import tifffile
        except ImportError:
            raise RuntimeError(
                f"{path}: reading multi-band TIFF needs tifffile: pip install 'segformer[multiband]' (or tifffile)"
            ) from None
        if not path.is_file():
            raise ImageReadError(f"{path}: no such file")
        try:
            with tifffile.TiffFile(path) as tif:
                axes = tif.series[0].axes
                arr = tif.asarray()
        except Exception as e:  # tifffile raises many types for files that are not (complete) TIFFs
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ImageReadError(f"{path}: unreadable or truncated TIFF ({first})") from None
    shape, axes = _squeeze(arr.shape, axes)
    arr = arr.reshape(shape)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim == 3:
        if _bands_axis(arr.shape, axes, channels) == 0:
            arr = np.moveaxis(arr, 0, -1)
    else:
        raise ImageReadError(f"{path}: array of shape {arr.shape} is not an image (H, W, bands) or (bands, H, W)")
    if arr.dtype.kind not in "uif" or arr.dtype.itemsize > 8:
        raise ImageReadError(f"{path}: pixel type {arr.dtype} is not a number type")
    if channels is not None and arr.shape[-1] != channels:
        raise ChannelMismatchError(_band_message(path, arr.shape[-1], channels))
    return np.ascontiguousarray(arr)


def display_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) to look at: RGB uint8 images unchanged; other images show their first three bands
    (one band as grey), each stretched from its 2nd to its 98th percentile."""
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image
    bands = image[:, :, :3].astype(np.float64) if image.ndim == 3 else image[:, :, None].astype(np.float64)
    if bands.shape[2] < 3:
        bands = bands[:, :, [0, 0, 0]] if bands.shape[2] == 1 else np.concatenate([bands, bands[:, :, :1]], axis=2)
    low, high = np.percentile(bands, 2, axis=(0, 1)), np.percentile(bands, 98, axis=(0, 1))
    scaled = (bands - low) / np.where(high > low, high - low, 1.0)
    return (scaled.clip(0, 1) * 255).round().astype(np.uint8)


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
        Image.fromarray(labels.astype(np.uint16)).save(path, format="PNG")
        return
    img = Image.fromarray(labels.astype(np.uint8)).convert("P")
    if palette is not None:
        flat = np.zeros((256, 3), np.uint8)
        flat[: len(palette)] = np.asarray(palette, np.uint8)[:256]
        img.putpalette(flat.flatten().tolist())
    img.save(path, format="PNG")  # whatever the name ends with (atomic writes go through a temporary name)


def normalize(
    image: np.ndarray | torch.Tensor, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD
) -> torch.Tensor:
    """(H, W, C) raw pixels -> float (C, H, W) standardised per channel; by default uint8 RGB with the ImageNet
    mean/std on 0..255 (as every checkpoint)."""
    x = torch.as_tensor(image).permute(2, 0, 1).float()
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (x - mean_t) / std_t


def default_palette(num_classes: int) -> np.ndarray:
    """Distinct, deterministic colours for datasets without their own palette (class 0 black)."""
    rng = np.random.default_rng(12345)
    pal = rng.integers(40, 256, size=(num_classes, 3), dtype=np.uint8)
    if num_classes:
        pal[0] = 0
    return pal
