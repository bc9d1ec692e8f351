"""SegFormer (Xie et al., NeurIPS 2021): Mix Transformer encoder + All-MLP decoder, exact and fast."""

from .config import VARIANTS, SegFormerConfig
from .evaluation import evaluate
from .head import AllMLPHead
from .inference import Segmenter
from .loading import CheckpointError, create_model, load_model
from .mit import EfficientSelfAttention, MixFFN, MixTransformer, OverlapPatchEmbed
from .model import MEAN, STD, SegFormer

__version__ = "0.1.0"

__all__ = [
    "MEAN",
    "STD",
    "VARIANTS",
    "AllMLPHead",
    "CheckpointError",
    "EfficientSelfAttention",
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
]


def list_models() -> list[str]:
    """The variant names `create_model` accepts."""
    return list(VARIANTS)
