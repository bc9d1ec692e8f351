"""Predict label maps for images or folders: NAME.png (class ids, palette PNG) and NAME_overlay.jpg per image.

Videos (.mp4, .mov, .mkv, ...; needs PyAV: pip install 'segformer[video]') give NAME_overlay.mp4 at the same frame
rate and, with --labels, NAME_labels/NNNNNN.png per frame.

GeoTIFFs (georeferenced .tif/.tiff, or every TIFF with --raster; needs rasterio: pip install 'segformer[geo]') of any
size are predicted in blended tiles, window by window: NAME.tif (class ids, nodata 255, the input's CRS, transform
and tags; Cloud-Optimized with overviews unless --no-cog), NAME_overlay.png (a quick look) and, with
--probabilities / --confidence, NAME_prob.tif / NAME_confidence.tif. --bands 4,3,2 picks the input bands.

Folders are searched recursively and their relative paths kept under --out. An unreadable file is reported
("NAME: reason") and skipped; the exit code is 1 at the end if any file failed.

Under torchrun (`torchrun --nproc-per-node N -m segformer predict ...`) the files are split across the processes:
each is written once, rank 0 prints the summary, and every process exits with 1 if any file failed.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .common import add_label_arguments, in_process_group
from .evaluate import add_inference_arguments

if TYPE_CHECKING:
    import numpy as np

    from ..data.labels import LabelConvention


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..data.catalog import DATASETS

    presets = tuple(DATASETS)
    p.add_argument("weights", help="anything load_model accepts (file, folder, hub id), or an exported .onnx / .pte")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--preset",
        choices=presets,
        default=None,
        help="a dataset's test protocol (scale, mode, window, TTA); default: the model's own (see --native-size)",
    )
    add_inference_arguments(p)
    add_label_arguments(
        p,
        palette_help="class colours: a dataset (ade20k, cityscapes, voc, coco-stuff) or a CSV file 'name,r,g,b' per "
        "class (default: the model's palette file, else the dataset whose class count matches, else generated)",
    )
    p.add_argument(
        "--raw-labels",
        action="store_true",
        help="write NAME.png in the masks' own values (undoing --label-map/--reduce-zero-label/--ignore-index; "
        "RGB colours with a palette file) instead of class ids",
    )
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="also write NAME_prob.npy (float16 K x H x W); GeoTIFFs: NAME_prob.tif (float32, a band per class)",
    )
    g = p.add_argument_group("GeoTIFF rasters", "georeferenced TIFFs of any size, in blended tiles (segformer[geo])")
    g.add_argument(
        "--bands",
        default=None,
        metavar="B,B,...",
        help="input bands in the model's channel order, 1-based as GDAL counts (e.g. 4,3,2; default: all)",
    )
    g.add_argument("--raster", action="store_true", help="treat every .tif/.tiff as a raster, georeferenced or not")
    g.add_argument("--confidence", action="store_true", help="also write NAME_confidence.tif (top probability)")
    g.add_argument("--no-cog", action="store_true", help="plain tiled GeoTIFFs instead of Cloud-Optimized ones")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours (0..1)")
    p.add_argument("--no-legend", action="store_true", help="overlays without the legend of classes present")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--labels", action="store_true", help="videos: also write a label PNG per frame")
    p.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="processes decoding/resizing images ahead of the model, and as many writing outputs (0 = none; "
        "default: the cores, 1 to 8)",
    )


def palette_and_names(
    model: Any, palette_name: str | None, verb: str, labels: LabelConvention | None = None
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """The colours and class names predict uses for a model: a named dataset's palette, else the palette file of the
    label convention (`labels`, default: the one stored with the model), else the dataset whose class count matches
    the model, else generated colours (a short palette is completed with generated ones)."""
    from ..data import DATASETS, LabelConvention
    from ..imageio import default_palette

    k = model.config.num_classes
    labels = labels if labels is not None else LabelConvention.from_dict(model.config.labels)
    colours = labels.class_colours(k) if not palette_name else None
    if colours is not None:
        from_palette = labels.class_names_from_palette()
        names = model.config.class_names or (from_palette if from_palette and len(from_palette) == k else None)
        return colours, names
    if palette_name:
        info = DATASETS[palette_name]
        if info.num_classes < k:
            print(f"segformer {verb}: note: palette {palette_name} has {info.num_classes} colours for {k} classes")
    else:
        info = next((d for d in DATASETS.values() if d.num_classes == k), None)
    palette = info.palette_array() if info is not None else default_palette(k)
    if info is not None and info.num_classes < k:
        palette = default_palette(k).copy()
        palette[: info.num_classes] = info.palette_array()
    names = model.config.class_names or (info.class_names if info is not None and info.num_classes == k else None)
    return palette, names


def run(args: argparse.Namespace) -> int:
    """Predict on this process's share of the inputs (all of them outside torchrun); 1 if any file failed."""
    from ..runtime import resolve_device

    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha {args.alpha} must be between 0 and 1")
    if args.num_workers is not None and args.num_workers < 0:
        raise ValueError(f"--num-workers {args.num_workers} must be >= 0")
    return in_process_group(_run, args, resolve_device(args.device))


