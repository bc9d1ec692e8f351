"""SegFormer (Xie et al., NeurIPS 2021): Mix Transformer encoder + All-MLP decoder, exact and fast."""

from . import _moved
from .constants import IGNORE_INDEX, MEAN, STD
from .evaluation import evaluate
from .inference import Segmenter, options_for_model, predict_files
from .model import (
    VARIANTS,
    AllMLPHead,
    CheckpointError,
    EfficientSelfAttention,
    MixFFN,
    MixTransformer,
    OverlapPatchEmbed,
    SegFormer,
    SegFormerConfig,
    create_model,
    load_model,
    model_from_spec,
)
from .protocol import InferenceOptions

_moved.install()  # old import paths (segformer.predict, segformer.config, ...) for one release

__version__ = "0.2.0"

__all__ = [
    "IGNORE_INDEX",
    "MEAN",
    "STD",
    "VARIANTS",
    "AllMLPHead",
    "CheckpointError",
    "EfficientSelfAttention",
    "InferenceOptions",
    "MixFFN",
    "MixTransformer",
    "OverlapPatchEmbed",
    "SegFormer",
    "SegFormerConfig",
    "Segmenter",
    "create_model",
    "evaluate",
    "list_models",
    "load_model",
    "model_from_spec",
    "options_for_model",
    "predict_files",
]


def list_models() -> list[str]:
    """The variant names `create_model` accepts."""
    return list(VARIANTS)
