"""An interactive page for any model: `segformer app MODEL` serves it on 127.0.0.1 with Gradio (the `app` extra).

Drop, paste or pick an image and see the overlay (opacity, classes hidden or shown one by one), a legend of the
classes present with their share of pixels, the model's facts (variant, parameters, classes, test protocol), and
download the label map (the palette PNG `segformer predict` writes, from the same `Segmenter`) and the overlay.
Whole or slide mode and flip TTA can be changed on the page; a second model can be shown side by side.

The pure functions (overlay, legend, options, facts) and `Page`, which holds the page's logic (predict an upload,
render it, the facts panels, the downloads), are testable without a browser or Gradio. `layout` (through
`build_app`) only wires Gradio's components to a `Page`, and is the only code that imports Gradio, so the rest of
the library does not need it.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import nn

from ..fileio import atomic_write
from ..imageio import IMAGE_SUFFIXES, ImageReadError, read_image, write_label_png
from ..inference import MODES, InferenceOptions, Segmenter
from ..visualize import overlay

# Slide mode chosen on the page for a model without a window of its own: the catalog's default (DatasetInfo).
SLIDE_CROP = (512, 512)
SLIDE_STRIDE = (341, 341)
# An image of more pixels than this, which the options would run at its own size (a model with no test protocol
# stored and no --scale), runs at the paper's whole-image test scale instead (long side <= 2048, short side <= 512,
# ADE20K's); the label map is still at the original size. A 12 MP photo would otherwise run at 12 MP: slowly, with
# gigabytes of activations, and far from the scale any model was trained at.
HUGE_PIXELS = 2048 * 2048
HUGE_SCALE = (2048, 512)
PROTOCOL = "protocol"  # the page's mode choice that keeps each model's own
MAX_EXAMPLES = 8
IMAGE_HEIGHT = 360  # px on the page; images are scaled to fit, downloads keep the original size
INSTALL_HINT = "the app needs Gradio: pip install 'segformer[app]'"


@dataclass(frozen=True)
class ModelEntry:
    """A model on the page: where it came from, its colours and class names, and how it runs (`options`: what
    `segformer predict` would use for it, e.g. `InferenceOptions.for_model(model.config)`)."""

    model: nn.Module
    source: str
    palette: np.ndarray
    class_names: tuple[str, ...] | None = None
    device: str | None = None
    options: InferenceOptions = InferenceOptions()

    @property
    def num_classes(self) -> int:
        return int(self.model.config.num_classes)

    def name(self, class_id: int) -> str:
        names = self.class_names
        return names[class_id] if names is not None and class_id < len(names) else str(class_id)


@dataclass(frozen=True)
class LegendEntry:
    """One class present in a label map: its id, name, colour (#rrggbb) and share of the pixels (0..1)."""

    class_id: int
    name: str
    colour: str
    share: float


# ---------------------------------------------------------------------------------------------------------------
# Pure functions: prediction, options, overlay, legend, facts
# ---------------------------------------------------------------------------------------------------------------
def segment(entry: ModelEntry, image: np.ndarray, options: InferenceOptions) -> np.ndarray:
    """(H, W) int64 class ids for an RGB uint8 image: the one place the app calls `Segmenter` (as predict does)."""
    return Segmenter(entry.model, options, device=entry.device)(image)


def page_options(base: InferenceOptions, mode: str, flip: bool) -> InferenceOptions:
    """A model's options with the page's mode ("protocol" keeps the model's own) and flip; slide without a window
    gets SLIDE_CROP."""
    options = base
    if mode not in (PROTOCOL, base.mode):
        if mode == "slide" and base.crop is None:
            options = options.replace(mode="slide", crop=SLIDE_CROP, stride=SLIDE_STRIDE)
        else:
            options = options.replace(mode=mode)
    return options if bool(flip) == base.flip else options.replace(flip=bool(flip))


def options_for_image(
    options: InferenceOptions, height: int, width: int, rescale_huge: bool = True
) -> tuple[InferenceOptions, str | None]:
    """The options for one image, and a note when a huge image is rescaled (see HUGE_PIXELS), else None."""
    if rescale_huge and options.scale is None and height * width > HUGE_PIXELS:
        note = (
            f"{width}x{height} is larger than {HUGE_PIXELS / 1e6:.1f} MP: it runs at the test scale "
            f"{HUGE_SCALE[0]}x{HUGE_SCALE[1]} (long x short side), the label map is at the original size"
        )
        return options.replace(scale=HUGE_SCALE), note
    return options, None


def read_upload(path: str | Path) -> np.ndarray:
    """An uploaded file as RGB uint8 (H, W, 3), read as `segformer predict` reads files (EXIF-rotated).

    Raises ImageReadError with a message for the page when it is not an image Pillow can decode.
    """
    try:
        return read_image(path)
    except ImageReadError as e:
        reason = str(e).removeprefix(f"{path}: ")
    except Exception as e:  # e.g. Pillow's DecompressionBombError for images of hundreds of megapixels
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    name = Path(path).name
    reason = reason.replace(str(path), name)  # the server's folders are none of the page's business
    raise ImageReadError(f"{name} is not an image this page can read: {reason}")


def class_shares(labels: np.ndarray) -> list[tuple[int, float]]:
    """(class id, share of pixels) for every class present, largest first (ties by id)."""
    ids, counts = np.unique(np.asarray(labels), return_counts=True)
    total = max(int(counts.sum()), 1)
    pairs = [(int(i), int(c) / total) for i, c in zip(ids, counts, strict=True)]
    return sorted(pairs, key=lambda t: (-t[1], t[0]))


def hex_colour(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb[:3]))


