"""Pictures of predictions: colour label maps, image overlays with a legend, grids, a confusion heatmap, and
training curves.

Only numpy and Pillow (default bitmap font), so predictions can be looked at without the `plot` extra;
`plot_curves` alone needs matplotlib (and skips with one log line without it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .fileio import atomic_write

log = logging.getLogger("segformer")

IGNORE_COLOUR = (0, 0, 0)
OVERLAY_ROWS = 256  # image rows blended at once


def _palette(palette: np.ndarray | Sequence[Sequence[int]], needed: int) -> np.ndarray:
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(pal) < needed:  # ids beyond the palette (e.g. 255 = ignore) are drawn black
        pal = np.concatenate([pal, np.tile(np.array(IGNORE_COLOUR, np.uint8), (needed - len(pal), 1))])
    return pal


def colorize(labels: np.ndarray, palette: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; ids outside the palette (255 = ignore) are black."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a (H, W) map, got shape {labels.shape}")
    ids = labels.astype(np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError(f"labels contain negative ids ({ids.min()})")
    pal = _palette(palette, int(ids.max(initial=0)) + 1)
    return pal[ids]


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` px (Pillow >= 10.1 with FreeType), else the fixed 11 px bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    palette: np.ndarray | Sequence[Sequence[int]],
    class_names: Sequence[str] | None = None,
    alpha: float = 0.5,
    legend: bool = True,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """The RGB image (H, W, 3) blended with class colours (weight `alpha`), same size, uint8.

    With `legend`, a box in the top-left corner lists the classes present, largest area first (as many as fit).
    Pixels equal to `ignore_index` keep the image's colours.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape} must be (H, W, 3) with the labels' size {labels.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = np.empty(image.shape, np.uint8)
    for top in range(0, image.shape[0], OVERLAY_ROWS):  # bands: float temporaries of a few MB, not 5 x 145 MB
        rows = slice(top, top + OVERLAY_ROWS)
        colours = colorize(labels[rows], palette).astype(np.float32)
        blended = image[rows].astype(np.float32) * (1 - alpha) + colours * alpha
        if ignore_index is not None:
            keep = labels[rows] == ignore_index
            blended[keep] = image[rows][keep]
        out[rows] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    if legend:
        out = _draw_legend(out, labels, palette, class_names, ignore_index)
    return out


def _draw_legend(
    image: np.ndarray,
    labels: np.ndarray,
    palette: np.ndarray | Sequence[Sequence[int]],
    class_names: Sequence[str] | None,
    ignore_index: int | None,
) -> np.ndarray:
    counts = np.bincount(labels.astype(np.int64, copy=False).ravel())  # ids are >= 0 (colorize checked)
    ids = np.flatnonzero(counts)  # ascending, so equal areas stay in id order
    order = [int(i) for i in sorted(ids, key=lambda i: -counts[i]) if i != ignore_index]
    if not order:
        return image
    pal = _palette(palette, max(order) + 1)
    img = Image.fromarray(image)
    draw = ImageDraw.Draw(img, "RGBA")
    font = _font(max(11, min(img.size) // 45))  # readable on 2048 px photos, not huge on small ones

    def name(i: int) -> str:
        return class_names[i] if class_names is not None and i < len(class_names) else str(i)

    line_h = max(_text_size(draw, "Ag", font)[1], 8) + 4
    swatch = line_h - 4
    fits = max((img.height - 8) // line_h, 1)
    shown = order if len(order) <= fits else order[: fits - 1]
    lines = [name(i) for i in shown] + ([f"+{len(order) - len(shown)} more"] if len(shown) < len(order) else [])
    width = max(_text_size(draw, t, font)[0] for t in lines) + swatch + 14
    draw.rectangle((2, 2, 2 + width, 2 + len(lines) * line_h + 4), fill=(0, 0, 0, 150))
    for row, text in enumerate(lines):
        y = 6 + row * line_h
        if row < len(shown):
            colour = tuple(int(c) for c in pal[shown[row]])
            draw.rectangle((6, y, 6 + swatch, y + swatch), fill=colour, outline=(255, 255, 255))
        draw.text((10 + swatch, y), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def save_grid(
    rows: Sequence[Sequence[np.ndarray]],
    path: str | Path,
    titles: Sequence[str] | Sequence[Sequence[str]] | None = None,
    gap: int = 4,
) -> Path:
    """Tile RGB (or (H, W) grayscale) arrays into one picture, one list per row, and save it (format from suffix).

    `titles` is one title per column (drawn above the first row) or one list of titles per row (above each cell).
    Cells of different sizes are top-left aligned on a white background.
    """
    if not rows or not all(rows):
        raise ValueError("save_grid needs at least one non-empty row of images")
    cells = [[_as_rgb(c) for c in row] for row in rows]
    ncols = max(len(r) for r in cells)
    per_cell = titles is not None and len(titles) > 0 and not isinstance(titles[0], str)
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_h = _text_size(probe, "Ag", font)[1] + 6 if titles else 0
    col_w = [max((r[c].shape[1] for r in cells if c < len(r)), default=0) for c in range(ncols)]
    row_h = [max(c.shape[0] for c in r) + title_h for r in cells]
    width = sum(col_w) + gap * (ncols + 1)
    height = sum(row_h) + gap * (len(cells) + 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = gap
    for r, row in enumerate(cells):
        x = gap
        for c, cell in enumerate(row):
            title = None
            if per_cell:
                row_titles = titles[r] if r < len(titles) else ()  # type: ignore[index]
                title = row_titles[c] if c < len(row_titles) else None
            elif titles is not None and r == 0 and c < len(titles):
                title = titles[c]  # type: ignore[assignment]
            if title:
                draw.text((x, y + 1), str(title), fill=(0, 0, 0), font=font)
            canvas.paste(Image.fromarray(cell), (x, y + title_h))
            x += col_w[c] + gap
        y += row_h[r] + gap
    return save_image(canvas, path)


def _as_rgb(cell: np.ndarray) -> np.ndarray:
    cell = np.asarray(cell)
    if cell.ndim == 2:
        cell = np.repeat(cell[:, :, None], 3, axis=2)
    if cell.ndim != 3 or cell.shape[2] not in (3, 4):
        raise ValueError(f"grid cells must be (H, W), (H, W, 3) or (H, W, 4) arrays, got shape {cell.shape}")
    if cell.dtype != np.uint8:
        cell = np.clip(cell * (255.0 if cell.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(cell[:, :, :3])


def confusion_image(
    matrix: np.ndarray, class_names: Sequence[str] | None = None, cell: int | None = None
) -> np.ndarray:
    """A row-normalised confusion matrix (rows = ground truth) as an RGB heatmap: white 0 -> dark blue 1.

    Class names label the rows and columns when there are at most 40 classes; larger matrices show the cells only.
    """
    m = np.asarray(matrix, dtype=np.float64)
    k = m.shape[0]
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    cell = cell or max(2, min(24, 800 // max(k, 1)))
    white, dark = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    heat = (white + (dark - white) * norm[:, :, None]).round().astype(np.uint8)  # (K, K, 3)
    heat = heat.repeat(cell, axis=0).repeat(cell, axis=1)
    if k > 40:
        return heat
    names = [str(n) for n in (class_names or range(k))]
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin = max(_text_size(probe, n, font)[0] for n in names) + 8
    size = margin + k * cell + 4
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(Image.fromarray(heat), (margin, margin))
    draw = ImageDraw.Draw(canvas)
    for i, n in enumerate(names):
        draw.text((2, margin + i * cell + max(cell // 2 - 5, 0)), n, fill=(0, 0, 0), font=font)
    # Column names: written left-aligned in rows, then turned 90 degrees to read bottom-up above each column.
    header = Image.new("RGB", (margin, k * cell), (255, 255, 255))
    hdraw = ImageDraw.Draw(header)
    for i, n in enumerate(names):
        hdraw.text((4, i * cell + max(cell // 2 - 5, 0)), n, fill=(0, 0, 0), font=font)
    canvas.paste(header.rotate(90, expand=True), (margin, 0))
    return np.asarray(canvas)


def save_confusion(path: str | Path, matrix: np.ndarray, class_names: Sequence[str] | None = None) -> Path:
    """Write `confusion_image` as a PNG (see there)."""
    return save_image(Image.fromarray(confusion_image(matrix, class_names)), path)


def save_image(image: Image.Image, path: str | Path) -> Path:
    """`image` written atomically (a temporary file, then renamed) in the format its name says (.png, .jpg, ...)."""
    path = Path(path)
    form = Image.registered_extensions().get(path.suffix.lower())
    if form is None:
        raise ValueError(f"{path}: no image format ends in {path.suffix!r}; name the file .png or .jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: image.save(tmp, format=form))


def plot_curves(history: list[dict[str, Any]], path: Path, metric: str = "mIoU") -> Path | None:
    """Training loss and the validation `metric` (mIoU; top1 for pretraining) against iterations (a run's
    metrics.jsonl records) as a PNG.

    Skipped, with one log line, without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no %s (pip install 'segformer[plot]')", path.name)
        return None
    train_pts = [(r["iter"], r["loss"]) for r in history if "loss" in r]
    val_pts = [(r["iter"], r[metric]) for r in history if metric in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if train_pts:
        axes[0].plot(*zip(*train_pts, strict=True), color="tab:blue")
    axes[0].set(title="training loss", xlabel="iteration", ylabel="cross-entropy")
    if val_pts:
        axes[1].plot(*zip(*val_pts, strict=True), marker="o", color="tab:green")
    axes[1].set(title=f"validation {metric}", xlabel="iteration", ylabel=metric)
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save_figure(plt, fig, path)


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or None (with one log line) without the `plot` extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no plot (pip install 'segformer[plot]')")
        return None
    return plt


def plot_series(
    path: str | Path,
    xs: Sequence[float],
    series: dict[str, Sequence[Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
) -> Path | None:
    """Line plot: per name, the mean of its runs (thick, with markers) and each run (thin) against `xs`; e.g. mIoU
    against test resolution, one run per seed. Skipped, with one log line, without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for k, (name, runs) in enumerate(series.items()):
        colour = f"C{k}"
        values = np.asarray(runs, dtype=float).reshape(-1, len(xs))  # (runs, points)
        for run in values if len(values) > 1 else ():
            ax.plot(xs, run, color=colour, alpha=0.3, linewidth=0.8)
        label = f"{name} (mean of {len(values)})" if len(values) > 1 else name
        ax.plot(xs, values.mean(axis=0), color=colour, marker="o", linewidth=2, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xticks=list(xs))
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_figure(plt, fig, path)


def plot_heatmap(
    path: str | Path,
    values: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    title: str = "",
    label: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    xlabel: str = "",
) -> Path | None:
    """A (rows, columns) table of numbers as a heat map with each value written in its cell (NaN cells blank), e.g.
    mIoU per corruption and severity. Skipped, with one log line, without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    values = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * len(columns), 0.9 + 0.3 * len(rows)))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(columns)), labels=list(columns), fontsize=8)
    ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=8)
    middle = np.nanmean(values) if np.isfinite(values).any() else 0.0
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="white" if v < middle else "black")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    fig.colorbar(image, ax=ax, label=label, fraction=0.05)
    return _save_figure(plt, fig, path)


def _save_figure(plt: Any, fig: Any, path: str | Path) -> Path:
    """Lay out, write atomically as PNG (100 dpi) and close `fig`."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return path


def heat_colours(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 in a black-red-yellow-white ramp (matplotlib's "hot"), for heat
    maps drawn without matplotlib."""
    t = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)[..., None]
    ramp = np.clip(np.concatenate([3 * t, 3 * t - 1, 3 * t - 2], axis=-1), 0.0, 1.0)  # (H, W, 3)
    return (255 * ramp).round().astype(np.uint8)
