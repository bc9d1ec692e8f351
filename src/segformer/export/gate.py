"""The accuracy gate every export goes through before its file is written.

An exported runtime can be silently wrong: INT8 ranges that clip, fp16 LayerNorms that overflow, a backend that
mis-lowers a layout. So the export is run, as a `Segmenter`, next to a reference `Segmenter` (the float model) on
the same images, through the same spine (prepare, run, finish), and its label maps are compared: pixel agreement,
mean IoU of the candidate's labels against the reference's, and, on a labelled dataset, each one's mIoU. `gate`
refuses to write below the required agreement unless forced.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..constants import IGNORE_INDEX
from ..data.base import SampleSource
from ..evaluation.evaluate import check_labels
from ..evaluation.metrics import ConfusionMatrix
from ..imageio import IMAGE_SUFFIXES, ImageReadError, read_image
from ..inference import InferenceOptions, Segmenter

log = logging.getLogger("segformer")


class ExportRejected(RuntimeError):
    """The export agreed with the float model less than required; `report` holds the measurements."""

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class GateReport:
    """What a checked export measured and wrote (`path` is None when the gate refused to write): agreement of its
    labels with the float PyTorch model's, on which images, and what runs in higher precision and why."""

    format: str
    path: Path | None
    size_mb: float
    check_images: int
    check_source: str
    agreement: float
    iou_vs_float: float
    min_agreement: float
    forced: bool = False
    float_miou: float | None = None
    candidate_miou: float | None = None
    kept: dict[str, str] = field(default_factory=dict)  # what stays in higher precision -> why
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.agreement >= self.min_agreement

    def summary(self) -> str:
        lines = [f"{self.format}: kept in higher precision:" + ("" if self.kept else " nothing")]
        lines += [f"  {what}: {why}" for what, why in self.kept.items()]
        lines += [
            f"  checked on {self.check_images} {self.check_source}",
            f"  pixel agreement with the float PyTorch model: {100 * self.agreement:.2f}% (min "
            f"{100 * self.min_agreement:.2f}%), mean IoU of its labels vs float {100 * self.iou_vs_float:.2f}%",
        ]
        if self.float_miou is not None and self.candidate_miou is not None:
            delta = 100 * (self.candidate_miou - self.float_miou)
            lines.append(
                f"  mIoU: float {100 * self.float_miou:.2f}, export {100 * self.candidate_miou:.2f} ({delta:+.2f} pp)"
            )
        lines += [f"  {note}" for note in self.notes]
        if self.path is not None:
            lines.append(f"wrote {self.path} ({self.size_mb:.1f} MB)")
        return "\n".join(lines)


@dataclass
class Comparison:
    """Reference vs candidate on a set of images: pixel agreement, mean IoU of the candidate's labels against the
    reference's, and the mIoU of each against ground truth when every image has a mask."""

    images: int
    agreement: float
    iou_vs_float: float
    float_miou: float | None = None
    candidate_miou: float | None = None


def compare(
    reference: Segmenter,
    candidate: Segmenter,
    samples: Iterable[tuple[np.ndarray, np.ndarray | None]],
    num_classes: int,
    *,
    ignore_index: int = IGNORE_INDEX,
    class_names: Sequence[str] | None = None,
) -> Comparison:
    """Run both segmenters on every (image, mask-or-None) of `samples` (each with its own options) and compare
    their label maps at the image size."""
    vs_float = ConfusionMatrix(num_classes)
    truth = [ConfusionMatrix(num_classes, ignore_index=ignore_index, class_names=class_names) for _ in range(2)]
    equal = total = images = 0
    labelled = True
    for image, mask in samples:
        a, b = reference.predict_arrays([image])[0], candidate.predict_arrays([image])[0]
        equal += int((a == b).sum())
        total += a.size
        vs_float.update(b, a)
        images += 1
        if mask is None:
            labelled = False
            continue
        mask = np.asarray(mask)
        check_labels(mask, num_classes, ignore_index, "eval dataset")
        truth[0].update(a, mask.copy())
        truth[1].update(b, mask.copy())
    if not images:
        raise ValueError("no images to compare the export on")
    result = Comparison(images, equal / total, vs_float.compute()["mIoU"])
    if labelled:
        result.float_miou, result.candidate_miou = truth[0].compute()["mIoU"], truth[1].compute()["mIoU"]
    return result


def gate(
    agreement: float,
    min_agreement: float,
    *,
    force: bool,
    path: str | os.PathLike,
    report: Any,
    what: str = "the export's",
    hint: str = "a lower --min-agreement, or --force to write it anyway",
    rejected: type[ExportRejected] = ExportRejected,
) -> None:
    """Raise `rejected` (carrying `report`) when `agreement` is below `min_agreement` and not `force`; the caller
    writes nothing then."""
    if agreement >= min_agreement or force:
        return
    raise rejected(
        f"{what} labels agree with float on {100 * agreement:.2f}% of pixels, below the required "
        f"{100 * min_agreement:.2f}%: {path} not written ({hint})",
        report,
    )


# ---------------------------------------------------------------------------------------------------------------
# Images to check on
# ---------------------------------------------------------------------------------------------------------------
def image_files(
    source: str | os.PathLike | Sequence[str | os.PathLike], what: str = "calibration images"
) -> list[Path]:
    """Image files (sorted) of a folder (searched recursively), an image file, or a list of them."""
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{what}: {path}: no such file or folder")
    if not files:
        where = ", ".join(str(i) for i in items)
        raise ValueError(f"{what}: no images ({' '.join(IMAGE_SUFFIXES)}) in {where}")
    return files


