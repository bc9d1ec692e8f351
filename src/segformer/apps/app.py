"""An interactive page for any model: `segformer app MODEL` serves it on 127.0.0.1 with Gradio (the `app` extra).

Drop, paste or pick an image and see the overlay (opacity, classes hidden or shown one by one), a legend of the
classes present with their share of pixels, the model's facts (variant, parameters, classes, test protocol), and
download the label map (the palette PNG `segformer predict` writes, from the same `Segmenter`) and the overlay.
Whole or slide mode and flip TTA can be changed on the page; a second model can be shown side by side.

The pure functions (overlay, legend, options, facts) are testable without a browser; `build_app` assembles the
Gradio Blocks and is the only code that imports Gradio, so the rest of the library does not need it.
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

from ..imageio import IMAGE_SUFFIXES, ImageReadError, read_image, write_label_png
from ..inference import InferenceOptions, Segmenter
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


def count_parameters(model: nn.Module) -> int:
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
            f"- **parameters**: {count_parameters(entry.model) / 1e6:.2f} M",
            f"- **classes** ({k}): {html.escape(shown)}",
            f"- **test protocol**: {html.escape(protocol)}",
            f"- **licence**: {html.escape(licence_summary(getattr(config, 'licence', None)))}",
        ]
    )


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


def build_app(
    entries: Sequence[ModelEntry],
    *,
    describe: Callable[[InferenceOptions], str] = repr,
    alpha: float = 0.5,
    examples: Sequence[str] = (),
    rescale_huge: bool = True,
    work_dir: str | Path | None = None,
) -> Any:
    """The Gradio Blocks of the page for one model, or several side by side on the same image.

    Each model runs with its entry's options until the page switches mode or flip (for all models at once).
    Downloads are written under `work_dir` (default: a new temporary folder).
    """
    if not entries:
        raise ValueError("build_app needs at least one model")
    gr = import_gradio()
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="segformer-app-"))
    work.mkdir(parents=True, exist_ok=True)
    n = len(entries)

    def new_folder() -> Path:
        """A fresh folder for one image's downloads; those of earlier images go after an hour (Gradio has copies)."""
        now = time.time()
        for old in work.iterdir():
            if old.is_dir() and now - old.stat().st_mtime > 3600:
                shutil.rmtree(old, ignore_errors=True)
        folder = work / uuid.uuid4().hex
        folder.mkdir()
        return folder

    def predict(payload: Any, mode: str, flip: bool) -> list[Any]:
        """Upload or option change -> state, status, and per model: class checkboxes, label-map download."""
        path, orig_name = _upload_path(payload)
        empty = [None, ""] + [gr.update(choices=[], value=[]), gr.update(value=None, interactive=False)] * n
        if path is None:
            return empty
        try:
            image = read_upload(path)
        except ImageReadError as e:
            return [None, f"**Could not use the upload:** {html.escape(str(e))}"] + empty[2:]
        h, w = image.shape[:2]
        folder = new_folder()
        stem = _stem(orig_name)
        labels, outputs, used = [], [], []
        try:
            for i, entry in enumerate(entries):
                run_options, note = options_for_image(page_options(entry.options, mode, flip), h, w, rescale_huge)
                used.append(describe(run_options) + (f". {note}" if note else ""))
                lab = segment(entry, image, run_options)
                labels.append(lab)
                label_file = folder / (f"{stem}.png" if n == 1 else f"{stem}_model{i + 1}.png")
                write_label_png(label_file, lab, entry.palette)
                present = [(entry.name(c), c) for c, _ in class_shares(lab)]
                outputs += [
                    gr.update(choices=present, value=[c for _, c in present]),
                    gr.update(value=str(label_file), interactive=True),
                ]
        except (RuntimeError, ValueError) as e:  # out of memory, a window larger than allowed, ...
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            return [None, f"**Prediction failed:** {html.escape(first)}"] + empty[2:]
        if n == 1:
            status = f"{html.escape(orig_name)}: {w}x{h}, {html.escape(used[0])}"
        else:
            runs = "; ".join(f"model {i + 1}: {html.escape(u)}" for i, u in enumerate(used))
            status = f"{html.escape(orig_name)}: {w}x{h}; {runs}"
        state = {"image": image, "labels": labels, "folder": str(folder), "stem": stem}
        return [state, status, *outputs]

    def render(state: Any, opacity: float, *shown_classes: Any) -> list[Any]:
        """State + opacity + per model the checked classes -> per model: overlay, legend, overlay download."""
        if not state:
            return [None, legend_html([]), gr.update(value=None, interactive=False)] * n
        out: list[Any] = []
        for i, entry in enumerate(entries):
            lab = state["labels"][i]
            shown = {int(c) for c in (shown_classes[i] or [])}
            hidden = [c for c, _ in class_shares(lab) if c not in shown]
            picture = render_overlay(state["image"], lab, entry, opacity, hidden)
            folder = Path(state["folder"]) / uuid.uuid4().hex  # a new file per rendering: no stale cached download
            folder.mkdir()
            file = folder / (f"{state['stem']}_overlay.png" if n == 1 else f"{state['stem']}_overlay_model{i + 1}.png")
            Image.fromarray(render_overlay(state["image"], lab, entry, opacity, hidden, legend=True)).save(file)
            out += [
                picture,
                legend_html(legend_entries(lab, entry), hidden),
                gr.update(value=str(file), interactive=True),
            ]
        return out

    title = "SegFormer: " + " vs ".join(e.source for e in entries)
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"## {html.escape(title)}")
        state = gr.State(None)
        with gr.Row():
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
                        [PROTOCOL, "whole", "slide"],
                        value=PROTOCOL,
                        label="Mode",
                        info="protocol: each model's own (see its facts)",
                        scale=3,
                        elem_id="mode",
                    )
                    flip = gr.Checkbox(
                        value=all(e.options.flip for e in entries), label="Flip TTA", scale=1, elem_id="flip"
                    )
                status = gr.Markdown("", elem_id="status")
            panels = []
            for i, entry in enumerate(entries):
                with gr.Column(scale=1, min_width=280):
                    with gr.Accordion(f"Model {i + 1}" if n > 1 else "Model", open=True):
                        gr.Markdown(model_facts(entry, describe, rescale_huge), elem_id=f"facts-{i}")
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
                        label_button = gr.DownloadButton(
                            "Label map (PNG)", interactive=False, size="sm", elem_id=f"download-labels-{i}"
                        )
                        overlay_button = gr.DownloadButton(
                            "Overlay (PNG)", interactive=False, size="sm", elem_id=f"download-overlay-{i}"
                        )
                    panels.append((shown, legend, classes, label_button, overlay_button))

        predict_outputs = [state, status] + [c for p in panels for c in (p[2], p[3])]
        render_inputs = [state, opacity] + [p[2] for p in panels]
        render_outputs = [c for p in panels for c in (p[0], p[1], p[4])]
        for trigger in (image.change, mode.input, flip.input):
            trigger(predict, [image, mode, flip], predict_outputs, preprocess=False).then(
                render, render_inputs, render_outputs
            )
        opacity.release(render, render_inputs, render_outputs)
        for p in panels:
            p[2].input(render, render_inputs, render_outputs)
    if work_dir is None:
        weakref.finalize(page, shutil.rmtree, work, True)  # the temporary folder goes with the page (or at exit)
    return page


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
