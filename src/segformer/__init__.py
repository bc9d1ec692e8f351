"""SegFormer (Xie et al., NeurIPS 2021): Mix Transformer encoder + All-MLP decoder, exact and fast."""

from .config import VARIANTS, SegFormerConfig
from .constants import IGNORE_INDEX, MEAN, STD
from .evaluation import evaluate
from .head import AllMLPHead
from .inference import InferenceOptions, Segmenter
from .loading import CheckpointError, create_model, load_model, model_from_spec
from .mit import EfficientSelfAttention, MixFFN, MixTransformer, OverlapPatchEmbed
from .model import SegFormer

__version__ = "0.1.0"

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
]


def list_models() -> list[str]:
    """The variant names `create_model` accepts."""
    return list(VARIANTS)
