"""The network: config and variants table, layers, the Mix Transformer encoder, the All-MLP head, `SegFormer`, and
everything that turns files into one (checkpoint key tables, loading, model cards, FLOPs)."""

from .config import VARIANTS, SegFormerConfig, channel_stats
from .head import AllMLPHead
from .loading import CheckpointError, create_model, load_model, model_from_spec
from .mit import EfficientSelfAttention, MixFFN, MixTransformer, OverlapPatchEmbed
from .segformer import SegFormer

__all__ = [
    "VARIANTS",
    "AllMLPHead",
    "CheckpointError",
    "EfficientSelfAttention",
    "MixFFN",
    "MixTransformer",
    "OverlapPatchEmbed",
    "SegFormer",
    "SegFormerConfig",
    "channel_stats",
    "create_model",
    "load_model",
    "model_from_spec",
]
