"""TensorRT engines: the float ONNX export built by TensorRT in fp16, with LayerNorm and Softmax held in fp32.

UNTESTED ON A GPU: no GPU was available while this was written; the code follows TensorRT 10's Python API and is
exercised only by the `gpu` tests and `benchmarks/gpu.py`, which skip without CUDA. Public SegFormer engines have
shipped wrong fp16 masks (mmdeploy#2477: fixed by opset 17's LayerNormalization; TensorRT#4111: a LayerNorm after
attention overflows in fp16), which is why LayerNorm and Softmax keep fp32 (`KEEP_FP32`) and why the engine goes
through the same accuracy gate as every export before it is written.

The engine takes a normalised float (B, C, H, W) batch between `min_shape` and `max_shape` and returns float logits;
`TensorRTForward` runs it as a forward for the inference spine (CUDA tensors in and out).

tensorrt is the optional `tensorrt` extra (pip install 'segformer[tensorrt]' on a machine with CUDA); it is imported
inside functions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from ..fileio import atomic_write
from ..model.config import SegFormerConfig

# TensorRT layer types kept in fp32, and why (printed by the gate's report).
KEEP_FP32 = {
    "NORMALIZATION": "LayerNorm: its variance overflows fp16 after attention (TensorRT#4111, mmdeploy#2477)",
    "SOFTMAX": "attention Softmax: exp of fp16 logits loses the small probabilities",
}


def require_tensorrt() -> None:
    """Raise a one-line RuntimeError when TensorRT or CUDA is missing."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "--format tensorrt needs TensorRT and an NVIDIA GPU: pip install 'segformer[tensorrt]'"
        ) from None
    if not torch.cuda.is_available():
        raise RuntimeError("--format tensorrt needs an NVIDIA GPU (torch.cuda.is_available() is False)")


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    config: SegFormerConfig,
    *,
    fp16: bool = True,
    min_shape: tuple[int, int, int, int] = (1, 3, 64, 64),
    opt_shape: tuple[int, int, int, int] = (1, 3, 512, 512),
    max_shape: tuple[int, int, int, int] = (32, 3, 1024, 2048),
    workspace_gb: float = 4.0,
) -> dict[str, int]:
    """Build a TensorRT engine from the float ONNX file (fp16 with `KEEP_FP32` layers in fp32) and write it, with
    the model's config as a JSON header line, to `engine_path`. Returns the number of layers held in fp32 per type."""
    require_tensorrt()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse the graph: {errors}")
    settings = builder.create_builder_config()
    settings.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    kept: dict[str, int] = {}
    if fp16:
        settings.set_flag(trt.BuilderFlag.FP16)
        settings.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            kind = str(layer.type).split(".")[-1]
            if kind in KEEP_FP32:
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
                kept[kind] = kept.get(kind, 0) + 1
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, min_shape, opt_shape, max_shape)
    settings.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, settings)
    if engine is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    header = (json.dumps({"segformer_config": config.to_dict(), "fp32_layers": kept}) + "\n").encode()
    atomic_write(engine_path, lambda tmp: Path(tmp).write_bytes(header + bytes(engine)))
    return kept


class TensorRTForward:
    """A TensorRT engine written by `build_engine` as a forward: (B, C, h, w) normalised float -> float logits on
    the GPU."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        require_tensorrt()
        import tensorrt as trt

        del threads  # the GPU's business
        self.path = Path(path)
        data = self.path.read_bytes()
        header, engine = data.split(b"\n", 1)
        meta = json.loads(header)
        self.config = SegFormerConfig.from_dict(meta["segformer_config"])
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine)
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_name = (self.engine.get_tensor_name(i) for i in range(2))
        self.device = torch.device("cuda")

    def __call__(self, x: Tensor) -> Tensor:
        x = x.to(self.device, torch.float32).contiguous()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), device=self.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.path}: TensorRT failed to run the engine")
        return out
