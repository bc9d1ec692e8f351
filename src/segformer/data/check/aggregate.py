"""Adding up the scan into the report: per-split `SplitReport`s inside one `DataReport` (what `data check` prints
and writes as JSON), the class pixel counts, and the class weights suggested from them.

Class weights (`class_weights`): ENet's w_c = 1 / ln(1.02 + p_c), p_c = pixels of class c / labelled pixels
(Paszke et al. 2016, arXiv:1606.02147), bounded to [1.42, 50.5]. "median" (median frequency balancing with
freq_c = n_c / N) and "inverse" (N / (K n_c), sklearn's "balanced") are there too. Classes without pixels get 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...fileio import write_json
from ..datasets import SegmentationDataset
from ..labels import LabelConvention
from . import render
from .scan import Summary, colour_text, scan

WEIGHT_METHODS = ("enet", "median", "inverse")
SEVERITIES = ("error", "problem", "warning", "note")  # error/problem -> exit 1
FAILING = SEVERITIES[:2]


# -------------------------------------------------------------------------------------------- class weights
def class_weights(pixel_counts: Sequence[int] | np.ndarray, method: str = "enet") -> np.ndarray:
    """Per-class loss weights from labelled-pixel counts (ignore excluded), float64 (K,).

    - "enet": 1 / ln(1.02 + p_c) with p_c = n_c / sum(n) (ENet); in [1.42, 50.5].
    - "median": median(n over present classes) / n_c (median frequency balancing, frequencies over all pixels).
    - "inverse": sum(n) / (K_present * n_c) (inverse frequency, "balanced").
    A class with no pixels gets weight 0 (nothing of it to weigh). All zeros when nothing is labelled.
    """
    n = np.asarray(pixel_counts, dtype=np.float64)
    if n.ndim != 1 or (n < 0).any():
        raise ValueError("class_weights: pixel_counts must be a 1-D sequence of non-negative counts")
    if method not in WEIGHT_METHODS:
        raise ValueError(f"class_weights: unknown method {method!r}; choose one of {', '.join(WEIGHT_METHODS)}")
    weights = np.zeros_like(n)
    present = n > 0
    total = n.sum()
    if total == 0:
        return weights
    if method == "enet":
        weights[present] = 1.0 / np.log(1.02 + n[present] / total)
    elif method == "median":
        weights[present] = np.median(n[present]) / n[present]
    else:
        weights[present] = total / (present.sum() * n[present])
    return weights


def class_pixel_counts(
    dataset: SegmentationDataset, *, workers: int | None = None, progress: bool = True
) -> np.ndarray:
    """Labelled pixels per class id 0..K-1 of `dataset` after its label convention, reading the masks only (in
    `workers` processes): the counts `class_weights` takes, e.g. for training's class weights. Unreadable masks are
    left out (`check_dataset` lists them)."""
    totals, report = Totals(dataset), SplitReport("counts")
    for summary in scan(dataset, workers=workers, progress=progress, mode="masks", desc="count labels"):
        totals.add(summary, report)
    return totals.mapped[: dataset.num_classes].copy()


# ------------------------------------------------------------------------------------------------- report
@dataclass
class Finding:
    """One finding of a rule: a one-line message, the flag that fixes it (if one does), and how bad it is."""

    code: str
    message: str
    fix: str | None = None
    severity: str = "problem"
    split: str | None = None

    def line(self) -> str:
        where = f"[{self.split}] " if self.split else ""
        return f"{self.severity}: {where}{self.message}"


@dataclass
class SplitReport:
    """What one split holds. Label values are the raw file values; `pixel_counts`/`image_counts` are per class
    id after the layout's mapping and the label convention (index K.. = not a class, 255 = ignore)."""

    name: str
    images: int = 0
    scanned: int = 0
    error: str | None = None
    missing_masks: list[str] = field(default_factory=list)
    orphan_masks: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    size_mismatches: list[str] = field(default_factory=list)
    other_errors: list[str] = field(default_factory=list)
    image_modes: dict[str, int] = field(default_factory=dict)
    mask_modes: dict[str, int] = field(default_factory=dict)
    values: dict[int, list[int]] = field(default_factory=dict)  # raw value -> [pixels, images]
    colours: dict[str, list[int]] = field(default_factory=dict)  # "r,g,b" -> [pixels, images]
    pixel_counts: list[int] = field(default_factory=list)  # 256 entries, by id after the mapping
    image_counts: list[int] = field(default_factory=list)
    size_min: tuple[int, int] | None = None  # (H, W)
    size_median: tuple[int, int] | None = None
    size_max: tuple[int, int] | None = None
    mean: list[float] | None = None  # per RGB channel, 0..255
    std: list[float] | None = None
    rasters: list[dict[str, Any]] = field(default_factory=list)  # per raster pair: scan.raster_summary's facts
    band_mean: list[float] | None = None  # rasters: per band, over the pixels with data (what --in-channels stores)
    band_std: list[float] | None = None
    band_mismatches: list[str] = field(default_factory=list)  # rasters with other bands than the split's first

    @property
    def readable(self) -> int:
        return self.scanned - len(self.unreadable) - len(self.size_mismatches) - len(self.other_errors)


