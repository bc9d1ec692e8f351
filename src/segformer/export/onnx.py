"""ONNX export with dynamic batch, height and width, optional pre/post-processing inside the graph, and a check.

Export once, run at any size: the graph is traced with the TorchScript exporter (`dynamo=False`), whose shape
arithmetic stays symbolic (Shape/Gather nodes), so ONNX Runtime accepts any H, W >= the model's minimum size.
The folded decoder is traced too; constant folding turns its composed weights into plain initializers.

onnx and onnxruntime are an optional extra (`pip install segformer[onnx]`); they are imported inside functions.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fileio import atomic_write
from ..model.config import channel_stats
from ..model.segformer import SegFormer
from .runtimes import ort_session, require_onnx

MIN_OPSET = 17


class ExportWrapper(nn.Module):
    """What the exported graph computes.

    Input: float (B, C, H, W) normalised pixels, or with `with_preprocess` the pixels as stored, normalised inside
    with the statistics in the model's config: uint8 (B, H, W, 3) RGB, or for other channel counts float32
    (B, H, W, C) raw band values (uint16 and float bands fit float32). Output: logits (B, K, ceil(H/4),
    ceil(W/4)), or with `with_postprocess` the label map (B, H, W) after bilinear upsampling to the input size and
    argmax (int64, or uint8 when `label_dtype` says).
    """

    def __init__(
        self,
        model: SegFormer,
        with_preprocess: bool = False,
        with_postprocess: bool = False,
        label_dtype: torch.dtype = torch.int64,
    ) -> None:
        super().__init__()
        self.model = model
        self.with_preprocess = with_preprocess
        self.with_postprocess = with_postprocess
        self.label_dtype = label_dtype
        mean_values, std_values = channel_stats(model.config)
        mean, std = torch.tensor(mean_values), torch.tensor(std_values)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("inv_std", (1.0 / std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.with_preprocess:
            x = (x.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std  # uint8 (B, H, W, C) -> (B, C, H, W)
        logits = self.model(x)
        if not self.with_postprocess:
            return logits
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits.argmax(1).to(self.label_dtype)  # (B, H, W)

    @property
    def input_name(self) -> str:
        return "image" if self.with_preprocess else "pixel_values"

    @property
    def output_name(self) -> str:
        return "labels" if self.with_postprocess else "logits"


@dataclass
class ExportReport:
    """What `export_onnx` wrote and how well ONNX Runtime agreed with PyTorch at each checked size."""

    path: Path
    opset: int
    input_name: str
    input_spec: str
    output_name: str
    output_spec: str
    size_mb: float
    checked: list[dict] = field(default_factory=list)  # {"size": (H, W), "batch": B, "max_abs_diff"|"agreement": x}

    def summary(self) -> str:
        lines = [
            f"wrote {self.path} ({self.size_mb:.1f} MB, opset {self.opset})",
            f"  input  {self.input_name}: {self.input_spec}",
            f"  output {self.output_name}: {self.output_spec}",
        ]
        for c in self.checked:
            h, w = c["size"]
            if "max_abs_diff" in c:
                what = f"max |ORT - PyTorch| = {c['max_abs_diff']:.2e}"
            else:
                what = f"labels equal on {100 * c['agreement']:.3f}% of pixels"
            lines.append(f"  onnxruntime at batch {c['batch']}, {h}x{w}: {what}")
        return "\n".join(lines)


def export_onnx(
    model: SegFormer,
    path: str | os.PathLike,
    *,
    with_preprocess: bool = False,
    with_postprocess: bool = False,
    label_dtype: str = "int64",
    opset: int = 17,
    exporter: str = "torchscript",
    sample_size: tuple[int, int] = (512, 512),
    check: bool = True,
    check_sizes: tuple[tuple[int, int], ...] | None = None,
    atol: float = 1e-4,
    onnxruntime_ops: bool = False,
) -> ExportReport:
    """Write `model` as ONNX with dynamic batch/height/width; with `check`, run onnx.checker and compare ONNX Runtime
    with PyTorch at `check_sizes` (default: the sample size and a different, odd one), raising if they disagree.

    `exporter`: "torchscript" (default; `torch.onnx.export(dynamo=False)`, fast, symbolic shapes) or "dynamo"
    (`torch.export`-based, needs onnxscript; slower to export, same graph semantics). Both give dynamic sizes.
    The file is written to a temporary name and renamed, so a failed export never leaves a broken model behind.

    `onnxruntime_ops`: attention as ONNX Runtime's fused com.microsoft MultiHeadAttention (faster in ONNX Runtime,
    but no other runtime has it); by default the graph holds standard ONNX operators only.
    """
    require_onnx()
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: use --opset {MIN_OPSET} or newer")
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"exporter {exporter!r} must be 'torchscript' or 'dynamo'")
    if onnxruntime_ops and exporter != "torchscript":
        raise ValueError("ONNX Runtime's fused operators need the torchscript exporter (exporter='torchscript')")
    if label_dtype not in ("int64", "uint8"):
        raise ValueError(f"label dtype {label_dtype!r} must be int64 or uint8")
    if label_dtype == "uint8" and model.config.num_classes > 256:
        raise ValueError(f"{model.config.num_classes} classes do not fit uint8 labels: use int64")
    min_size = model.encoder.min_size
    if min(sample_size) < min_size:
        raise ValueError(f"sample size {sample_size} is below the model's minimum of {min_size} pixels")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.uint8 if label_dtype == "uint8" else torch.int64
    wrapper = ExportWrapper(model, with_preprocess, with_postprocess, dtype).eval()
    device = next(model.parameters()).device
    # Batch 2: torch.export specialises dimensions that are 1 in the sample.
    sample = _sample_input(wrapper, 2, sample_size, seed=0).to(device)
    out_name, in_name = wrapper.output_name, wrapper.input_name
    channels = model.config.in_channels
    if with_preprocess:
        axes_in = {0: "batch", 1: "height", 2: "width"}
        kind = "uint8" if channels == 3 else "float32"
        in_spec = f"{kind} [batch, height, width, {channels}] {'RGB 0..255' if channels == 3 else 'raw band values'}"
    else:
        axes_in = {0: "batch", 2: "height", 3: "width"}
        in_spec = f"float32 [batch, {channels}, height, width], normalised with the 'mean'/'std' metadata"
    if with_postprocess:
        axes_out = {0: "batch", 1: "height", 2: "width"}
        out_spec = f"{label_dtype} [batch, height, width] class ids 0..{model.config.num_classes - 1}"
    else:
        axes_out = {0: "batch", 2: "height/4", 3: "width/4"}
        out_spec = f"float32 [batch, {model.config.num_classes}, ceil(height/4), ceil(width/4)] logits"
    saved: list[Any] = []  # the checked graph, for its opset

    def write(tmp: str) -> None:
        model.onnxruntime_ops = onnxruntime_ops
        try:
            _export(tmp)
        finally:
            model.onnxruntime_ops = False

    def _export(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            if exporter == "dynamo":
                dims = {i: torch.export.Dim(name, min=min_size if i else 1, max=16384) for i, name in axes_in.items()}
                program = torch.onnx.export(
                    wrapper,
                    (sample,),
                    dynamo=True,
                    opset_version=max(opset, 18),
                    input_names=[in_name],
                    output_names=[out_name],
                    dynamic_shapes={"x": dims},
                )
                program.save(tmp)
            else:
                # Expected noise: size checks traced as constants (they hold for every size >= min_size) and the
                # legacy exporter's deprecation notice (the dynamo path is the alternative, `exporter="dynamo"`).
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                torch.onnx.export(
                    wrapper,
                    (sample,),
                    tmp,
                    dynamo=False,
                    opset_version=opset,
                    input_names=[in_name],
                    output_names=[out_name],
                    dynamic_axes={in_name: axes_in, out_name: axes_out},
                    do_constant_folding=True,
                    custom_opsets={"com.microsoft": 1} if onnxruntime_ops else None,
                )
        proto = onnx.load(tmp)
        _add_metadata(proto, model)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, tmp)
        saved.append(proto)

    atomic_write(path, write)
    proto = saved[0]
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    report = ExportReport(path, opset, in_name, in_spec, out_name, out_spec, path.stat().st_size / 1e6)
    if check:
        sizes = check_sizes or (sample_size, (max(min_size, sample_size[0] // 2 + 7), sample_size[1] + 33))
        for i, size in enumerate(sizes):
            report.checked.append(check_onnx(path, wrapper, size, batch=1 + i % 2, atol=atol))
    return report


def _add_metadata(proto, model: SegFormer) -> None:
    import json

    config = model.config
    names = config.class_names or tuple(f"class_{i}" for i in range(config.num_classes))
    mean, std = channel_stats(config)
    for key, value in (
        ("segformer_config", json.dumps(config.to_dict())),
        ("class_names", json.dumps(list(names))),
        ("mean", json.dumps(mean)),
        ("std", json.dumps(std)),
    ):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _sample_input(wrapper: ExportWrapper, batch: int, size: tuple[int, int], seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    channels = wrapper.model.config.in_channels
    if wrapper.with_preprocess and channels == 3:
        return torch.randint(0, 256, (batch, *size, channels), generator=g, dtype=torch.uint8)
    if wrapper.with_preprocess:  # raw band values around the model's statistics
        noise = torch.randn(batch, *size, channels, generator=g)
        return noise * wrapper.inv_std.reciprocal().view(-1) + wrapper.mean.view(-1)
    return torch.randn(batch, channels, *size, generator=g)


def check_onnx(
    path: str | os.PathLike, wrapper: ExportWrapper, size: tuple[int, int], *, batch: int = 1, atol: float = 1e-4
) -> dict:
    """Run the ONNX file in ONNX Runtime and PyTorch on the same input; raise RuntimeError past `atol`
    (logits) or below 99.9% equal labels (label maps: a near-tie may flip under 1e-6 noise)."""
    session = ort_session(path)
    x = _sample_input(wrapper, batch, size, seed=1 + batch)
    device = next(wrapper.parameters()).device
    with torch.no_grad():
        expected = wrapper(x.to(device)).cpu().numpy()
    got = session.run(None, {wrapper.input_name: x.numpy()})[0]
    if got.shape != expected.shape:
        raise RuntimeError(f"{path}: ONNX Runtime output {got.shape} at {size}, PyTorch {expected.shape}")
    if wrapper.with_postprocess:
        if got.dtype != expected.dtype:
            raise RuntimeError(f"{path}: ONNX Runtime labels are {got.dtype}, expected {expected.dtype}")
        agreement = float(np.mean(got == expected))
        if agreement < 0.999:
            raise RuntimeError(f"{path}: ONNX Runtime labels equal PyTorch on only {agreement:.2%} of pixels")
        return {"size": tuple(size), "batch": batch, "agreement": agreement}
    diff = float(np.abs(got - expected).max())
    if not diff <= atol:
        raise RuntimeError(f"{path}: ONNX Runtime differs from PyTorch by {diff:.2e} (> {atol}) at {size}")
    return {"size": tuple(size), "batch": batch, "max_abs_diff": diff}