def legend_entries(labels: np.ndarray, entry: ModelEntry) -> list[LegendEntry]:
    """The classes present in `labels`, largest share first, with their colours from the entry's palette."""
    pal = np.asarray(entry.palette, np.uint8).reshape(-1, 3)
    out = []
    for class_id, share in class_shares(labels):
        colour = hex_colour(pal[class_id]) if class_id < len(pal) else "#000000"
        out.append(LegendEntry(class_id, entry.name(class_id), colour, share))
    return out


def legend_html(entries: Sequence[LegendEntry], hidden: Sequence[int] = ()) -> str:
    """An HTML table of the legend: colour swatch, name and share in percent; hidden classes are dimmed."""
    if not entries:
        return "<p class='segformer-legend'>No prediction yet.</p>"
    rows = []
    for e in entries:
        dim = " style='opacity:0.35'" if e.class_id in set(hidden) else ""
        rows.append(
            f"<tr data-class='{e.class_id}'{dim}><td><span class='swatch' style='background:{e.colour}'></span></td>"
            f"<td>{html.escape(e.name)}</td><td class='share'>{100 * e.share:.1f}%</td></tr>"
        )
    return f"<table class='segformer-legend'><tbody>{''.join(rows)}</tbody></table>"


def render_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    entry: ModelEntry,
    alpha: float = 0.5,
    hidden: Sequence[int] = (),
    legend: bool = False,
) -> np.ndarray:
    """The image blended with the class colours (weight `alpha`); pixels of `hidden` classes keep the image's colours.

    With `legend`, the visible classes are listed in the top-left corner, as on `segformer predict`'s overlays.
    """
    labels = np.asarray(labels)
    off = max(entry.num_classes, int(labels.max(initial=0)) + 1, 256)  # beyond every class id: drawn as the image
    hidden_ids = [int(h) for h in hidden]
    shown = np.where(np.isin(labels, hidden_ids), off, labels) if hidden_ids else labels
    return overlay(image, shown, entry.palette, entry.class_names, alpha=float(alpha), legend=legend, ignore_index=off)


def count_parameters(model: nn.Module) -> int | None:
    """Parameters of a PyTorch model; None for an exported runtime (.onnx, .pte), whose file holds them."""
    if not isinstance(model, nn.Module):
        return None
    return sum(p.numel() for p in model.parameters())