def fit_size(height: int, width: int, limit: tuple[int, int]) -> tuple[int, int]:
    """(H, W) shrunk, keeping the aspect ratio, so the long side is <= max(limit) and the short side <= min(limit);
    smaller images keep their size."""
    factor = min(1.0, max(limit) / max(height, width), min(limit) / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def load_images(
    paths: Sequence[Path], size: tuple[int, int], unreadable: list[str], channels: int = 3
) -> list[np.ndarray]:
    """The images of `paths` as the model reads them (`imageio.read_image`: RGB, or `channels` bands of multi-band
    TIFF / .npy files), each shrunk to fit `size`; the first line of each read error (a file with another band
    count too) is appended to `unreadable` and the file skipped."""
    images = []
    for p in paths:
        try:
            image = read_image(p, channels)
        except (ImageReadError, OSError) as e:
            unreadable.append(str(e).splitlines()[0])
            continue
        h, w = fit_size(*image.shape[:2], size)
        if (h, w) != image.shape[:2]:
            image = _shrink(image, h, w)
        images.append(image)
    return images


def _shrink(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W, C) to (h, w, C): RGB uint8 by PIL's bilinear filter; bands of any other kind bilinearly with
    antialiasing in float32 (PIL holds neither 4 bands nor uint16 ones)."""
    if image.dtype == np.uint8 and image.shape[-1] == 3:
        return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    import torch

    x = torch.from_numpy(np.ascontiguousarray(image, np.float32)).permute(2, 0, 1)[None]  # (1, C, H, W)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).numpy()  # (h, w, C)


def dataset_samples(dataset: SampleSource, limit: int | None) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """(image, mask) of the first `limit` samples (all: None) of anything with `len` and `load(i)`."""
    for i in range(len(dataset) if limit is None else min(limit, len(dataset))):
        image, mask, _ = dataset.load(i)
        yield image, mask


def split_images(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    calib_count: int,
    check_count: int,
    size: tuple[int, int],
    seed: int,
    hold_out: bool,
    channels: int = 3,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(calibration images, held-out images) from the shuffled files of `source` (read as `load_images` reads them
    for a model of `channels` inputs), shrunk to fit `size`; with `hold_out` False (an eval dataset checks instead)
    nothing is held out."""
    files = image_files(source, "calibration images")
    order = np.random.default_rng(seed).permutation(len(files))
    files = [files[i] for i in order]
    if hold_out:
        if len(files) < 2:
            raise ValueError(
                f"calibration images: found {len(files)}; at least 2 are needed (some are held out to check the "
                "quantised model), or pass an eval dataset"
            )
        hold = min(check_count, len(files) - calib_count) if len(files) > calib_count else max(1, len(files) // 4)
        calib_files, check_files = files[: min(calib_count, len(files) - hold)], files[len(files) - hold :]
    else:
        calib_files, check_files = files[:calib_count], []
    unreadable: list[str] = []
    calib_images = load_images(calib_files, size, unreadable, channels)
    check_images = load_images(check_files, size, unreadable, channels)
    if not calib_images or (hold_out and not check_images):
        which, count = ("calibration", len(calib_files)) if not calib_images else ("held-out", len(check_files))
        raise ValueError(
            f"calibration images: none of the {count} {which} files could be read (first: {unreadable[0]})"
        )
    if unreadable:
        log.warning("skipped %d unreadable calibration images (first: %s)", len(unreadable), unreadable[0])
    return calib_images, check_images


def synthetic_images(
    count: int, size: int, seed: int = 0, stats: tuple[Sequence[float], Sequence[float]] | None = None
) -> list[np.ndarray]:
    """`count` synthetic scenes (`data.synth.render_scene`): what an export is checked on when no images of the
    user's are given. They catch a broken export; only the user's own images measure its accuracy. With `stats`
    (mean, std per channel of a model whose input is not RGB, e.g. 4 bands of uint16) the scenes' RGB, standardised,
    is repeated over that many channels and put on that scale (float32 (H, W, C))."""
    from ..data.synth import render_scene

    rng = np.random.default_rng(seed)
    scenes = [render_scene(rng, size)[0] for _ in range(count)]
    if stats is None:
        return scenes
    mean, std = (np.asarray(v, np.float32) for v in stats)
    channels = np.arange(len(mean)) % 3  # R, G, B, R, ... for every band the model takes
    return [((scene[..., channels] - 127.5) / 64.0 * std + mean).astype(np.float32) for scene in scenes]


@dataclass(frozen=True)
class CheckSet:
    """What an export is compared on: (image, mask-or-None) samples, the options to run them with, and a phrase
    saying where they came from."""

    samples: Any
    options: InferenceOptions
    source: str


def check_set(
    held_out: Sequence[np.ndarray] | None,
    eval_dataset: Any = None,
    eval_options: InferenceOptions | None = None,
    eval_max_samples: int | None = None,
    *,
    synthetic: int = 4,
    size: int = 256,
    stats: tuple[Sequence[float], Sequence[float]] | None = None,
) -> CheckSet:
    """The eval dataset (with its options; it gives the mIoU change), else the held-out images, else `synthetic`
    generated scenes (`stats`: as `synthetic_images`, for models whose input is not RGB); the images run at their
    own size."""
    if eval_dataset is not None:
        samples = dataset_samples(eval_dataset, eval_max_samples)
        return CheckSet(samples, eval_options or InferenceOptions(), "images of the eval dataset")
    if held_out:
        return CheckSet([(image, None) for image in held_out], InferenceOptions(), "held-out images")
    images = synthetic_images(synthetic, size, stats=stats)
    source = f"synthetic scenes of {size}x{size} (pass --check-images or --eval-dataset to check on yours)"
    return CheckSet([(image, None) for image in images], InferenceOptions(), source)