@dataclass
class DataReport:
    """Everything `check_dataset` found; `ok` is False when there is an error or a problem."""

    dataset: str
    root: str
    labels: dict[str, Any]
    num_classes: int | None
    class_names: list[str] | None
    splits: dict[str, SplitReport]
    diagnoses: list[Finding]
    class_weights: list[float] | None = None
    weight_method: str = "enet"
    weight_split: str | None = None
    seconds: float = 0.0
    images_per_second: float = 0.0
    workers: int = 0

    @property
    def ok(self) -> bool:
        return not any(d.severity in FAILING for d in self.diagnoses)

    @property
    def problems(self) -> list[Finding]:
        return [d for d in self.diagnoses if d.severity in FAILING]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for split in out["splits"].values():
            split["values"] = {str(k): v for k, v in split["values"].items()}
        out["ok"] = self.ok
        return out

    def write_json(self, path: str | Path) -> Path:
        """The whole report as JSON, written to a temporary file and renamed (never half-written)."""
        return write_json(path, self.to_dict())

    def format(self) -> str:
        """The text report `segformer data check` prints."""
        return render.text(self)

    def mode_counts(self, images: bool = False) -> Counter[str]:
        """How many masks (or images) of each PIL mode all splits hold."""
        c: Counter[str] = Counter()
        for r in self.splits.values():
            c.update(r.image_modes if images else r.mask_modes)
        return c


Diagnosis = Finding  # the name before data check became rules


