"""Robustness to image corruptions (the paper's Table 5, Cityscapes-C): mIoU on corrupted copies of the val images.

The corrupted images are made on the fly, image by image, with `imagecorruptions` (Hendrycks & Dietterich's
ImageNet-C code as packaged by the Bethge lab; the `robustness` extra installs its maintained fork
`imagecorruptions-imaug`, same module and functions, because the original 1.1.2 no longer imports beside current
setuptools, numpy 2 and scikit-image). The 16 corruptions are the paper's, in its four families. Every image gets
its own seed from (seed, image index, corruption, severity), so two runs give the same images whatever the number of
processes or workers, and under torchrun each process corrupts only its own share and the confusion matrices are
summed exactly (`evaluate_confusion`).

The paper evaluates noise at severities 1-3 and the rest at 1-5; `--severity all` runs 1-5 for every corruption, so
the table shows the paper's subset and more.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..protocol import InferenceOptions
from .evaluate import evaluate_confusion

# The paper's Table 5: corruption -> family, in its column order.
FAMILIES: dict[str, str] = {
    "motion_blur": "blur",
    "defocus_blur": "blur",
    "glass_blur": "blur",
    "gaussian_blur": "blur",
    "gaussian_noise": "noise",
    "impulse_noise": "noise",
    "shot_noise": "noise",
    "speckle_noise": "noise",
    "brightness": "digital",
    "contrast": "digital",
    "saturate": "digital",
    "jpeg_compression": "digital",
    "snow": "weather",
    "spatter": "weather",
    "fog": "weather",
    "frost": "weather",
}
SEVERITIES = (1, 2, 3, 4, 5)
INSTALL = "pip install 'segformer[robustness]'"


def corruption_module() -> Any:
    """The `imagecorruptions` module; without it a RuntimeError that names the extra to install (as the other
    extras do)."""
    try:
        import imagecorruptions
    except ModuleNotFoundError as e:
        if e.name not in ("imagecorruptions", None):  # installed, but a dependency of its own is missing
            raise RuntimeError(f"imagecorruptions cannot import {e.name!r}: reinstall the extra: {INSTALL}") from None
        raise RuntimeError(f"--corruption needs the robustness extra: {INSTALL}") from None
    except ImportError as e:  # opencv-python's system libraries on a minimal Linux
        raise RuntimeError(
            f"imagecorruptions is installed but OpenCV cannot load ({e.msg.splitlines()[0]}); on a minimal Linux "
            f"install its system libraries: apt-get install libgl1 libglib2.0-0"
        ) from None
    return imagecorruptions


def parse_corruptions(text: str) -> tuple[str, ...]:
    """'all', one name or a comma-separated list -> corruption names; anything else: one line with the valid ones."""
    if text.strip().lower() == "all":
        return tuple(FAMILIES)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        given = ", ".join(map(repr, unknown)) or repr(text)
        raise ValueError(f"unknown corruption {given}; valid: all, " + ", ".join(FAMILIES))
    return names


def parse_severities(text: str) -> tuple[int, ...]:
    """'all', one severity or a comma-separated list of 1..5; anything else: one line with the valid ones."""
    if text.strip().lower() == "all":
        return SEVERITIES
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v not in SEVERITIES for v in values):
        raise ValueError(f"severity {text!r} is out of range; valid: all, " + ", ".join(map(str, SEVERITIES)))
    return values


def image_seed(seed: int, index: int, corruption: str, severity: int) -> int:
    """The seed of one corrupted image: the same for the same (seed, image, corruption, severity), and independent
    of the order images are read in."""
    key = [seed, index, list(FAMILIES).index(corruption), severity]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """A corrupted copy of an RGB uint8 (H, W, 3) image (H, W >= 32), the same for the same seed.

    `imagecorruptions` draws from numpy's global generator (and two corruptions take a `seed`): the global state
    is seeded for the call and put back afterwards."""
    module = corruption_module()
    parse_corruptions(corruption)
    parse_severities(str(severity))
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"corruptions need RGB uint8 (H, W, 3) images, got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < 32:
        raise ValueError(f"an image of {image.shape[1]}x{image.shape[0]} is too small to corrupt (at least 32x32)")
    function = module.corruption_dict[corruption]
    kwargs = {"seed": seed} if "seed" in inspect.signature(function).parameters else {}
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        out = module.corrupt(np.ascontiguousarray(image), severity=severity, corruption_name=corruption, **kwargs)
    finally:
        np.random.set_state(state)
    return np.ascontiguousarray(out[: image.shape[0], : image.shape[1], :3], dtype=np.uint8)


class CorruptedDataset:
    """`dataset` with every image corrupted on load (`load(i)` -> (corrupted image, mask, name)); everything else
    (class names, ignore index, sample paths) is the dataset's own."""

    def __init__(self, dataset: Any, corruption: str, severity: int, seed: int = 0) -> None:
        corruption_module()
        parse_corruptions(corruption)
        parse_severities(str(severity))
        self.dataset, self.corruption, self.severity, self.seed = dataset, corruption, severity, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        image, mask, name = self.dataset.load(index)
        seed = image_seed(self.seed, index, self.corruption, self.severity)
        return corrupt_image(image, self.corruption, self.severity, seed), mask, name