def _run(args: argparse.Namespace, device: Any) -> int:
    import sys

    from ..data import DATASETS
    from ..export.runtimes import runtime_options
    from ..inference import Segmenter
    from ..training import distributed as D
    from .common import label_convention, load_for_inference
    from .evaluate import describe, inference_options

    model = load_for_inference(args.weights)
    options = inference_options(args, DATASETS[args.preset] if args.preset else None, model.config)
    options = runtime_options(model, options)  # a fixed-size .pte runs slide windows of its size
    preset = args.palette if args.palette in DATASETS else None  # --palette: a dataset's colours or a CSV file
    if preset:
        args.palette = None
    labels = label_convention(args, base=model.config.labels)  # the model's convention unless flags change it
    palette, names = palette_and_names(model, preset, "predict", labels)
    segmenter = Segmenter(model, options, device=device, compile=args.compile)
    if D.is_main():
        print(f"predicting with {args.weights} ({model.config.num_classes} classes): {describe(options)}")
        if not labels.is_default:
            print(f"labels: {labels.describe()}{' (NAME.png in these raw values)' if args.raw_labels else ''}")

    def report(name: str, reason: str) -> None:
        print(f"{name}: {reason}", file=sys.stderr)

    style = {"palette": palette, "class_names": names, "alpha": args.alpha, "legend": not args.no_legend}
    style["progress"] = not args.no_progress and D.is_main()
    video_failed = _videos(args, segmenter, style, report)
    images = [i for i in args.inputs if not _is_video(i)]
    if not images:
        return 1 if video_failed else 0
    return max(_images(args, segmenter, images, style, labels, report), 1 if video_failed else 0)


def _is_video(path: str) -> bool:
    from ..inference.video import is_video

    return is_video(path)


def _videos(args: argparse.Namespace, segmenter: Any, style: dict[str, Any], report: Any) -> bool:
    """Overlay videos of this process's share of the video inputs; whether any failed (on any process)."""
    from ..inference.video import predict_videos, require_av
    from ..training import distributed as D

    videos = [i for i in args.inputs if _is_video(i)]
    if not videos:
        return False
    require_av()
    mine = videos[D.rank() :: D.world_size()]
    done, failed = predict_videos(segmenter, mine, args.out, report, labels=args.labels, **style)
    counts = D.gather_objects((len(done), sum(v.frames for v in done), len(failed)))
    if D.is_main():
        total, frames = sum(c[0] for c in counts), sum(c[1] for c in counts)  # type: ignore[index]
        print(f"wrote {total} overlay videos ({frames} frames) to {args.out}")
    return sum(c[2] for c in counts) > 0  # type: ignore[index]


def _images(
    args: argparse.Namespace, segmenter: Any, images: list[str], style: dict[str, Any], labels: Any, report: Any
) -> int:
    """Label maps and overlays of this process's share of the images and GeoTIFFs; the summary (all processes) on
    rank 0."""
    from ..inference.files import predict_files
    from ..training import distributed as D

    rasters, wanted = _rasters(args, segmenter, images, style, report)
    summary = predict_files(
        segmenter,
        images,
        args.out,
        probabilities=args.probabilities,
        report=report,
        num_workers=args.num_workers,
        encode=labels.encode if args.raw_labels else None,  # written so by the writers, never rewritten after
        skip=wanted,
        **style,
    )
    shares = D.gather_objects((len(summary.written), summary.failed + rasters.failed, len(rasters.written)))
    written = sum(s[0] for s in shares)  # type: ignore[index]
    failed = [f for s in shares for f in s[1]]  # type: ignore[index]
    geotiffs = sum(s[2] for s in shares)  # type: ignore[index]
    if D.is_main():
        what = [f"{written} label maps and overlays"] if written or not geotiffs else []
        what += [f"{geotiffs} GeoTIFF class rasters"] if geotiffs else []
        print(f"wrote {' and '.join(what)} to {args.out}", end="")
        if failed:
            print(f"; {len(failed)} failed:")
            for name, reason in failed:
                print(f"  {name}: {reason}")
        else:
            print()
    return 1 if failed else 0


def _rasters(
    args: argparse.Namespace, segmenter: Any, inputs: list[str], style: dict[str, Any], report: Any
) -> tuple[Any, Any]:
    """(summary of this process's share of the GeoTIFFs among `inputs`, which TIFFs go that way)."""
    from ..geoio import RASTER_SUFFIXES, is_georeferenced, parse_bands, require_rasterio
    from ..inference.files import PredictSummary
    from ..inference.raster import RasterOutput, collect_rasters, predict_rasters

    if args.raster:
        require_rasterio()

    def wanted(path: Any) -> bool:
        return path.suffix.lower() in RASTER_SUFFIXES and (args.raster or is_georeferenced(path))

    files = collect_rasters(inputs, args.out, wanted)
    if args.bands is not None and not files:
        raise ValueError(
            "--bands picks the bands of GeoTIFFs, and there are none among the inputs (--raster: any TIFF)"
        )
    if not files:
        return PredictSummary([], []), wanted
    output = RasterOutput(
        args.probabilities, args.confidence, cog=not args.no_cog, alpha=args.alpha, legend=not args.no_legend
    )
    bands = parse_bands(args.bands) if args.bands is not None else None
    summary = predict_rasters(
        segmenter,
        files,
        args.out,
        bands=bands,
        output=output,
        palette=style["palette"],
        class_names=style["class_names"],
        report=report,
        progress=style["progress"],
    )
    return summary, wanted