def model_facts(
    entry: ModelEntry, describe: Callable[[InferenceOptions], str] = repr, rescale_huge: bool = True
) -> str:
    """Markdown: source, variant, parameters, classes, the test protocol the page runs the model with, and the
    weights' licence (`segformer.model.licence`)."""
    from ..model.licence import summary as licence_summary

    config = entry.model.config
    names = entry.class_names
    k = entry.num_classes
    shown = ", ".join(names[:20]) + (f", ... ({k - 20} more)" if k > 20 else "") if names else f"ids 0..{k - 1}"
    variant = getattr(config, "name", None) or getattr(config, "variant", None) or "custom"
    protocol = describe(entry.options)
    if rescale_huge and entry.options.scale is None:
        protocol += f"; images over {HUGE_PIXELS / 1e6:.1f} MP run at {HUGE_SCALE[0]}x{HUGE_SCALE[1]}"
    return "\n".join(
        [
            f"- **model**: `{entry.source}`",
            f"- **variant**: {variant}",
            f"- **parameters**: {_parameters(entry.model)}",
            f"- **classes** ({k}): {html.escape(shown)}",
            f"- **test protocol**: {html.escape(protocol)}",
            f"- **licence**: {html.escape(licence_summary(getattr(config, 'licence', None)))}",
        ]
    )


def _parameters(model: Any) -> str:
    count = count_parameters(model)
    return f"{count / 1e6:.2f} M" if count is not None else f"in the exported file ({model.path.suffix})"


def find_examples(folder: str | Path | None, limit: int = MAX_EXAMPLES) -> list[str]:
    """Up to `limit` image files of a folder, sorted by name (none when the folder does not exist)."""
    if folder is None or not Path(folder).is_dir():
        return []
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [str(p) for p in files[:limit]]


def _upload_path(payload: Any) -> tuple[str | None, str]:
    """(path on the server, original file name) from a Gradio file payload (dict or FileData), or (None, "")."""
    if payload is None:
        return None, ""
    get = payload.get if isinstance(payload, dict) else lambda k, d=None: getattr(payload, k, d)
    path = get("path")
    return path, get("orig_name") or (Path(path).name if path else "")


def _stem(name: str) -> str:
    stem = Path(name or "image").stem
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "image"


# ---------------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------------
CSS = """
.segformer-legend { border-collapse: collapse; border: none !important; }
.segformer-legend tr, .segformer-legend td { padding: 2px 10px 2px 0 !important; border: none !important;
  background: none !important; }
.segformer-legend .swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid #888;
  vertical-align: middle; }
.segformer-legend .share { text-align: right; font-variant-numeric: tabular-nums; }
.segformer-picture img { width: 100%; height: 100%; object-fit: contain; }
.segformer-overlay .image-container { height: IMAGE_HEIGHTpx; }
.segformer-overlay .image-container > button, .segformer-overlay .image-frame { width: 100%; height: 100%; }
""".replace("IMAGE_HEIGHT", str(IMAGE_HEIGHT))


def import_gradio() -> Any:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before the import: no analytics, no version check
    try:
        import gradio as gr
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    return gr


# ---------------------------------------------------------------------------------------------------------------
# The page's logic, without Gradio
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Upload:
    """One image and its label map per model: what a browser session keeps (Gradio's State) between renderings."""

    image: np.ndarray
    labels: tuple[np.ndarray, ...]
    folder: Path  # this image's downloads
    stem: str  # the downloads' names start with it (the upload's name, made safe)


@dataclass(frozen=True)
class Prediction:
    """What an upload (or a change of mode or flip) shows: the status line and, per model, the classes present as
    (name, id), largest first (the class boxes, all checked), and the label map to download. `upload` is None when
    there is nothing to show: no image, one that cannot be read, or a prediction that failed (the status says why)."""

    upload: Upload | None
    status: str
    classes: tuple[tuple[tuple[str, int], ...], ...]
    label_files: tuple[Path | None, ...]


