"""Exported files as forward functions for the inference spine's `run` stage.

A runtime is only a forward: (B, C, h, w) normalised float tensor -> (B, K, h', w') logits. `Segmenter(OnnxForward(
path), options)` then runs an exported file exactly as `Segmenter(model, options)` runs the PyTorch model: the same
`prepare` (normalise, resize), the same test modes around the forward, the same `finish` (the exact resized argmax).
A graph that outputs class ids (`export_onnx(with_postprocess=True)`) gives them as (B, h, w) integers, which
`finish` resizes to the image by nearest; a graph that takes uint8 pixels (`with_preprocess=True`) gets the
normalised input de-normalised and rounded back to pixels.

Each forward carries `config` (the `SegFormerConfig` stored in the file's metadata, or the one given), so
`Segmenter` finds the channel count, mean/std, classes and test protocol as it does on a model.

onnxruntime is the optional `onnx` extra; it is imported inside functions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..constants import MEAN, STD
from ..model.config import SegFormerConfig, channel_stats
from ..protocol import InferenceOptions


def require_onnx() -> None:
    """Raise a one-line RuntimeError naming what to install when onnx or onnxruntime is missing."""
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise RuntimeError(
            f"ONNX export needs {' and '.join(missing)}: pip install 'segformer[onnx]' (or onnx onnxruntime)"
        )


def ort_session(
    path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None, spinning: bool = True
):
    """An ONNX Runtime session with full graph optimisation and `threads` intra-op threads. `spinning=False` stops
    its idle threads from busy-waiting after each run (fairer when several sessions or libraries share cores)."""
    require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def config_from_metadata(metadata: dict[str, str], source: str | os.PathLike) -> SegFormerConfig | None:
    """The `SegFormerConfig` an export stored under "segformer_config" (None when there is none)."""
    text = metadata.get("segformer_config")
    if text is None:
        return None
    try:
        return SegFormerConfig.from_dict(json.loads(text))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: unreadable segformer_config metadata ({e}); export the model again") from e


class OnnxForward:
    """An ONNX Runtime session as a forward function: (B, C, h, w) normalised float -> logits (B, K, h/4, w/4), or
    class ids (B, h, w) from a graph with postprocessing.

    `config`: the model's config (default: the one in the file's metadata); its mean/std de-normalise the input of
    a graph that takes pixels. `threads`, `providers`, `spinning` as `ort_session`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        threads: int | None = None,
        providers: list[str] | None = None,
        spinning: bool = True,
        config: SegFormerConfig | None = None,
    ) -> None:
        self.path = Path(path)
        self.session = ort_session(path, threads, providers, spinning)
        metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.config = config or config_from_metadata(metadata, path)
        if self.config is not None:
            mean, std = channel_stats(self.config)
        else:
            mean, std = json.loads(metadata.get("mean", "null")) or MEAN, json.loads(metadata.get("std", "null")) or STD
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.input = self.session.get_inputs()[0]
        self.pixels_input = self.input.name == "image"  # `with_preprocess`: (B, H, W, C) pixels as stored
        self.uint8_input = self.input.type == "tensor(uint8)"
        self.labels_output = self.session.get_outputs()[0].type != "tensor(float)"
        self.device = torch.device("cpu")

    def feed(self, x: Tensor) -> np.ndarray:
        """The graph input for a normalised batch (B, C, h, w): as it is, or the pixels it came from ((B, h, w, C);
        uint8 rounded from the de-normalised values)."""
        x = x.detach().float().cpu()
        if not self.pixels_input:
            return x.contiguous().numpy()
        pixels = x * self.std + self.mean
        if self.uint8_input:
            pixels = pixels.round().clamp(0, 255).to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).contiguous().numpy()  # (B, C, h, w) -> (B, h, w, C)

    def __call__(self, x: Tensor) -> Tensor:
        out = self.session.run(None, {self.input.name: self.feed(x)})[0]
        return torch.from_numpy(out)