def evaluate_robustness(
    model: nn.Module,
    dataset: Any,
    options: InferenceOptions | None = None,
    corruptions: Sequence[str] = tuple(FAMILIES),
    severities: Sequence[int] = SEVERITIES,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    max_samples: int | None = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """mIoU on the clean images and on every (corruption, severity), with the summaries of `summarize`."""
    corruption_module()
    run = {"device": device, "progress": progress, "max_samples": max_samples, "num_workers": num_workers}
    clean = evaluate_confusion(model, dataset, options, **run).compute()["mIoU"]
    table: dict[str, dict[int, float]] = {}
    for name in corruptions:
        table[name] = {}
        for severity in severities:
            corrupted = CorruptedDataset(dataset, name, severity, seed)
            table[name][severity] = evaluate_confusion(model, corrupted, options, **run).compute()["mIoU"]
    return summarize(clean, table, seed)


def _mean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def summarize(clean: float, table: dict[str, dict[int, float]], seed: int = 0) -> dict[str, Any]:
    """{"clean", "table" (corruption -> severity -> mIoU), "mean" (per corruption, over its severities), "relative"
    (that mean / clean), "families" (family -> mean of its corruptions' means), "family_relative", "seed"}."""
    means = {name: _mean(list(row.values())) for name, row in table.items()}
    families: dict[str, list[float]] = {}
    for name, value in means.items():
        families.setdefault(FAMILIES[name], []).append(value)
    family_means = {family: _mean(values) for family, values in families.items()}
    return {
        "clean": clean,
        "table": table,
        "mean": means,
        "relative": {name: value / clean if clean else math.nan for name, value in means.items()},
        "families": family_means,
        "family_relative": {f: value / clean if clean else math.nan for f, value in family_means.items()},
        "seed": seed,
    }


def format_robustness(result: dict[str, Any]) -> str:
    """The table as text, mIoU in %: one row per corruption (family, each severity, mean, mean / clean), then the
    family means."""
    severities = sorted({s for row in result["table"].values() for s in row})
    head = f"{'corruption':<17} {'family':<8} " + " ".join(f"{f's{s}':>6}" for s in severities)
    lines = [head + f" {'mean':>6} {'rel.':>6}", "-" * (len(head) + 14)]
    lines.append(f"{'clean':<17} {'':<8} " + " ".join(f"{100 * result['clean']:6.2f}" for _ in severities))
    for name, row in result["table"].items():
        cells = " ".join(f"{100 * row[s]:6.2f}" if s in row else f"{'-':>6}" for s in severities)
        lines.append(
            f"{name:<17} {FAMILIES[name]:<8} {cells} {100 * result['mean'][name]:6.2f} {result['relative'][name]:6.3f}"
        )
    lines.append("-" * (len(head) + 14))
    for family, value in result["families"].items():
        lines.append(f"{'mean ' + family:<26} {100 * value:6.2f}  ({result['family_relative'][family]:.3f} of clean)")
    return "\n".join(lines)


def to_json(result: dict[str, Any]) -> dict[str, Any]:
    """The result with string keys for the severities (JSON objects)."""
    out = dict(result)
    out["table"] = {name: {str(s): v for s, v in row.items()} for name, row in result["table"].items()}
    return out