@dataclass(frozen=True)
class Rendering:
    """One model's panel: the overlay, the legend (HTML) and the overlay file to download, which has the legend
    drawn in; `overlay` and `overlay_file` are None before an upload."""

    overlay: np.ndarray | None
    legend: str
    overlay_file: Path | None


class Page:
    """The page's logic for one model, or several side by side on the same image, without Gradio: `predict` an
    upload, `render` it with an opacity and the classes shown, the `facts` panel of each model. `layout` wires
    Gradio's components to these methods; tests call them directly.

    Each model runs with its entry's options until the page switches mode or flip (for all models at once).
    Downloads are written under `work_dir` (default: a new temporary folder, removed with the page).
    """

    def __init__(
        self,
        entries: Sequence[ModelEntry],
        *,
        describe: Callable[[InferenceOptions], str] = repr,
        rescale_huge: bool = True,
        work_dir: str | Path | None = None,
    ) -> None:
        if not entries:
            raise ValueError("build_app needs at least one model")
        self.entries = tuple(entries)
        self.describe = describe
        self.rescale_huge = rescale_huge
        self.work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="segformer-app-"))
        self.work.mkdir(parents=True, exist_ok=True)
        if work_dir is None:
            weakref.finalize(self, shutil.rmtree, self.work, True)  # the temporary folder goes with the page

    @property
    def title(self) -> str:
        return "SegFormer: " + " vs ".join(e.source for e in self.entries)

    @property
    def flip(self) -> bool:
        """The flip box's first state: on when every model's own options flip."""
        return all(e.options.flip for e in self.entries)

    def facts(self, i: int) -> str:
        return model_facts(self.entries[i], self.describe, self.rescale_huge)

    def file_name(self, stem: str, i: int, kind: str = "") -> str:
        """A download's name: `{stem}{kind}.png`, with `_model{i + 1}` before `.png` when several models are shown."""
        return f"{stem}{kind}{'' if len(self.entries) == 1 else f'_model{i + 1}'}.png"

    def predict(
        self, path: str | Path | None, name: str = "", mode: str = PROTOCOL, flip: bool | None = None
    ) -> Prediction:
        """Every model on the file at `path` (uploaded as `name`) with the page's `mode` and `flip` (default: the
        box's first state); the label maps are written for download."""
        if path is None:
            return self._nothing("")
        try:
            image = read_upload(path)
        except ImageReadError as e:
            return self._nothing(f"**Could not use the upload:** {html.escape(str(e))}")
        name = name or Path(path).name
        stem, folder = _stem(name), self._new_folder()
        flip = self.flip if flip is None else flip
        try:
            runs = [
                self._segment(i, image, mode, flip, folder / self.file_name(stem, i)) for i in range(len(self.entries))
            ]
        except (RuntimeError, ValueError) as e:  # out of memory, a window larger than allowed, ...
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            return self._nothing(f"**Prediction failed:** {html.escape(first)}")
        labels, used, files = (tuple(column) for column in zip(*runs, strict=True))
        h, w = image.shape[:2]
        if len(used) == 1:
            status = f"{html.escape(name)}: {w}x{h}, {html.escape(used[0])}"
        else:
            status = f"{html.escape(name)}: {w}x{h}; " + "; ".join(
                f"model {i + 1}: {html.escape(u)}" for i, u in enumerate(used)
            )
        classes = tuple(
            tuple((e.name(c), c) for c, _ in class_shares(lab)) for e, lab in zip(self.entries, labels, strict=True)
        )
        return Prediction(Upload(image, labels, folder, stem), status, classes, files)

    def render(self, upload: Upload | None, opacity: float, shown: Sequence[Sequence[int] | None]) -> list[Rendering]:
        """Per model: the overlay of `upload` at `opacity` with only the classes in `shown[i]` coloured (the
        checked boxes: none hides all), its legend, and the overlay file (a new one per call: no stale download)."""
        if not upload:
            return [Rendering(None, legend_html([]), None) for _ in self.entries]
        out = []
        for i, (entry, labels) in enumerate(zip(self.entries, upload.labels, strict=True)):
            visible = {int(c) for c in (shown[i] or [])}
            hidden = [c for c, _ in class_shares(labels) if c not in visible]
            picture = render_overlay(upload.image, labels, entry, opacity, hidden)
            folder = upload.folder / uuid.uuid4().hex  # a new file per rendering: no stale cached download
            folder.mkdir()
            with_legend = Image.fromarray(render_overlay(upload.image, labels, entry, opacity, hidden, legend=True))
            file = atomic_write(
                folder / self.file_name(upload.stem, i, "_overlay"), lambda tmp, im=with_legend: im.save(tmp, "PNG")
            )
            out.append(Rendering(picture, legend_html(legend_entries(labels, entry), hidden), file))
        return out

    def _segment(self, i: int, image: np.ndarray, mode: str, flip: bool, file: Path) -> tuple[np.ndarray, str, Path]:
        """Model i's label map (written to `file`) and the options it ran with, in words."""
        entry = self.entries[i]
        h, w = image.shape[:2]
        options, note = options_for_image(page_options(entry.options, mode, flip), h, w, self.rescale_huge)
        used = self.describe(options) + (f". {note}" if note else "")
        labels = segment(entry, image, options)
        atomic_write(file, lambda tmp: write_label_png(tmp, labels, entry.palette))
        return labels, used, file

    def _nothing(self, status: str) -> Prediction:
        """A prediction with nothing to show but its status."""
        return Prediction(None, status, ((),) * len(self.entries), (None,) * len(self.entries))

    def _new_folder(self) -> Path:
        """A fresh folder for one image's downloads; those of earlier images go after an hour (Gradio has copies)."""
        now = time.time()
        for old in self.work.iterdir():
            if old.is_dir() and now - old.stat().st_mtime > 3600:
                shutil.rmtree(old, ignore_errors=True)
        folder = self.work / uuid.uuid4().hex
        folder.mkdir()
        return folder


