"""How the values stored in a mask file become class ids: one frozen `LabelConvention` for every layout.

The model always trains on ids 0..K-1 with 255 = ignore. A mask file may hold something else: 0/255 binary masks,
a void label that is not 255, ADE-style "0 = other", or the RGB colours an annotation tool exports. The
convention turns a raw mask into ids in this order:

1. colour masks: each RGB colour becomes its row index in the palette file (`--palette FILE`, CSV `name,r,g,b`);
2. `--label-map A:B,C:D` replaces raw values (all at once, not chained);
3. `--reduce-zero-label`: 0 becomes ignore and 1..254 become 0..253 (mmseg/transformers ADE20K semantics);
4. `--ignore-index N`: the value N (after steps 2-3) becomes the internal ignore value 255.

Steps 2-4 are one 256-entry lookup table, so `apply` is a single vectorised gather. 255 stays ignore throughout.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

IGNORE = 255  # the internal ignore value (segformer.data.IGNORE_INDEX)

Colour = tuple[int, int, int]


class LabelError(ValueError):
    """A mask or a label option that does not fit the convention; the message is one line naming the file."""


@dataclass(frozen=True)
class LabelConvention:
    """Raw mask values -> class ids 0..K-1 or 255 (ignore). The default leaves uint8 masks as they are.

    `palette` holds one (name, r, g, b) row per raw id for colour masks; `palette_file` only names its source in
    messages. `to_dict`/`from_dict` give plain JSON/YAML values, stored with trained models and runs.
    """

    ignore_index: int = IGNORE
    reduce_zero_label: bool = False
    label_map: tuple[tuple[int, int], ...] = ()
    palette: tuple[tuple[str, int, int, int], ...] | None = None
    palette_file: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int | np.integer):
            raise LabelError(f"--ignore-index {self.ignore_index!r} must be an integer in 0..255")
        if not 0 <= int(self.ignore_index) <= 255:
            raise LabelError(
                f"--ignore-index {self.ignore_index} is outside 0..255 (masks are 8-bit; remap larger values "
                "with --label-map first)"
            )
        object.__setattr__(self, "ignore_index", int(self.ignore_index))
        object.__setattr__(self, "reduce_zero_label", bool(self.reduce_zero_label))
        pairs = tuple((int(a), int(b)) for a, b in self.label_map)
        for a, b in pairs:
            if not (0 <= a <= 255 and 0 <= b <= 255):
                raise LabelError(f"--label-map {a}:{b}: values must be in 0..255")
        sources = [a for a, _ in pairs]
        if len(set(sources)) != len(sources):
            dup = next(a for a in sources if sources.count(a) > 1)
            raise LabelError(f"--label-map maps the value {dup} twice")
        object.__setattr__(self, "label_map", pairs)
        if self.palette is not None:
            rows = tuple((str(n), int(r), int(g), int(b)) for n, r, g, b in self.palette)
            if not rows:
                raise LabelError(f"{self.palette_file or 'palette'}: no colours")
            if len(rows) > 256:
                raise LabelError(f"{self.palette_file or 'palette'}: {len(rows)} colours; at most 256 fit 8-bit ids")
            object.__setattr__(self, "palette", rows)

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_options(
        cls,
        *,
        ignore_index: int | None = None,
        reduce_zero_label: bool | None = None,
        label_map: str | dict[int, int] | None = None,
        palette: str | Path | None = None,
        base: LabelConvention | dict[str, Any] | None = None,
    ) -> LabelConvention:
        """The convention of command-line style options; those left None keep `base`'s (a convention or its
        `to_dict()`, as models store it; default: the default)."""
        base = cls.from_dict(base)
        changes: dict[str, Any] = {}
        if ignore_index is not None:
            changes["ignore_index"] = ignore_index
        if reduce_zero_label is not None:
            changes["reduce_zero_label"] = reduce_zero_label
        if label_map is not None:
            pairs = parse_label_map(label_map) if isinstance(label_map, str) else tuple(label_map.items())
            changes["label_map"] = pairs
        if palette is not None:
            changes["palette"] = read_palette(palette)
            changes["palette_file"] = str(palette)
        if not changes:
            return base
        values = {**base.to_dict(), **changes}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples): safe for JSON, YAML and `torch.load(weights_only=True)`."""
        return {
            "ignore_index": self.ignore_index,
            "reduce_zero_label": self.reduce_zero_label,
            "label_map": [list(p) for p in self.label_map],
            "palette": [list(row) for row in self.palette] if self.palette is not None else None,
            "palette_file": self.palette_file,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | LabelConvention | None) -> LabelConvention:
        if data is None:
            return cls()
        if isinstance(data, LabelConvention):
            return data
        known = {"ignore_index", "reduce_zero_label", "label_map", "palette", "palette_file"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LabelError(f"label convention: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    # -- what it does -----------------------------------------------------------------------------------------
    @property
    def is_default(self) -> bool:
        return self == LabelConvention()

    @cached_property
    def lut(self) -> np.ndarray:
        """The 256-entry uint8 table of steps 2-4 (label map, reduce zero label, ignore index)."""
        lut = np.arange(256, dtype=np.int64)
        for a, b in self.label_map:
            lut[a] = b
        if self.reduce_zero_label:
            lut = np.where(lut == 0, IGNORE, lut - 1)
            lut[lut == IGNORE - 1] = IGNORE
        lut[lut == self.ignore_index] = IGNORE
        return lut.astype(np.uint8)

    @cached_property
    def palette_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """Palette colours packed as r<<16|g<<8|b, sorted, and the raw id (row) of each."""
        assert self.palette is not None
        codes = np.array([(r << 16) | (g << 8) | b for _, r, g, b in self.palette], dtype=np.int64)
        order = np.argsort(codes, kind="stable")
        return codes[order], order.astype(np.uint8)

    def colour_ids(self, rgb: np.ndarray, where: str = "mask") -> np.ndarray:
        """(H, W, 3) colours -> (H, W) raw ids (palette rows); a colour not in the palette is a LabelError."""
        if self.palette is None:
            raise LabelError(f"{where}: colour mask but no palette; pass --palette FILE (CSV name,r,g,b per class)")
        rgb = np.asarray(rgb)
        packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
        codes, rows = self.palette_codes
        pos = np.searchsorted(codes, packed).clip(0, len(codes) - 1)
        hit = codes[pos] == packed
        if not hit.all():
            bad = int(packed[~hit].flat[0])
            colour = ((bad >> 16) & 255, (bad >> 8) & 255, bad & 255)
            raise LabelError(
                f"{where}: colour {colour} ({int((~hit).sum())} pixels) is not in the palette file "
                f"{self.palette_file or '(stored palette)'}; add a row for it (name,{colour[0]},{colour[1]},"
                f"{colour[2]}) or fix the mask"
            )
        return rows[pos]

    def raw_ids(self, raw: np.ndarray, where: str = "mask") -> np.ndarray:
        """A raw mask as uint8 (H, W) values before the table: colours -> palette rows (RGB masks whose pixels
        are all grey, R = G = B, give that grey value), 16-bit or bool -> uint8 when the values fit."""
        raw = np.asarray(raw)
        if raw.ndim == 3:
            if self.palette is None and raw.shape[2] >= 3 and _is_grey(raw):
                raw = raw[..., 0]
            else:
                return self.colour_ids(raw[..., :3], where)
        elif raw.ndim != 2:
            raise LabelError(f"{where}: mask must be (H, W) or (H, W, 3), got shape {raw.shape}")
        if raw.dtype == np.uint8:
            return raw
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            bad = int(raw.max()) if raw.max() > 255 else int(raw.min())
            raise LabelError(
                f"{where}: mask value {bad} does not fit 8-bit class ids (0..255); re-save the masks with ids "
                "0..K-1 (and 255 = ignore)"
            )
        return raw.astype(np.uint8)

    def apply(self, raw: np.ndarray, where: str = "mask") -> np.ndarray:
        """A raw mask ((H, W) values 0..255, or (H, W, 3) colours with a palette) -> uint8 ids 0..K-1 or 255."""
        return self.lut[self.raw_ids(raw, where)]

    @cached_property
    def inverse(self) -> np.ndarray:
        """256-entry table id -> the raw value that stands for it (explicit --label-map sources first, then the
        ignore value, then the smallest value): `encode` writes ids the way the masks were stored."""
        lut = self.lut
        rows = len(self.palette) if self.palette is not None else 256
        zero = [0] if self.reduce_zero_label else []  # ADE-style masks mark "other"/unlabelled with 0
        order = [a for a, _ in self.label_map] + zero + [self.ignore_index] + list(range(256))
        inverse = np.arange(256, dtype=np.int64)
        done: set[int] = set()
        for v in order:
            k = int(lut[v])
            if k not in done and v < rows:
                inverse[k] = v
                done.add(k)
        return inverse.astype(np.uint8)

    def encode(self, ids: np.ndarray) -> np.ndarray:
        """Class ids (H, W) -> the masks' own values: (H, W) uint8, or (H, W, 3) RGB colours with a palette."""
        raw = self.inverse[np.asarray(ids, dtype=np.uint8)]
        if self.palette is None:
            return raw
        colours = np.zeros((256, 3), np.uint8)
        colours[: len(self.palette)] = [row[1:] for row in self.palette]
        return colours[raw]

    def class_names_from_palette(self) -> tuple[str, ...] | None:
        """Names of the palette rows that stay classes after the mapping, ordered by class id (None: no palette)."""
        if self.palette is None:
            return None
        ids = self.lut[np.arange(len(self.palette))]
        by_id: dict[int, str] = {}
        for row, k in enumerate(ids):
            if k != IGNORE:
                by_id.setdefault(int(k), self.palette[row][0])
        if not by_id:
            return None
        k = max(by_id) + 1
        return tuple(by_id.get(i, f"class_{i}") for i in range(k))

    def class_colours(self, num_classes: int) -> np.ndarray | None:
        """(K, 3) uint8 colours by class id from the palette file (for overlays), or None without a palette."""
        if self.palette is None:
            return None
        from ..imageio import default_palette

        colours = default_palette(num_classes).copy()
        ids = self.lut[np.arange(len(self.palette))]
        seen: set[int] = set()
        for row, k in enumerate(ids):
            if k < num_classes and int(k) not in seen:
                seen.add(int(k))
                colours[k] = self.palette[row][1:]
        return colours

    def flags(self) -> str:
        """The command-line flags that give this convention ('' for the default)."""
        parts = []
        if self.label_map:
            parts.append("--label-map " + ",".join(f"{a}:{b}" for a, b in self.label_map))
        if self.reduce_zero_label:
            parts.append("--reduce-zero-label")
        if self.ignore_index != IGNORE:
            parts.append(f"--ignore-index {self.ignore_index}")
        if self.palette is not None:
            parts.append(f"--palette {self.palette_file or '(stored)'}")
        return " ".join(parts)

    def describe(self) -> str:
        return self.flags() or "ids as stored, 255 = ignore"


def _is_grey(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def parse_label_map(text: str) -> tuple[tuple[int, int], ...]:
    """'255:1,3:2' -> ((255, 1), (3, 2)); a malformed entry is a one-line LabelError."""
    pairs = []
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        parts = item.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            a, b = int(parts[0]), int(parts[1])
        except ValueError:
            raise LabelError(
                f"--label-map {text!r}: {item!r} is not FROM:TO; expected pairs like 255:1,3:2 (values 0..255)"
            ) from None
        if not (0 <= a <= 255 and 0 <= b <= 255):
            raise LabelError(f"--label-map {text!r}: {item!r} has a value outside 0..255")
        pairs.append((a, b))
    if not pairs:
        raise LabelError(f"--label-map {text!r}: no pairs; expected pairs like 255:1,3:2")
    return tuple(pairs)


def read_palette(path: str | Path) -> tuple[tuple[str, int, int, int], ...]:
    """One (name, r, g, b) row per class from a CSV `name,r,g,b` (a header line is allowed) or a CVAT
    `labelmap.txt` (`name:r,g,b:parts:actions`). Row i is raw id i."""
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"--palette {path}: no such file (CSV with one 'name,r,g,b' line per class)")
    rows: list[tuple[str, int, int, int]] = []
    text = path.read_text(encoding="utf-8-sig")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.startswith("#")]
    for n, line in lines:
        if ":" in line and "," in line.split(":", 1)[1]:  # CVAT labelmap.txt: name:r,g,b:parts:actions
            name, rest = line.split(":", 1)
            fields = [name, *rest.split(":", 1)[0].split(",")]
        else:
            fields = next(csv.reader([line]))
        fields = [f.strip() for f in fields]
        if len(fields) != 4:
            raise LabelError(f"{path}:{n}: expected 'name,r,g,b', got {line.strip()!r}")
        try:
            r, g, b = (int(v) for v in fields[1:])
        except ValueError:
            if not rows:  # a header line such as "name,r,g,b"
                continue
            raise LabelError(f"{path}:{n}: r, g, b must be integers 0..255, got {line.strip()!r}") from None
        if not all(0 <= v <= 255 for v in (r, g, b)):
            raise LabelError(f"{path}:{n}: r, g, b must be in 0..255, got {line.strip()!r}")
        rows.append((fields[0], r, g, b))
    if not rows:
        raise LabelError(f"{path}: no colours (one 'name,r,g,b' line per class expected)")
    seen: dict[tuple[int, int, int], str] = {}
    for name, r, g, b in rows:
        if (r, g, b) in seen:
            raise LabelError(f"{path}: colour ({r}, {g}, {b}) is given to both {seen[(r, g, b)]!r} and {name!r}")
        seen[(r, g, b)] = name
    return tuple(rows)


def write_palette(path: str | Path, rows: list[tuple[str, int, int, int]]) -> None:
    """A palette CSV `name,r,g,b` (the inverse of `read_palette`)."""
    lines = ["name,r,g,b", *(f"{n},{r},{g},{b}" for n, r, g, b in rows)]
    Path(path).write_text("\n".join(lines) + "\n")


def read_raw_mask(path: str | Path, colour: bool = False) -> np.ndarray:
    """`raw_mask_array` of a mask file; an unreadable file is an ImageReadError naming it."""
    from ..imageio import _open

    return raw_mask_array(_open(path), colour)


def raw_mask_array(img: Any, colour: bool = False) -> np.ndarray:
    """The values a mask file holds: (H, W) ids for L/P/1/16-bit images (palette PNG: the indices), (H, W, 3)
    for RGB/RGBA; with `colour` (a palette convention) palette PNGs give their colours, too."""
    from PIL import Image

    if isinstance(img, Image.Image):
        if img.mode in ("RGB", "RGBA", "LA") or (colour and img.mode == "P"):
            return np.asarray(img.convert("RGB"))
        if img.mode == "CMYK" or img.mode.startswith("YCbCr"):
            return np.asarray(img.convert("RGB"))
        return np.asarray(img)
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    return arr
