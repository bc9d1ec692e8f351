"""The implementations a benchmark puts side by side, each as a runner: `fn()` runs one input and returns the logits
(or, for training, one step's loss).

- ours in eager PyTorch (fp32, autocast at bf16/fp16, `torch.compile`, the paper-order decoder): `inference_fn`,
  `unfolded_fn`; one training step: `train_step_fn`;
- transformers' SegformerForSemanticSegmentation with the same weights (`transformers_model`): `transformers_fn`,
  `transformers_train_step_fn`;
- ONNX Runtime on either model's ONNX export (`export_transformers_onnx`, `export_ours_onnx`): `ort_fn`.

`segformer benchmark` (apps/benchmark.py) and the scripts in benchmarks/ build their rows from these, so every
comparison runs the same peers. transformers is a dev dependency only; the ONNX peers need the onnx extra.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..fileio import atomic_write
from ..model.segformer import SegFormer
from ..runtime import autocast, check_amp, import_torchvision

Runner = Callable[[], Any]

# The names of the ONNX Runtime rows (benchmarks/run.py reads them back from the JSON results).
ORT_HF = "ONNX Runtime, transformers' export"
ORT_OURS = "ONNX Runtime, our export"
ORT_OURS_FUSED = "ONNX Runtime, our export with ORT ops"


def amp_mode(dtype: str, device: str) -> str:
    """The AMP mode (runtime.AMP_DTYPES) of a benchmark dtype ("fp32", "bf16", "fp16"); fp16 autocast only on GPUs."""
    if dtype != "fp32":
        check_amp(dtype, "dtype")
    if dtype == "fp16" and device != "cuda":
        raise ValueError("fp16 autocast is for GPUs; on CPU use --dtype bf16")
    return "none" if dtype == "fp32" else dtype


# ---------------------------------------------------------------------------------------------------------- ours
def inference_fn(model: nn.Module, x: Tensor, *, dtype: str = "fp32", compile: bool = False) -> Runner:
    """`fn()` runs `model(x)` the fast way: eval mode, inference_mode, optional autocast (bf16/fp16) and
    `torch.compile`. The logits come back in float32."""
    model.eval()
    device = x.device.type
    amp = amp_mode(dtype, device)
    net = torch.compile(model) if compile else model

    def fn() -> Tensor:
        with torch.inference_mode(), autocast(device, amp):
            return net(x).float()

    return fn


def unfolded_fn(model: SegFormer, x: Tensor) -> Runner:
    """`inference_fn` of a copy of `model` whose decoder runs in the paper's order (`head.fold = False`)."""
    paper = copy.deepcopy(model)
    paper.head.fold = False
    return inference_fn(paper, x)


def train_step_fn(model: nn.Module, x: Tensor, y: Tensor, lr: float = 6e-5) -> Runner:
    """`fn()` runs one training step of our model the way `segformer.training` does: forward, the paper's loss
    (`segmentation_loss`), backward, AdamW step; returns the loss."""
    from ..training.losses import segmentation_loss

    return _step_fn(model, lambda: segmentation_loss(model(x), y), lr)


def export_ours_onnx(model: SegFormer, path: str | Path, size: tuple[int, int], ort_ops: bool = False) -> Path:
    """Our model as `segformer export` writes it (standard operators, or with `ort_ops` attention as ONNX Runtime's
    fused MultiHeadAttention), traced at `size`, unchecked (the benchmark compares the outputs itself)."""
    from ..export.onnx import export_onnx

    export_onnx(model, path, sample_size=tuple(size), check=False, onnxruntime_ops=ort_ops)
    return Path(path)


# ------------------------------------------------------------------------------------------------- transformers
def transformers_model(ours: SegFormer, device: str | torch.device = "cpu") -> nn.Module:
    """transformers' SegformerForSemanticSegmentation with our weights (saved in the Hugging Face layout and loaded
    by transformers), in eval mode; one clear line when transformers is not installed."""
    try:
        import_torchvision()  # transformers' image code imports it; see runtime.import_torchvision
        import transformers
    except ImportError:
        raise RuntimeError(
            "comparing with transformers needs it (a dev dependency): pip install transformers"
        ) from None
    with tempfile.TemporaryDirectory(prefix="segformer-peer-") as tmp:
        folder = ours.save_pretrained(Path(tmp) / "hf")
        return transformers.SegformerForSemanticSegmentation.from_pretrained(folder).to(device).eval()


def transformers_fn(hf: nn.Module, x: Tensor) -> Runner:
    """`fn()` runs transformers' model on `x` in inference mode and returns its logits."""

    def fn() -> Tensor:
        with torch.inference_mode():
            return hf(pixel_values=x).logits

    return fn


def transformers_train_step_fn(hf: nn.Module, x: Tensor, y: Tensor, lr: float = 6e-5) -> Runner:
    """`fn()` runs one training step of transformers' model (its own loss), AdamW; returns the loss."""
    return _step_fn(hf, lambda: hf(pixel_values=x, labels=y).loss, lr)


class _Logits(nn.Module):
    """transformers' model with a tensor in and the logits out, for torch.onnx."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.hf(pixel_values=pixel_values).logits


def export_transformers_onnx(hf: nn.Module, x: Tensor, path: str | Path, opset: int = 17) -> Path:
    """transformers' model through the same torch.onnx path as ours (dynamic batch/H/W), traced on `x`."""

    def write(tmp: str) -> None:
        with torch.no_grad():
            torch.onnx.export(
                _Logits(hf).eval(),
                (x,),
                tmp,
                dynamo=False,
                opset_version=opset,
                input_names=["pixel_values"],
                output_names=["logits"],
                dynamic_axes={"pixel_values": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}},
                do_constant_folding=True,
            )

    return atomic_write(path, write)


# ----------------------------------------------------------------------------------------------------- shared
def ort_fn(path: str | Path, x: np.ndarray, threads: int | None = None, providers: list[str] | None = None) -> Runner:
    """`fn()` runs an exported model in ONNX Runtime on `x` and returns its logits. Idle session threads do not spin
    (they would take the cores from whatever runs next in an interleaved round)."""
    from ..export.onnx import ort_session

    session = ort_session(path, threads, providers, spinning=False)
    return lambda: session.run(None, {"pixel_values": x})[0]


def _step_fn(model: nn.Module, loss: Callable[[], Tensor], lr: float) -> Runner:
    """`fn()`: `loss()`, backward, one AdamW step of `model` (in training mode); returns the loss."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

    def fn() -> Tensor:
        value = loss()
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return value.detach()

    return fn
