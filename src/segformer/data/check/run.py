"""`check_dataset`: list the splits of a layout, build and scan each, add the scan up, and run the rules."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..datasets import SegmentationDataset
from ..labels import LabelConvention, LabelError
from ..layouts import Layout, build_dataset, folder_class_names, layout_of
from ..raster import RasterDataset
from .aggregate import WEIGHT_METHODS, DataReport, SplitReport, Totals, class_weights, training_split
from .rules import diagnose
from .scan import Summary, default_workers, scan, scan_rasters


def check_dataset(
    name: str,
    root: str | Path,
    splits: Sequence[str] | None = None,
    *,
    num_classes: int | None = None,
    labels: LabelConvention | None = None,
    image_column: str | None = None,
    mask_column: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    weight_method: str = "enet",
) -> DataReport:
    """Scan every split (or `splits`) of dataset `name` at `root` and report; see `segformer.data.check`.

    Arguments are those of `build_dataset`. Raises (ValueError, FileNotFoundError) only for bad arguments:
    an unknown layout, a missing root, a malformed palette; everything found in the data goes in the report.
    """
    if weight_method not in WEIGHT_METHODS:
        raise ValueError(f"unknown class weight method {weight_method!r}; choose one of {', '.join(WEIGHT_METHODS)}")
    layout, labels = layout_of(name), labels or LabelConvention()
    start = time.perf_counter()
    names = _split_names(layout, root, splits)
    k_unknown = not _class_names_known(layout, root, num_classes, labels)
    options = {"num_classes": 255 if k_unknown else num_classes, "skip_bad": True, "labels": labels,
               "image_column": image_column, "mask_column": mask_column}  # fmt: skip
    reports, totals = _scan_splits(layout, root, names, options, workers, progress)
    seconds = time.perf_counter() - start
    info = next((t.dataset.info for t in totals.values()), None)
    k = None if k_unknown or info is None else info.num_classes
    train = training_split(reports)
    report = DataReport(
        dataset=name,
        root=str(root),
        labels=labels.to_dict(),
        num_classes=k,
        class_names=list(info.class_names) if k is not None and info is not None else None,
        splits=reports,
        diagnoses=[],
        class_weights=_weights(reports, k, train, weight_method),
        weight_method=weight_method,
        weight_split=train,
        seconds=round(seconds, 3),
        images_per_second=round(sum(r.scanned for r in reports.values()) / seconds, 1) if seconds > 0 else 0.0,
        workers=_workers_used(totals, workers),
    )
    report.diagnoses = diagnose(report, totals, labels, k_unknown=k_unknown)
    return report


def _workers_used(totals: dict[str, Totals], workers: int | None) -> int:
    """The reader processes the scan ran with: rasters are read in one, strip by strip."""
    if any(isinstance(t.dataset, RasterDataset) for t in totals.values()):
        return 1
    return default_workers() if workers is None else workers


def _split_names(layout: Layout, root: str | Path, splits: Sequence[str] | None) -> list[str]:
    """`splits` (each checked against the layout's splits at `root`, aliases allowed), else all of them."""
    known = layout.splits(root)
    if not splits:
        return known
    unknown = [s for s in splits if not layout.has_split(s, known)]
    if unknown:
        raise ValueError(f"{root}: no split {unknown[0]!r} (splits: {', '.join(known)})")
    return list(splits)


def _scan_splits(
    layout: Layout, root: str | Path, splits: list[str], options: dict[str, Any], workers: int | None, progress: bool
) -> tuple[dict[str, SplitReport], dict[str, Totals]]:
    """Each split built (`build_dataset` with `options`) and scanned; a split that cannot be built is reported, not
    raised, unless the arguments are at fault."""
    reports: dict[str, SplitReport] = {}
    totals: dict[str, Totals] = {}
    with _quiet():
        for split in splits:
            try:
                ds = build_dataset(layout.name, root, split, **options)
            except (FileNotFoundError, ValueError) as e:
                if layout.rows or isinstance(e, LabelError):  # columns, class names, palette: the arguments
                    raise
                reports[split] = SplitReport(split, error=str(e), orphan_masks=_orphan_masks(layout, root, split, None))
                continue
            reports[split], totals[split] = _scan_split(layout, root, split, ds, workers, progress)
    return reports, totals


def _class_names_known(layout: Layout, root: str | Path, num_classes: int | None, labels: LabelConvention) -> bool:
    """False when a layout with a class names file has none and nothing else names the classes (a finding); other
    class-name mistakes (a count that disagrees) are argument errors, raised."""
    if layout.class_names_file is None:
        return True
    try:
        folder_class_names(Path(root).expanduser(), num_classes, labels, layout.class_names_file)
    except FileNotFoundError:
        return False
    return True


@contextmanager
def _quiet() -> Iterator[None]:
    """No "no mask, skipped" warning per image while building: the report lists them."""
    logger = logging.getLogger("segformer")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _scan_split(
    layout: Layout,
    root: str | Path,
    split: str,
    ds: SegmentationDataset | RasterDataset,
    workers: int | None,
    progress: bool,
) -> tuple[SplitReport, Totals]:
    summaries: Iterator[Summary]
    if isinstance(ds, RasterDataset):  # whole rasters, pair by pair (its samples are windows)
        images, summaries = len(ds.samples), scan_rasters(ds, progress=progress, desc=f"check {split}")
    else:
        images, summaries = len(ds), scan(ds, workers=workers, progress=progress, desc=f"check {split}")
    report = SplitReport(split, images=images + len(ds.missing))
    report.missing_masks = [_short(p, root) for p, _ in ds.missing]
    report.orphan_masks = _orphan_masks(layout, root, split, ds)
    total = Totals(ds)
    for summary in summaries:
        total.add(summary, report)
    total.finish(report)
    return report, total


def _orphan_masks(
    layout: Layout, root: str | Path, split: str, dataset: SegmentationDataset | RasterDataset | None
) -> list[str]:
    """Mask files in ROOT/<masks folder>/SPLIT that no image uses (layouts with one mask file per image)."""
    mask_dir = Path(root).expanduser() / layout.masks.folder / split
    if not layout.orphan_masks or not mask_dir.is_dir():
        return []
    used = {m for _, m in dataset.samples} if dataset is not None else set()
    return [
        p.relative_to(mask_dir).as_posix()
        for p in sorted(mask_dir.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and p not in used
    ]


def _short(path: Path, root: str | Path) -> str:
    try:
        return Path(path).relative_to(Path(root).expanduser()).as_posix()
    except ValueError:
        return str(path)


def _weights(reports: dict[str, SplitReport], k: int | None, train: str | None, method: str) -> list[float] | None:
    """The suggested class weights, from the training split's pixel counts."""
    if k is None or train is None or not reports[train].pixel_counts:
        return None
    return [round(float(w), 4) for w in class_weights(reports[train].pixel_counts[:k], method)]
