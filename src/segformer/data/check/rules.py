"""The findings of `data check`, built as a linter: each rule is a small function `rule(facts) -> Finding | None`
and one row of `RULES`, and `diagnose` walks the table in order (most serious first).

`Facts` is the report plus what the rules read from it, added up once over the splits (stored values, colours,
ids after the mapping). A rule marked `per_split` is called once per split with `facts.split` set; consecutive
per-split rows run split by split. Adding a check is one function here and one row of `RULES`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..labels import IGNORE, LabelConvention
from .aggregate import DataReport, Finding, SplitReport, Totals
from .scan import colour_text

DOMINANT_SHARE = 0.9  # one class above this share of labelled pixels -> suggest class weights
MAX_NAMES = 10  # class names listed per finding in the text report (the JSON report has them all)
MOSTLY_NODATA = 0.5  # a raster with more of its pixels without data than this gets a warning
VOID_WORDS = ("background", "other", "others", "unlabeled", "unlabelled", "void", "ignore", "none", "bg")


# --------------------------------------------------------------------------------------------------- facts
@dataclass(frozen=True)
class Facts:
    """What every rule may read: the report, and sums over all splits that the report does not keep."""

    report: DataReport
    labels: LabelConvention
    k_unknown: bool  # no class names: scanned as if 255 classes
    raw_values: Counter[int]  # stored mask value -> pixels
    colours: Counter[int]  # colour code (r<<16|g<<8|b) of colour masks -> pixels
    unknown: Counter[int]  # colour codes not in the palette file -> masks
    unknown_examples: dict[int, str]  # colour code -> a mask holding it
    mapped: np.ndarray  # (256,) pixels per id after the layout's and the user's mapping
    grey_layout: bool  # no layout maps stored values itself (values are what the user's flags see)
    stored: dict[int, list[int]]  # id after the mapping -> the stored values that become it
    split: str | None = None  # the split a per-split rule looks at

    @property
    def k(self) -> int | None:
        return self.report.num_classes

    @property
    def names(self) -> list[str]:
        return self.report.class_names or []

    @property
    def train(self) -> str | None:
        """The split the class statistics and weights come from."""
        return self.report.weight_split

    @property
    def rasters(self) -> bool:
        """The dataset is rasters (`--dataset raster`): label nodata is what marks unlabelled pixels."""
        return any(r.rasters for r in self.report.splits.values())

    @property
    def labelled(self) -> bool:
        """Any mask value was read (rules about labels have something to say)."""
        return bool(self.mapped.any() or self.raw_values)

    @cached_property
    def valid(self) -> list[int]:
        """Ids present after the mapping, ignore left out."""
        return [int(v) for v in np.flatnonzero(self.mapped) if v != IGNORE]

    @cached_property
    def raw8(self) -> set[int]:
        return {v for v in self.raw_values if v <= 255}

    @cached_property
    def beyond(self) -> list[int]:
        """Ids after the mapping that are neither a class nor ignore."""
        return [v for v in self.valid if self.k is not None and v >= self.k]

    @property
    def binary(self) -> bool:
        """Grey masks holding only 0 and 255 in a layout that does not map them."""
        return bool(self.raw8) and self.raw8 <= {0, 255} and 255 in self.raw8 and self.grey_layout

    @property
    def classes_known(self) -> bool:
        """Labels were read and the classes are known: the label rules apply."""
        return self.labelled and self.k is not None and not self.k_unknown

    def train_counts(self) -> np.ndarray:
        assert self.train is not None and self.k is not None
        return np.asarray(self.report.splits[self.train].pixel_counts[: self.k])

    @property
    def split_report(self) -> SplitReport:
        assert self.split is not None, "a per-split rule"
        return self.report.splits[self.split]


def gather(report: DataReport, totals: dict[str, Totals], labels: LabelConvention, k_unknown: bool) -> Facts:
    """The facts of a scanned dataset (`totals`: the running sums of each split that was read)."""
    raw_values: Counter[int] = Counter()
    colours: Counter[int] = Counter()
    unknown: Counter[int] = Counter()
    examples: dict[int, str] = {}
    mapped = np.zeros(256, np.int64)
    for split, t in totals.items():
        for v, (pixels, _) in report.splits[split].values.items():
            raw_values[v] += pixels
        colours.update(t.colours)
        unknown.update(t.unknown_colours)
        for code, example in t.unknown_examples.items():
            examples.setdefault(code, example)
        mapped += t.mapped
    grey_layout = not any(t.dataset.layout_mapped for t in totals.values())
    stored = _stored_values(totals, {v for v in raw_values if v <= 255})
    return Facts(report, labels, k_unknown, raw_values, colours, unknown, examples, mapped, grey_layout, stored)


def _stored_values(totals: dict[str, Totals], raw: set[int]) -> dict[int, list[int]]:
    """Mapped id -> the stored mask values that become it (through the layouts' and the convention's tables)."""
    tables: dict[int, np.ndarray] = {}
    for t in totals.values():
        for table in t.dataset.tables():
            tables.setdefault(id(table), table)
    out: dict[int, set[int]] = {}
    for table in tables.values():
        for v in raw:
            out.setdefault(int(table[v]), set()).add(v)
    return {k: sorted(v) for k, v in out.items()}


def _values_text(values: Sequence[int]) -> str:
    values = list(values)
    if len(values) > 12:
        return ", ".join(map(str, values[:10])) + f", ... ({len(values)} values)"
    return ", ".join(map(str, values)) if values else "nothing"


# --------------------------------------------------------------------------------------------------- files
def split_unreadable(f: Facts) -> Finding | None:
    """A split that could not be listed or built (missing folder, no pairs)."""
    error = f.split_report.error
    return Finding("split_unreadable", error, None, "error", f.split) if error else None


# (code, what, the split's files with the problem, what to do) of the file problems, one rule each.
FILE_PROBLEMS: tuple[tuple[str, str, Callable[[SplitReport], list[str]], str], ...] = (
    ("images_without_mask", "images without a mask", lambda r: r.missing_masks, "add the masks or remove the images"),
    ("masks_without_image", "masks without an image", lambda r: r.orphan_masks, "add the images or remove the masks"),
    ("unreadable_files", "unreadable files", lambda r: r.unreadable, "re-export or remove them"),
    ("size_mismatches", "image/mask size mismatches", lambda r: r.size_mismatches, "draw masks on the stored image"),
    ("bad_masks", "bad masks", lambda r: r.other_errors, "re-save them with ids 0..K-1"),
)


def file_problem(
    code: str, what: str, files: Callable[[SplitReport], list[str]], hint: str
) -> Callable[[Facts], Finding | None]:
    """The rule for one kind of file problem of a split: how many, what to do, the first three."""

    def rule(f: Facts) -> Finding | None:
        items = files(f.split_report)
        if not items:
            return None
        shown = "; ".join(items[:3]) + (f"; ... ({len(items) - 3} more)" if len(items) > 3 else "")
        return Finding(code, f"{len(items)} {what} ({hint}): {shown}", None, "error", f.split)

    rule.__name__ = code
    return rule


# ------------------------------------------------------------------------------------------ stored values
def values_beyond_8_bit(f: Facts) -> Finding | None:
    big = sorted(v for v in f.raw_values if v > 255)
    if not big:
        return None
    return Finding(
        "values_beyond_8_bit",
        f"masks hold values up to {big[-1]} ({len(big)} values above 255): class ids must fit 8 bits; "
        "re-save the masks with ids 0..K-1 (255 = ignore)",
    )


def colour_masks(f: Facts) -> Finding | None:
    """RGB colour masks and no palette file to read them with."""
    if not f.colours or f.labels.palette is not None:
        return None
    n_colour = sum(n for mode, n in f.report.mode_counts().items() if mode in ("RGB", "RGBA"))
    n_masks = sum(sum(r.mask_modes.values()) for r in f.report.splits.values())
    top = f.colours.most_common(12)
    total = sum(f.colours.values())
    shown = ", ".join(f"({colour_text(c)}) {100 * n / total:.1f}%" for c, n in top)
    more = f" and {len(f.colours) - len(top)} more" if len(f.colours) > len(top) else ""
    return Finding(
        "colour_masks",
        f"{n_colour} of {n_masks} masks are RGB colour images with {len(f.colours)} distinct colours "
        f"({shown}{more}): write a CSV with one 'name,r,g,b' line per class (row i = class i; "
        "`segformer data check --write-palette FILE` writes one to edit) and pass --palette FILE",
        "--palette FILE",
    )


def colour_not_in_palette(f: Facts) -> Finding | None:
    if not f.unknown:
        return None
    shown = ", ".join(
        f"({colour_text(c)}) in {n} masks, e.g. {f.unknown_examples[c]}" for c, n in f.unknown.most_common(5)
    )
    return Finding(
        "colour_not_in_palette",
        f"{len(f.unknown)} mask colours are not in the palette file {f.labels.palette_file}: {shown}; add a "
        "row for each (name,r,g,b) or fix the masks",
    )


def no_class_names(f: Facts) -> Finding | None:
    """A folder dataset without classes.txt, palette or --num-classes."""
    if not (f.labelled and f.k_unknown):
        return None
    top = max(f.valid, default=0)
    return Finding(
        "no_class_names",
        f"no classes.txt in {f.report.root}: masks hold the values {_values_text(sorted(f.raw8))}; write "
        f"classes.txt with one name per class id (0..{top}, so {top + 1} lines) or pass --num-classes",
        "classes.txt",
        "error",
    )


# --------------------------------------------------------------------------------------------- class ids
def binary_255(f: Facts) -> Finding | None:
    """0/255 masks where 255 is ignore: the foreground would never be trained."""
    if not (f.classes_known and f.binary and f.labels.lut[255] == IGNORE and f.k is not None and f.k >= 2):
        return None
    extra = "" if f.k == 2 else f" (class 1 = {f.names[1]!r})"
    return Finding(
        "binary_255",
        "every mask holds only 0 and 255, and 255 is ignore: your foreground would never be trained; "
        f"pass --label-map 255:1{extra}",
        "--label-map 255:1",
    )


def binary_one_class(f: Facts) -> Finding | None:
    if not (f.classes_known and f.binary and f.k == 1):
        return None
    return Finding(
        "binary_one_class",
        f"masks hold 0 and 255 but there is one class ({f.names[0]!r}), and 255 is ignore: list two classes "
        "(background first) and pass --label-map 255:1",
        "--label-map 255:1",
    )


def ids_beyond_classes(f: Facts) -> Finding | None:
    """Ids after the mapping that are neither a class nor ignore: the first case of `BEYOND` that fits says why."""
    if not (f.classes_known and f.beyond):
        return None
    return next(case(f) for fits, case in BEYOND if fits(f))


def _ids(f: Facts) -> str:
    k = f.k
    return f"{k} classes: ids 0..{k - 1}" if k is not None and k > 1 else "1 class: id 0"


def _void_hint(f: Facts) -> str:
    return f"if {f.k} marks void/unlabelled pixels (as 11 in SegNet's 11-class CamVid), pass --ignore-index {f.k}"


def _ids_from_one(f: Facts) -> Finding:
    return Finding(
        "ids_from_one",
        f"masks hold 1..{f.k} and never 0 ({_ids(f)}): ids start at 1; pass --reduce-zero-label (1..{f.k} become "
        f"0..{(f.k or 0) - 1}, 0 is ignored)",
        "--reduce-zero-label",
    )


def _one_class_binary(f: Facts) -> Finding:
    return Finding(
        "one_class_binary",
        f"masks hold 0 and 1 but classes.txt lists one class ({f.names[0]!r}): list both, background first "
        "(or, if 1 marks unlabelled pixels, pass --ignore-index 1)",
        "classes.txt",
    )


def _void_k(f: Facts) -> Finding:
    return Finding(
        "void_label",
        f"value {f.k} is neither a class id ({_ids(f)}) nor ignore (255): {_void_hint(f)}",
        f"--ignore-index {f.k}",
    )


def _one_value_too_many(f: Facts) -> Finding:
    return Finding(
        "one_value_too_many",
        f"masks hold {(f.k or 0) + 1} values 0..{f.k} for {_ids(f)}, one too many: {_void_hint(f)}; if 0 means "
        f"'other' and 1..{f.k} are the classes (ADE20K style), pass --reduce-zero-label",
        f"--ignore-index {f.k} or --reduce-zero-label",
    )


def _void_value(f: Facts) -> Finding:
    v = f.beyond[0]
    raw = f.stored.get(v, [v])
    was = f" (stored as {', '.join(map(str, raw))} in the masks)" if raw != [v] else ""
    return Finding(
        "void_label",
        f"value {v}{was} is neither a class id ({_ids(f)}) nor ignore (255): if it marks void/unlabelled pixels, "
        f"pass --ignore-index {v}",
        f"--ignore-index {v}",
    )


def _too_few_class_names(f: Facts) -> Finding:
    last = f.beyond[-1]
    return Finding(
        "too_few_class_names",
        f"masks hold ids up to {last} but there are {_ids(f)}: list all {last + 1} classes (classes.txt), "
        f"or map the extra values {_values_text(f.beyond)} to ignore with --label-map "
        + ",".join(f"{v}:255" for v in f.beyond[:8]),
        "classes.txt",
    )


def _unknown_values(f: Facts) -> Finding:
    return Finding(
        "unknown_values",
        f"values {_values_text(f.beyond)} are neither class ids ({_ids(f)}) nor ignore (255): map them with "
        "--label-map " + ",".join(f"{v}:255" for v in f.beyond[:8]) + " (to ignore) or to the classes they mean",
        "--label-map",
    )


def _raster_values(f: Facts) -> Finding:
    shown = ",".join(f"{v}:255" for v in f.beyond[:8])
    return Finding(
        "labels_beyond_classes",
        f"label rasters hold {_values_text(f.beyond)}: >= num_classes {f.k} and not the rasters' nodata; map them "
        f"with --label-map {shown} (to ignore) or to the classes they mean, or set the label rasters' nodata",
        "--label-map",
    )


def _one_above(f: Facts) -> bool:
    """Exactly one id beyond the classes, K itself, and no --reduce-zero-label yet."""
    return f.beyond == [f.k] and not f.labels.reduce_zero_label


# (does it fit, the finding) for ids beyond the classes, most specific first; the last always fits.
BEYOND: tuple[tuple[Callable[[Facts], bool], Callable[[Facts], Finding]], ...] = (
    (lambda f: f.rasters, _raster_values),
    (lambda f: _one_above(f) and 0 not in f.valid, _ids_from_one),
    (lambda f: _one_above(f) and f.k == 1, _one_class_binary),
    (lambda f: _one_above(f) and bool(f.names) and f.names[0].strip().lower() in VOID_WORDS, _void_k),
    (_one_above, _one_value_too_many),
    (lambda f: len(f.beyond) == 1, _void_value),
    (lambda f: f.beyond == list(range(f.k or 0, f.beyond[-1] + 1)), _too_few_class_names),
    (lambda f: True, _unknown_values),
)


# --------------------------------------------------------------------------------------------- balance
def _class_stats(f: Facts) -> bool:
    """The class statistics rules apply: classes known and a split to count them in."""
    return f.classes_known and f.train is not None and f.k is not None and f.k <= 255


def classes_never_present(f: Facts) -> Finding | None:
    """Classes without a pixel in the training split cannot be learned (unless a finding above explains it)."""
    if not _class_stats(f) or f.beyond or binary_255(f) or binary_one_class(f):
        return None
    k, names, counts = f.k or 0, f.names, f.train_counts()
    never = [i for i in range(k) if counts[i] == 0]
    if not never or len(never) == k:
        return None
    listed = ", ".join(f"{i} {names[i]!r}" for i in never[:MAX_NAMES])
    more = f" and {len(never) - MAX_NAMES} more" if len(never) > MAX_NAMES else ""
    valid_raw = sorted(f.raw8)
    hint = (
        f"; the masks hold only {_values_text(valid_raw)}: is classes.txt for another dataset?"
        if len(valid_raw) <= 3 and k > len(valid_raw)
        else ""
    )
    return Finding(
        "classes_never_present",
        f"{len(never)} of {k} classes never occur in the '{f.train}' split, so they cannot be learned: "
        f"{listed}{more}{hint}",
        None,
        "problem",
        f.train,
    )


def classes_absent_from_split(f: Facts) -> Finding | None:
    """Classes of the training split that another split lacks (a note: small validation sets often do)."""
    r = f.split_report
    if not _class_stats(f) or f.split == f.train or not r.pixel_counts:
        return None
    k, counts = f.k or 0, f.train_counts()
    if sum(r.pixel_counts[:k]) == 0:
        return None
    absent = [f.names[i] for i in range(k) if r.pixel_counts[i] == 0 and counts[i] > 0]
    if not absent:
        return None
    shown = ", ".join(absent[:MAX_NAMES]) + (" ..." if len(absent) > MAX_NAMES else "")
    return Finding("classes_absent_from_split", f"{len(absent)} classes do not occur: {shown}", None, "note", f.split)


def dominant_class(f: Facts) -> Finding | None:
    if not (f.classes_known and f.train is not None):
        return None
    counts = f.train_counts().astype(np.float64)
    if counts.sum() <= 0 or (counts > 0).sum() <= 1:
        return None
    top = int(counts.argmax())
    share = counts[top] / counts.sum()
    if share < DOMINANT_SHARE:
        return None
    return Finding(
        "dominant_class",
        f"class {top} {f.names[top]!r} covers {100 * share:.1f}% of the labelled pixels of "
        f"'{f.train}': pass --class-weights auto (suggested weights below)",
        "--class-weights auto",
        "warning",
        f.train,
    )


def all_ignored(f: Facts) -> Finding | None:
    if not (f.classes_known and f.mapped[IGNORE] and not f.valid):
        return None
    return Finding("all_ignored", "every labelled pixel maps to ignore (255): nothing would be trained")


# ------------------------------------------------------------------------------------------------- rasters
def _raster_list(rasters: list[dict], what: str) -> str:
    return f"{len(rasters)} {what}: " + "; ".join(r["path"] for r in rasters[:3]) + (" ..." if len(rasters) > 3 else "")


def all_nodata(f: Facts) -> Finding | None:
    """Image rasters without a pixel of data (a wrong nodata value, or an empty tile): nothing to train on."""
    empty = [r for r in f.split_report.rasters if r["nodata"] >= 1]
    if not empty:
        return None
    text = _raster_list(empty, "image rasters where every pixel is nodata (remove them or fix their nodata value)")
    return Finding("all_nodata", text, None, "problem", f.split)


def mostly_nodata(f: Facts) -> Finding | None:
    sparse = [r for r in f.split_report.rasters if MOSTLY_NODATA < r["nodata"] < 1]
    if not sparse:
        return None
    shown = _raster_list(sparse, f"image rasters with more than {100 * MOSTLY_NODATA:.0f}% nodata")
    return Finding("mostly_nodata", f"{shown} (training windows skip what has no data)", None, "warning", f.split)


def band_mismatch(f: Facts) -> Finding | None:
    odd = f.split_report.band_mismatches
    if not odd:
        return None
    first = f.split_report.rasters[0]["bands"] if f.split_report.rasters else "?"
    shown = "; ".join(odd[:3])
    text = f"{len(odd)} image rasters have other bands than the split's first ({first}): {shown}; use one band set"
    return Finding("band_counts", text, None, "problem", f.split)


def band_statistics(f: Facts) -> Finding | None:
    """The per-band mean/std a model trained with --in-channels stores (training computes the same)."""
    r = f.split_report
    if r.band_mean is None or r.band_std is None:
        return None
    mean, std = " ".join(f"{m:.6g}" for m in r.band_mean), " ".join(f"{v:.6g}" for v in r.band_std)
    hint = f"train with --in-channels {len(r.band_mean)} (the statistics are computed and stored with the model)"
    return Finding("band_statistics", f"per-band mean {mean}, std {std}; {hint}", None, "note", f.split)


def grids_differ(f: Facts) -> Finding | None:
    """Image rasters in several CRSs or pixel sizes: the model learns pixels, not metres."""
    rasters = [r for split in f.report.splits.values() for r in split.rasters]
    kinds = sorted({(r["crs"], tuple(round(v, 9) for v in r["resolution"])) for r in rasters})
    if len(kinds) < 2:
        return None
    shown = "; ".join(f"{crs} {res[0]:g} x {res[1]:g}" for crs, res in kinds[:4])
    return Finding(
        "grids_differ",
        f"the image rasters differ in CRS or resolution ({shown}); the model sees pixels, so resample them to one "
        "resolution for training and prediction",
        None,
        "warning",
    )


# --------------------------------------------------------------------------------------------------- notes
IMAGE_MODE_NOTES = (
    ("RGBA", "have an alpha channel (dropped)"),
    ("LA", "are grey with alpha (alpha dropped, grey repeated)"),
    ("CMYK", "are CMYK (converted to RGB)"),
    ("L", "are greyscale (repeated to 3 channels)"),
    ("I;16", "are 16-bit (scaled to 8 bits)"),
    ("I", "are 32-bit integer (scaled to 8 bits)"),
    ("P", "are palette images (converted to RGB)"),
)
WIDE_MASK_MODES = ("I;16", "I;16B", "I;16L", "I")


def image_mode(mode: str, what: str) -> Callable[[Facts], Finding | None]:
    """A note on images stored in `mode` (how they are converted to RGB)."""

    def rule(f: Facts) -> Finding | None:
        n = f.report.mode_counts(images=True).get(mode)
        return Finding("image_mode", f"{n} images {what}", None, "note") if n else None

    return rule


def mask_16_bit(mode: str) -> Callable[[Facts], Finding | None]:
    """A note on masks stored in the 16/32-bit `mode` (values are read as ids)."""

    def rule(f: Facts) -> Finding | None:
        n = f.report.mode_counts().get(mode)
        message = f"{n} masks are {mode} (16/32-bit); values are read as ids"
        return Finding("mask_16_bit", message, None, "note") if n else None

    return rule


# --------------------------------------------------------------------------------------------------- table
@dataclass(frozen=True)
class Rule:
    check: Callable[[Facts], Finding | None]
    per_split: bool = False  # called once per split, with facts.split set


RULES: tuple[Rule, ...] = (
    Rule(split_unreadable, per_split=True),
    *(Rule(file_problem(*row), per_split=True) for row in FILE_PROBLEMS),
    Rule(values_beyond_8_bit),
    Rule(colour_masks),
    Rule(colour_not_in_palette),
    Rule(no_class_names),
    Rule(binary_255),
    Rule(binary_one_class),
    Rule(ids_beyond_classes),
    Rule(classes_never_present),
    Rule(classes_absent_from_split, per_split=True),
    Rule(all_nodata, per_split=True),
    Rule(band_mismatch, per_split=True),
    Rule(mostly_nodata, per_split=True),
    Rule(band_statistics, per_split=True),
    Rule(grids_differ),
    Rule(dominant_class),
    Rule(all_ignored),
    *(Rule(image_mode(mode, what)) for mode, what in IMAGE_MODE_NOTES),
    *(Rule(mask_16_bit(mode)) for mode in WIDE_MASK_MODES),
)


def run_rules(facts: Facts, rules: Sequence[Rule] = RULES) -> list[Finding]:
    """The findings of `rules` in table order; a run of per-split rows goes split by split."""
    findings = []
    for per_split, group in itertools.groupby(rules, key=lambda r: r.per_split):
        rows = list(group)
        scopes = [dataclasses.replace(facts, split=s) for s in facts.report.splits] if per_split else [facts]
        for scoped in scopes:
            findings += [found for rule in rows if (found := rule.check(scoped)) is not None]
    return findings


def diagnose(
    report: DataReport, totals: dict[str, Totals], labels: LabelConvention, *, k_unknown: bool = False
) -> list[Finding]:
    """The findings of a scanned dataset, most serious first."""
    return run_rules(gather(report, totals, labels, k_unknown))