# ----------------------------------------------------------------------------------------------- aggregate
class Totals:
    """The running sums of one split."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset
        self.hist = np.zeros(256, np.int64)
        self.hist_images = np.zeros(256, np.int64)
        self.big: Counter[int] = Counter()
        self.big_images: Counter[int] = Counter()
        self.colours: Counter[int] = Counter()
        self.colour_images: Counter[int] = Counter()
        self.unknown_colours: Counter[int] = Counter()
        self.unknown_examples: dict[int, str] = {}
        self.mapped = np.zeros(256, np.int64)
        self.mapped_images = np.zeros(256, np.int64)
        self.channels = np.zeros((3, 256), np.int64)
        self.sizes: list[tuple[int, int]] = []
        self.image_modes: Counter[str] = Counter()
        self.mask_modes: Counter[str] = Counter()
        self.band_sums: np.ndarray | None = None  # rasters: (3, C) sum, sum of squares, count per band

    def add(self, s: Summary, report: SplitReport) -> None:
        report.scanned += 1
        if s.error is not None:
            {"unreadable": report.unreadable, "size": report.size_mismatches, "missing": report.missing_masks}.get(
                s.error_kind or "", report.other_errors
            ).append(s.error if s.error_kind != "missing" else s.name)
            return
        if s.image_mode is None:  # decode-only summaries
            return
        self.image_modes[s.image_mode] += 1
        self.mask_modes[s.mask_mode or "?"] += 1
        if s.size is not None:
            self.sizes.append(s.size)
        if s.channels is not None:
            self.channels += s.channels
        if s.raster is not None:
            self._add_raster(s, report)
        labels: LabelConvention = self.dataset.labels
        table = self.dataset.table_of(s.index)
        raw_ids: np.ndarray | None = None
        if s.hist is not None:
            self.hist += s.hist
            present = s.hist > 0
            self.hist_images += present
            if s.big:
                self.big.update(s.big)
                self.big_images.update(dict.fromkeys(s.big, 1))
                return  # values beyond 8 bits: not mapped (an error is reported for them)
            raw_ids = s.hist
        elif s.colour_codes is not None:
            codes, counts = s.colour_codes, s.colour_counts
            assert counts is not None
            self.colours.update(dict(zip(codes.tolist(), counts.tolist(), strict=True)))
            self.colour_images.update(dict.fromkeys(codes.tolist(), 1))
            if labels.palette is not None:
                known, rows = _palette_rows(labels, codes)
                for code in codes[~known].tolist():
                    self.unknown_colours[code] += 1
                    self.unknown_examples.setdefault(code, s.name)
                raw_ids = np.bincount(rows[known], weights=counts[known], minlength=256).astype(np.int64)
        if raw_ids is not None:
            mapped = np.bincount(table, weights=raw_ids, minlength=256).astype(np.int64)
            self.mapped += mapped
            self.mapped_images += mapped > 0

    def _add_raster(self, s: Summary, report: SplitReport) -> None:
        """A raster pair's facts and band sums (a raster with other bands than the split's first is listed)."""
        report.rasters.append(s.raster or {})
        sums = s.band_sums
        if sums is None:
            return
        if self.band_sums is not None and self.band_sums.shape != sums.shape:
            report.band_mismatches.append(f"{s.name} ({s.image_mode})")
            return
        self.band_sums = sums if self.band_sums is None else self.band_sums + sums

    def finish(self, report: SplitReport) -> None:
        report.image_modes = dict(self.image_modes)
        report.mask_modes = dict(self.mask_modes)
        values = {int(v): [int(self.hist[v]), int(self.hist_images[v])] for v in np.flatnonzero(self.hist)}
        values.update({v: [int(c), int(self.big_images[v])] for v, c in sorted(self.big.items())})
        report.values = values
        report.colours = {
            colour_text(code): [int(c), int(self.colour_images[code])] for code, c in self.colours.most_common()
        }
        report.pixel_counts = self.mapped.tolist()
        report.image_counts = self.mapped_images.tolist()
        if self.sizes:
            sizes = np.array(self.sizes)
            areas = sizes[:, 0] * sizes[:, 1]
            order = np.argsort(areas, kind="stable")
            report.size_min = tuple(int(v) for v in sizes[order[0]])  # type: ignore[assignment]
            report.size_median = tuple(int(v) for v in sizes[order[len(order) // 2]])  # type: ignore[assignment]
            report.size_max = tuple(int(v) for v in sizes[order[-1]])  # type: ignore[assignment]
        total = self.channels.sum(axis=1)
        if total.all():
            levels = np.arange(256, dtype=np.float64)
            mean = (self.channels * levels).sum(axis=1) / total
            var = (self.channels * levels**2).sum(axis=1) / total - mean**2
            report.mean = [round(float(m), 3) for m in mean]
            report.std = [round(float(np.sqrt(max(v, 0.0))), 3) for v in var]
        if self.band_sums is not None and self.band_sums[2, 0] > 0:
            total, squares, count = self.band_sums
            mean = total / count
            report.band_mean = [float(m) for m in mean]
            report.band_std = [float(v) for v in np.sqrt(np.maximum(squares / count - mean * mean, 0.0))]


def _palette_rows(labels: LabelConvention, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sorted_codes, rows = labels.palette_codes
    pos = np.searchsorted(sorted_codes, codes).clip(0, len(sorted_codes) - 1)
    known = sorted_codes[pos] == codes
    return known, rows[pos].astype(np.int64)


def training_split(reports: dict[str, SplitReport]) -> str | None:
    usable = [s for s, r in reports.items() if r.pixel_counts and sum(r.pixel_counts) > 0]
    for preferred in ("train", "training", "train2017", "train_aug", "aug"):
        if preferred in usable:
            return preferred
    return usable[0] if usable else None