# ---------------------------------------------------------------------------------------------------------------
# The layout: Gradio components wired to a Page
# ---------------------------------------------------------------------------------------------------------------
def build_app(
    entries: Sequence[ModelEntry],
    *,
    describe: Callable[[InferenceOptions], str] = repr,
    alpha: float = 0.5,
    examples: Sequence[str] = (),
    rescale_huge: bool = True,
    work_dir: str | Path | None = None,
) -> Any:
    """The Gradio Blocks of the page for one model, or several side by side (a `Page` laid out by `layout`)."""
    return layout(Page(entries, describe=describe, rescale_huge=rescale_huge, work_dir=work_dir), alpha, examples)


def layout(page: Page, alpha: float = 0.5, examples: Sequence[str] = ()) -> Any:
    """The Gradio Blocks: an input column (image, examples, opacity, mode, flip, status) and a column per model,
    wired to `page.predict` and `page.render`; each browser session keeps its `Upload` in a State."""
    gr = import_gradio()

    def predict(payload: Any, mode: str, flip: bool) -> list[Any]:
        p = page.predict(*_upload_path(payload), mode, flip)
        boxes = [gr.update(choices=list(c), value=[i for _, i in c]) for c in p.classes]
        return [p.upload, p.status, *_pairs(boxes, [_download(gr, f) for f in p.label_files])]

    def render(upload: Upload | None, opacity: float, *shown: Any) -> list[Any]:
        return [
            x for r in page.render(upload, opacity, shown) for x in (r.overlay, r.legend, _download(gr, r.overlay_file))
        ]

    with gr.Blocks(title=page.title, analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(f"## {html.escape(page.title)}")
        state = gr.State(None)
        with gr.Row():
            image, opacity, mode, flip, status = _input_column(gr, page, alpha, examples)
            panels = [_model_panel(gr, page, i) for i in range(len(page.entries))]
        predict_outputs = [state, status, *_pairs([p.classes for p in panels], [p.labels for p in panels])]
        render_inputs = [state, opacity] + [p.classes for p in panels]
        render_outputs = [c for p in panels for c in (p.overlay, p.legend, p.overlay_file)]
        for trigger in (image.change, mode.input, flip.input):
            trigger(predict, [image, mode, flip], predict_outputs, preprocess=False).then(
                render, render_inputs, render_outputs
            )
        opacity.release(render, render_inputs, render_outputs)
        for p in panels:
            p.classes.input(render, render_inputs, render_outputs)
    return blocks


def _input_column(gr: Any, page: Page, alpha: float, examples: Sequence[str]) -> tuple[Any, ...]:
    """(image, opacity, mode, flip, status) in the page's first column."""
    with gr.Column(scale=1, min_width=280):
        image = gr.Image(
            type="filepath",
            image_mode=None,
            sources=["upload", "clipboard"],
            label="Image (drop, paste or click to pick)",
            elem_id="input-image",
            elem_classes="segformer-picture",
            height=IMAGE_HEIGHT,
            format="png",
        )
        if examples:
            gr.Examples(examples=[[e] for e in examples], inputs=[image], label="Examples")
        opacity = gr.Slider(0.0, 1.0, value=alpha, step=0.05, label="Overlay opacity", elem_id="opacity")
        with gr.Row(equal_height=True):
            mode = gr.Radio(
                [PROTOCOL, *MODES],
                value=PROTOCOL,
                label="Mode",
                info="protocol: each model's own (see its facts)",
                scale=3,
                elem_id="mode",
            )
            flip = gr.Checkbox(value=page.flip, label="Flip TTA", scale=1, elem_id="flip")
        status = gr.Markdown("", elem_id="status")
    return image, opacity, mode, flip, status


@dataclass(frozen=True)
class _Panel:
    """The components of one model's column."""

    overlay: Any
    legend: Any
    classes: Any
    labels: Any  # the label map's download button
    overlay_file: Any  # the overlay's download button


def _model_panel(gr: Any, page: Page, i: int) -> _Panel:
    """Model i's column: facts, overlay, legend, class boxes, downloads (element ids end in i)."""
    with gr.Column(scale=1, min_width=280):
        with gr.Accordion(f"Model {i + 1}" if len(page.entries) > 1 else "Model", open=True):
            gr.Markdown(page.facts(i), elem_id=f"facts-{i}")
        shown = gr.Image(
            label="Overlay",
            type="numpy",
            format="png",
            interactive=False,
            buttons=["fullscreen"],
            height=IMAGE_HEIGHT,
            elem_id=f"overlay-{i}",
            elem_classes=["segformer-picture", "segformer-overlay"],
        )
        legend = gr.HTML(legend_html([]), elem_id=f"legend-{i}")
        classes = gr.CheckboxGroup([], value=[], label="Show classes", elem_id=f"classes-{i}")
        with gr.Row():
            labels = gr.DownloadButton("Label map (PNG)", interactive=False, size="sm", elem_id=f"download-labels-{i}")
            overlay_file = gr.DownloadButton(
                "Overlay (PNG)", interactive=False, size="sm", elem_id=f"download-overlay-{i}"
            )
    return _Panel(shown, legend, classes, labels, overlay_file)


def _download(gr: Any, file: Path | None) -> Any:
    """A download button's update: the file, clickable, or nothing, greyed out."""
    return gr.update(value=str(file) if file is not None else None, interactive=file is not None)


def _pairs(a: Sequence[Any], b: Sequence[Any]) -> list[Any]:
    """[a0, b0, a1, b1, ...]: Gradio's outputs in the order of the panels."""
    return [x for pair in zip(a, b, strict=True) for x in pair]


def launch(page: Any, host: str = "127.0.0.1", port: int = 7860, block: bool = True, quiet: bool = False) -> Any:
    """Serve the page on host:port (that port only), fonts and scripts from the server itself, nothing shared."""
    import_gradio()
    return page.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=not block,
        quiet=quiet,
        show_error=True,
        css=CSS,
        footer_links=[],
        inbrowser=False,
    )