class PteForward:
    """An ExecuTorch program (.pte, `pte.export_pte`) as a forward function, run by ExecuTorch's Python runtime:
    (B, C, h, w) normalised float -> logits (B, K, h/4, w/4), one image at a time (the program's batch is 1).

    A dynamic program takes sizes between its `min_size` and `max_size`, a fixed one only its `fixed_size` (both
    from its metadata); other sizes are refused in one line. `threads`: XNNPACK's thread pool (process-wide).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        from .pte import METADATA_METHOD, require_executorch

        require_executorch()
        from executorch.runtime import Runtime

        self.path = Path(path)
        if threads:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(threads)
        program = Runtime.get().load_program(self.path)
        if METADATA_METHOD not in program.method_names:
            raise ValueError(f"{path}: not a segformer .pte (no {METADATA_METHOD} method); export it with segformer")
        self.metadata = json.loads(program.load_method(METADATA_METHOD).execute([])[0])
        self.method = program.load_method("forward")
        self.config = config_from_metadata({"segformer_config": json.dumps(self.metadata["segformer_config"])}, path)
        self.fixed_size = tuple(self.metadata["fixed_size"]) if "fixed_size" in self.metadata else None
        self.device = torch.device("cpu")

    def check_size(self, height: int, width: int) -> None:
        """Raise a one-line ValueError for a network input size this program cannot take."""
        if self.fixed_size is not None and (height, width) != self.fixed_size:
            h, w = self.fixed_size
            raise ValueError(
                f"{self.path} was exported for {h}x{w} inputs only, got {height}x{width}: use --mode slide --crop "
                f"{h}x{w}, or export with dynamic sizes"
            )
        (h0, w0), (h1, w1) = self.metadata.get("min_size", (1, 1)), self.metadata.get("max_size", (1 << 30,) * 2)
        if not (h0 <= height <= h1 and w0 <= width <= w1):
            raise ValueError(
                f"{self.path} takes sizes {h0}x{w0} to {h1}x{w1} (HxW), got {height}x{width}: lower --scale (or "
                "slide windows), or export again with a larger --max-size"
            )

    def __call__(self, x: Tensor) -> Tensor:
        self.check_size(int(x.shape[-2]), int(x.shape[-1]))
        x = x.detach().float().cpu()
        return torch.cat([self.method.execute([x[i : i + 1].contiguous()])[0] for i in range(len(x))])


RUNTIME_SUFFIXES = {".onnx": OnnxForward, ".pte": PteForward}
RUNTIME_NAMES = {".onnx": "ONNX Runtime", ".pte": "ExecuTorch"}  # what runs each, as tables and reports name it


def is_runtime_file(spec: str | os.PathLike) -> bool:
    """Whether a model argument names an exported file that runs as a forward (.onnx, .pte)."""
    return Path(spec).suffix.lower() in RUNTIME_SUFFIXES and Path(spec).is_file()


def load_runtime(path: str | os.PathLike, threads: int | None = None) -> OnnxForward | PteForward:
    """The forward of an exported file by its suffix (.onnx: ONNX Runtime, .pte: ExecuTorch), with the model's
    config from its metadata: `Segmenter(load_runtime(path), options)` runs it as the model would run."""
    runtime = RUNTIME_SUFFIXES.get(Path(path).suffix.lower())
    if runtime is None:
        raise ValueError(f"{path}: not an exported model ({', '.join(RUNTIME_SUFFIXES)})")
    forward = runtime(path, threads=threads)
    if forward.config is None:
        raise ValueError(f"{path}: no segformer_config metadata; export it with `segformer export`")
    return forward


def runtime_options(model: Any, options: InferenceOptions) -> InferenceOptions:
    """`options` for running `model`: a program fixed to one input size (`PteForward.fixed_size`) runs slide windows
    of that size (images smaller than it are padded); anything else runs `options` as they are."""
    if not isinstance(model, PteForward) or model.fixed_size is None:
        return options
    h, w = model.fixed_size
    return options.replace(mode="slide", crop=(h, w), stride=(max(1, h * 2 // 3), max(1, w * 2 // 3)))
