"""The text of a `data check` report (its JSON is `DataReport.to_dict`), and the palette template of colour masks.

`text` is the report's sections in order, each a small function returning its lines (ending with a blank line when it
prints anything): header, splits, modes, rasters, mask values, mask colours, classes, findings.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from ...fileio import write_text
from ..labels import IGNORE, LabelConvention

if TYPE_CHECKING:  # annotations only: the report imports this module to format itself
    from .aggregate import DataReport

MAX_VALUES = 40  # mask values listed in the text (the JSON report has them all)
MAX_COLOURS = 20
MAX_CLASSES = 60
MAX_RASTERS = 20  # rasters listed per split

MODE_NAMES = {
    "L": "L (8-bit grey)",
    "P": "P (palette)",
    "RGB": "RGB (colour)",
    "RGBA": "RGBA (colour)",
    "I;16": "I;16 (16-bit)",
    "I": "I (32-bit)",
    "1": "1 (1-bit)",
}
FORMULAS = {
    "enet": "ENet: 1/ln(1.02 + p)",
    "median": "median frequency: median(n)/n",
    "inverse": "inverse frequency: N/(K n)",
}


def text(report: DataReport) -> str:
    """The whole report as text, as `segformer data check` prints it."""
    lines: list[str] = []
    for section in (_header, _splits, _modes, _rasters, _values, _colours, _classes, _findings):
        lines += section(report)
    return "\n".join(lines)


def _header(report: DataReport) -> list[str]:
    k = report.num_classes
    labels = LabelConvention.from_dict(report.labels)
    classes = f"{k} classes" if k is not None else "classes unknown"
    return [
        f"{report.dataset} at {report.root}: {classes}; labels: {labels.describe()}",
        f"scanned {sum(r.scanned for r in report.splits.values())} samples in {report.seconds:.1f}s "
        f"({report.images_per_second:.0f} images/s, {report.workers} worker{'s' if report.workers != 1 else ''})",
        "",
    ]


def _splits(report: DataReport) -> list[str]:
    lines = [
        f"{'split':<14}{'images':>8}{'no mask':>9}{'orphans':>9}{'unreadable':>12}{'size diff':>11}"
        "  image sizes HxW min/median/max"
    ]
    for name, r in report.splits.items():
        if r.error:
            lines.append(f"{name:<14}  {r.error}")
            continue
        sizes = "/".join(f"{s[0]}x{s[1]}" for s in (r.size_min, r.size_median, r.size_max) if s) or "-"
        lines.append(
            f"{name:<14}{r.images:>8}{len(r.missing_masks):>9}{len(r.orphan_masks):>9}{len(r.unreadable):>12}"
            f"{len(r.size_mismatches):>11}  {sizes}"
        )
    return [*lines, ""]


def _modes(report: DataReport) -> list[str]:
    masks, images = report.mode_counts(), report.mode_counts(images=True)
    lines = [
        "mask modes:  " + ", ".join(f"{MODE_NAMES.get(m, m)} {n}" for m, n in masks.most_common()),
        "image modes: " + ", ".join(f"{m} {n}" for m, n in images.most_common()),
    ]
    split_stats = [r for r in report.splits.values() if r.mean]
    if split_stats:
        r = split_stats[0]
        lines.append(
            f"channel mean/std (RGB, 0..255, '{r.name}'): mean {' '.join(f'{v:.1f}' for v in r.mean or [])}, "
            f"std {' '.join(f'{v:.1f}' for v in r.std or [])}"
        )
    return [*lines, ""]


def _rasters(report: DataReport) -> list[str]:
    """Each raster pair: its grid, bands and how much of it has no data."""
    lines = []
    for name, r in report.splits.items():
        for g in r.rasters[:MAX_RASTERS]:
            (rx, ry), (h, w) = g["resolution"], g["size"]
            lines.append(
                f"  [{name}] {g['name']}: {g['crs']}, {w}x{h} pixels of {rx:g} x {ry:g} {g['units']}, {g['bands']}, "
                f"{100 * g['nodata']:.1f}% nodata"
            )
        if len(r.rasters) > MAX_RASTERS:
            lines.append(f"  [{name}] ... {len(r.rasters) - MAX_RASTERS} more rasters (see --json)")
    return ["rasters:", *lines, ""] if lines else []


def _values(report: DataReport) -> list[str]:
    values: Counter[int] = Counter()
    value_images: Counter[int] = Counter()
    for r in report.splits.values():
        for v, (p, n) in r.values.items():
            values[v] += p
            value_images[v] += n
    if not values:
        return []
    lut = LabelConvention.from_dict(report.labels).lut
    total = sum(values.values())
    lines = ["mask values (all splits):", f"  {'value':>6} {'pixels':>12} {'share':>7} {'images':>7}  class"]
    shown = sorted(values)
    for v in shown[:MAX_VALUES]:
        cls = _value_class(report, int(lut[v]) if v <= 255 else None, v)
        lines.append(f"  {v:>6} {values[v]:>12} {100 * values[v] / total:>6.2f}% {value_images[v]:>7}  {cls}")
    if len(shown) > MAX_VALUES:
        lines.append(f"  ... {len(shown) - MAX_VALUES} more values (see --json)")
    return [*lines, ""]


def _value_class(report: DataReport, target: int | None, value: int) -> str:
    """What stored `value` becomes: its class, ignore, or nothing the model has (`target`: its id after the labels)."""
    k, names = report.num_classes, report.class_names or []
    if target is None:
        return "(beyond 8 bits)"
    if target == IGNORE:
        return "ignore"
    if k is not None and target < k:
        return f"{target} {names[target]}" if target != value else names[target]
    return f"-> {target}: not a class" if target != value else "not a class"


def _colours(report: DataReport) -> list[str]:
    colours = colour_pixels(report)
    if not colours:
        return []
    total = sum(colours.values())
    lines = [f"mask colours (all splits, {len(colours)} distinct):"]
    lines += [f"  ({c}) {100 * p / total:.2f}%" for c, p in colours.most_common(MAX_COLOURS)]
    return [*lines, ""]


def _classes(report: DataReport) -> list[str]:
    k, names, split = report.num_classes, report.class_names or [], report.weight_split
    if k is None or split is None:
        return []
    counts = report.splits[split].pixel_counts
    images_per = report.splits[split].image_counts
    weights = report.class_weights or [0.0] * k
    total = sum(counts[:k]) or 1
    lines = [f"classes in '{split}': pixels, images, suggested weight ({FORMULAS[report.weight_method]}):"]
    for i in range(min(k, MAX_CLASSES)):
        lines.append(
            f"  {i:>3} {names[i][:24]:<24} {counts[i]:>12} {100 * counts[i] / total:>6.2f}% "
            f"{images_per[i]:>6} img  w={weights[i]:.3f}"
        )
    if k > MAX_CLASSES:
        lines.append(f"  ... {k - MAX_CLASSES} more classes (see --json)")
    return [*lines, ""]


def _findings(report: DataReport) -> list[str]:
    n = len(report.problems)
    verdict = "clean: no problems found" if report.ok else f"{n} problem{'s' if n != 1 else ''} found"
    return [*(d.line() for d in report.diagnoses), verdict]


def colour_pixels(report: DataReport) -> Counter[str]:
    """Pixels per mask colour ("r,g,b") over all splits."""
    colours: Counter[str] = Counter()
    for r in report.splits.values():
        for c, (p, _) in r.colours.items():
            colours[c] += p
    return colours


def write_palette_template(report: DataReport, path: str | Path) -> Path:
    """The colours the masks hold as a palette CSV to edit (black first, then by pixel count), atomically."""
    colours = colour_pixels(report)
    if not colours:
        raise ValueError("--write-palette: the masks hold no colours (they are not RGB colour masks)")
    order = sorted(colours, key=lambda c: (c != "0,0,0", -colours[c]))
    return write_text(path, "name,r,g,b\n" + "".join(f"class_{i},{c}\n" for i, c in enumerate(order)))
