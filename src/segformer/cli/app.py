"""Serve an interactive page for a model on this machine: overlay, legend, class toggles, downloads, compare.

Needs the app extra (pip install 'segformer[app]'). The page runs the model exactly as `segformer predict` does with
the same flags; it fetches nothing from the internet and sends no analytics. Open http://HOST:PORT in a browser.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_EXAMPLES = Path("data/synth/images/val")  # the val images of `segformer demo` / `make demo`


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..data.catalog import DATASETS
    from .evaluate import add_inference_arguments

    presets = tuple(DATASETS)

    p.add_argument("weights", metavar="MODEL", help="anything load_model accepts, or an exported .onnx / .pte")
    p.add_argument("--compare", metavar="MODEL2", default=None, help="a second model shown side by side")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860; only this port is tried)")
    p.add_argument(
        "--examples",
        default=None,
        help=f"folder of example images (default: {DEFAULT_EXAMPLES} when it exists, the demo's val images)",
    )
    p.add_argument(
        "--preset",
        choices=presets,
        default=None,
        help="a dataset's test protocol (scale, mode, window, TTA); default: each model's own, as segformer predict",
    )
    add_inference_arguments(p, compile=False)
    p.add_argument("--palette", choices=presets, default=None, help="class colours of a dataset (default: as predict)")
    p.add_argument("--alpha", type=float, default=0.5, help="initial overlay opacity (0..1, default 0.5)")


def check_port(host: str, port: int) -> None:
    """Raise RuntimeError with one clear line when host:port cannot be bound (in use, or not an address here)."""
    import socket

    if not 0 < port < 65536:
        raise ValueError(f"--port {port} must be between 1 and 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise RuntimeError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        if hasattr(socket, "SO_REUSEPORT"):  # as the server does: a port left in TIME_WAIT is free, a listener is not
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            if e.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
                raise RuntimeError(
                    f"port {port} on {host} is already in use; stop what uses it or pass --port"
                ) from None
            raise RuntimeError(f"cannot serve on {host}:{port} ({e.strerror or e})") from None


def run(args: argparse.Namespace) -> int:
    import logging

    from ..apps import app
    from ..data import DATASETS
    from ..export.runtimes import runtime_options
    from ..runtime import resolve_device
    from .common import load_for_inference
    from .evaluate import describe, inference_options
    from .predict import palette_and_names

    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha {args.alpha} must be between 0 and 1")
    app.import_gradio()  # no Gradio: one line naming the extra, before loading anything
    check_port(args.host, args.port)
    device = resolve_device(args.device)
    entries = []
    for source in [args.weights] + ([args.compare] if args.compare else []):
        model = load_for_inference(source)  # a model that fails to load ends here, in one line, before serving
        options = inference_options(args, DATASETS[args.preset] if args.preset else None, model.config)
        options = runtime_options(model, options)
        palette, names = palette_and_names(model, args.palette, "app")
        entries.append(app.ModelEntry(model, str(source), palette, names, device, options))
    examples_dir = args.examples if args.examples is not None else DEFAULT_EXAMPLES
    if args.examples is not None and not Path(args.examples).is_dir():
        raise FileNotFoundError(f"--examples {args.examples}: no such folder")
    page = app.build_app(
        entries,
        describe=describe,
        alpha=args.alpha,
        examples=app.find_examples(examples_dir),
        # --native-size / --scale original: the user asked for every image at its own size, however large
        rescale_huge=args.scale is None and not args.native_size,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's self-checks are not news
    for e in entries:
        print(f"{e.source}: {e.num_classes} classes, {describe(e.options)}")
    print(f"serving at http://{args.host}:{args.port}")
    try:
        app.launch(page, args.host, args.port)
    except OSError as e:  # the port was taken between the check and the launch
        raise RuntimeError(f"cannot serve on {args.host}:{args.port} ({str(e).splitlines()[0]})") from None
    return 0
