"""Model configuration: one frozen dataclass, and the MiT-B0..B5 variants as one table of data.

The numbers are those of the released code (Xie et al., NeurIPS 2021, arXiv:2105.15203), which differ from the
paper's appendix in one place: the Mix-FFN expansion is 4 in every stage of every variant.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..constants import IGNORE_INDEX, MEAN, STD
from ..fileio import write_text
from ..protocol import InferenceOptions

# name -> (embed_dims, depths, decoder_dim). Heads (1, 2, 5, 8), sr ratios (8, 4, 2, 1), mlp ratio 4 are shared.
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], int]] = {
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2), 256),
    "b1": ((64, 128, 320, 512), (2, 2, 2, 2), 256),
    "b2": ((64, 128, 320, 512), (3, 4, 6, 3), 768),
    "b3": ((64, 128, 320, 512), (3, 4, 18, 3), 768),
    "b4": ((64, 128, 320, 512), (3, 8, 27, 3), 768),
    "b5": ((64, 128, 320, 512), (3, 6, 40, 3), 768),
}

# Paper figures for `segformer info` (Table 1a): params in M, ADE20K GFLOPs at 512x512 (B5: 640x640), mIoU (SS).
PAPER = {
    "b0": {
        "enc_params_m": 3.4,
        "dec_params_m": 0.4,
        "ade_gflops": 8.4,
        "ade_size": 512,
        "ade_miou": 37.4,
        "city_miou": 76.2,
    },
    "b1": {
        "enc_params_m": 13.1,
        "dec_params_m": 0.6,
        "ade_gflops": 15.9,
        "ade_size": 512,
        "ade_miou": 42.2,
        "city_miou": 78.5,
    },
    "b2": {
        "enc_params_m": 24.2,
        "dec_params_m": 3.3,
        "ade_gflops": 62.4,
        "ade_size": 512,
        "ade_miou": 46.5,
        "city_miou": 81.0,
    },
    "b3": {
        "enc_params_m": 44.0,
        "dec_params_m": 3.3,
        "ade_gflops": 79.0,
        "ade_size": 512,
        "ade_miou": 49.4,
        "city_miou": 81.7,
    },
    "b4": {
        "enc_params_m": 60.8,
        "dec_params_m": 3.3,
        "ade_gflops": 95.7,
        "ade_size": 512,
        "ade_miou": 50.3,
        "city_miou": 82.3,
    },
    "b5": {
        "enc_params_m": 81.4,
        "dec_params_m": 3.3,
        "ade_gflops": 183.3,
        "ade_size": 640,
        "ade_miou": 51.0,
        "city_miou": 82.4,
    },
}


def variant_key(name: str) -> str | None:
    """'b0'..'b5' for a variant name ('B2', 'mit-b2', 'mit_b2', 'segformer-b2', 'segformer_b2'), else None."""
    key = name.lower()
    for prefix in ("segformer-", "segformer_", "mit-", "mit_"):
        key = key.removeprefix(prefix)
    return key if key in VARIANTS else None


@dataclass(frozen=True)
class SegFormerConfig:
    """Everything needed to build a SegFormer; serialisable to JSON/YAML through `to_dict`/`from_dict`."""

    embed_dims: tuple[int, ...] = (32, 64, 160, 256)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratio: int = 4
    decoder_dim: int = 256
    num_classes: int = 150
    in_channels: int = 3
    drop_path_rate: float = 0.1
    classifier_dropout: float = 0.1
    # Block norms and stage-final norms; patch-embed and reduction norms use torch's default 1e-5 as the original.
    layer_norm_eps: float = 1e-6
    class_names: tuple[str, ...] | None = None
    # Per-channel mean/std of the raw input values the model was trained with; None = ImageNet's (3 channels).
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # The paper's Table 1c ablation (off by default): None = Mix-FFN, the paper's model. An input size (H, W) = no
    # depthwise conv in the FFNs, and a learned absolute positional encoding added after each stage's patch
    # embedding, on a grid of that stage's tokens for this input size (ceil(H/4) x ceil(W/4), then /8, /16, /32),
    # resized bilinearly to the tokens of any other input size.
    pos_embed_size: tuple[int, int] | None = None
    # Test-time protocol (scale, mode, window) written by training and known for official checkpoints; None = unknown.
    test_protocol: InferenceOptions | None = None
    # How the training masks' values became class ids: `segformer.data.LabelConvention.to_dict()` (label map, reduce
    # zero label, ignore index, palette), so eval/predict of the saved model apply the same; None = ids as stored.
    labels: dict[str, Any] | None = field(default=None, hash=False)
    variant: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # lists from JSON/YAML become tuples: the config stays hashable
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        object.__setattr__(self, "test_protocol", InferenceOptions.from_dict(self.test_protocol))
        if self.labels is not None and not isinstance(self.labels, dict):
            raise ValueError(f"config.labels must be a mapping (LabelConvention.to_dict()), got {type(self.labels)}")
        n = len(self.embed_dims)
        for name in ("depths", "num_heads", "sr_ratios"):
            value = getattr(self, name)
            if len(value) != n:
                raise ValueError(f"config.{name}={value} must have one entry per stage ({n} stages)")
        for dim, heads in zip(self.embed_dims, self.num_heads, strict=True):
            if dim % heads:
                raise ValueError(f"config.embed_dims {dim} is not divisible by num_heads {heads}")
        if any(d < 1 for d in self.depths) or min(self.sr_ratios) < 1:
            raise ValueError(f"config.depths {self.depths} and sr_ratios {self.sr_ratios} must be >= 1")
        if self.num_classes < 1 or self.in_channels < 1 or self.decoder_dim < 1 or self.mlp_ratio < 1:
            raise ValueError(
                "config.num_classes, in_channels, decoder_dim and mlp_ratio must be >= 1, got "
                f"{self.num_classes}, {self.in_channels}, {self.decoder_dim}, {self.mlp_ratio}"
            )
        if not 0.0 <= self.drop_path_rate < 1.0 or not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError("config.drop_path_rate and classifier_dropout must be in [0, 1)")
        if self.pos_embed_size is not None and (len(self.pos_embed_size) != 2 or min(self.pos_embed_size) < 1):
            raise ValueError(f"config.pos_embed_size {self.pos_embed_size} must be an input size (H, W), or None")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.in_channels:
                raise ValueError(f"config.{name} has {len(value)} values for {self.in_channels} input channels")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"config.std {self.std} must be > 0 for every channel")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"config.class_names has {len(self.class_names)} names but num_classes is {self.num_classes}"
            )

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> SegFormerConfig:
        """The config of a named variant (b0..b5, also 'mit-b0' / 'segformer-b0'), with fields overridden."""
        key = variant_key(name)
        if key is None:
            raise ValueError(f"unknown SegFormer variant {name!r}; choose one of {', '.join(VARIANTS)}")
        dims, depths, decoder_dim = VARIANTS[key]
        base = {"embed_dims": dims, "depths": depths, "decoder_dim": decoder_dim, "variant": key}
        return cls(**{**base, **overrides})

    def replace(self, **changes: Any) -> SegFormerConfig:
        return dataclasses.replace(self, **changes)

    @property
    def name(self) -> str:
        """The variant name if the architecture matches one of the table, else 'custom'."""
        for key, (dims, depths, decoder_dim) in VARIANTS.items():
            if (dims, depths, decoder_dim) == (self.embed_dims, self.depths, self.decoder_dim):
                return key
        return "custom"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        out["test_protocol"] = self.test_protocol.to_dict() if self.test_protocol else None
        out["variant"] = self.name
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegFormerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SegFormerConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def save_json(self, path: str | Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def channel_stats(config: SegFormerConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per input channel on raw pixel values: the config's own (recorded by training), else ImageNet's
    for 3 channels, else ImageNet's channel averages for every channel."""
    n = config.in_channels
    mean = config.mean or (MEAN if n == 3 else (sum(MEAN) / 3,) * n)
    std = config.std or (STD if n == 3 else (sum(STD) / 3,) * n)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


# Hugging Face hub serialisation (transformers' SegformerConfig JSON).
def to_hf_config(config: SegFormerConfig) -> dict[str, Any]:
    """Our config as a transformers `SegformerConfig` JSON (hub field names)."""
    n = len(config.embed_dims)
    names = config.class_names or tuple(f"class_{i}" for i in range(config.num_classes))
    return {
        "architectures": ["SegformerForSemanticSegmentation"],
        "model_type": "segformer",
        "num_channels": config.in_channels,
        "num_encoder_blocks": n,
        "depths": list(config.depths),
        "sr_ratios": list(config.sr_ratios),
        "hidden_sizes": list(config.embed_dims),
        "patch_sizes": [7] + [3] * (n - 1),
        "strides": [4] + [2] * (n - 1),
        "num_attention_heads": list(config.num_heads),
        "mlp_ratios": [config.mlp_ratio] * n,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout_prob": config.classifier_dropout,
        "initializer_range": 0.02,
        "drop_path_rate": config.drop_path_rate,
        "layer_norm_eps": config.layer_norm_eps,
        "decoder_hidden_size": config.decoder_dim,
        "semantic_loss_ignore_index": IGNORE_INDEX,
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)},
        "segformer_class_names": config.class_names is not None,
        "segformer_test_protocol": config.test_protocol.to_dict() if config.test_protocol else None,
        "segformer_labels": config.labels,
        **({"segformer_pos_embed_size": list(config.pos_embed_size)} if config.pos_embed_size else {}),
        **({"segformer_mean": list(config.mean)} if config.mean is not None else {}),
        **({"segformer_std": list(config.std)} if config.std is not None else {}),
    }


def from_hf_config(data: dict[str, Any]) -> dict[str, Any]:
    """The config fields a transformers `config.json` fixes (those the weights' shapes cannot tell)."""
    out: dict[str, Any] = {}
    if "num_attention_heads" in data:
        out["num_heads"] = tuple(data["num_attention_heads"])
    for ours, theirs in (("drop_path_rate", "drop_path_rate"), ("classifier_dropout", "classifier_dropout_prob")):
        if theirs in data:
            out[ours] = data[theirs]
    for ours, theirs in (("mean", "segformer_mean"), ("std", "segformer_std")):
        if data.get(theirs) is not None:
            out[ours] = tuple(float(v) for v in data[theirs])
    if data.get("segformer_pos_embed_size") is not None:  # the positional-encoding ablation
        out["pos_embed_size"] = tuple(int(v) for v in data["segformer_pos_embed_size"])
    id2label = data.get("id2label")
    if id2label and data.get("segformer_class_names", True):
        names = [id2label[str(i)] if str(i) in id2label else id2label.get(i) for i in range(len(id2label))]
        if all(isinstance(n, str) for n in names) and not all(n == f"LABEL_{i}" for i, n in enumerate(names)):
            out["class_names"] = tuple(names)
    if data.get("segformer_test_protocol"):
        out["test_protocol"] = InferenceOptions.from_dict(data["segformer_test_protocol"])
    if isinstance(data.get("segformer_labels"), dict):  # the label convention our training stored
        out["labels"] = data["segformer_labels"]
    return out


def __getattr__(name: str) -> object:
    if name == "TestProtocol":  # 0.1's name of the stored test protocol, now the one settings type
        import warnings

        warnings.warn(
            "segformer.model.config.TestProtocol is now segformer.InferenceOptions (segformer.protocol)",
            DeprecationWarning,
            stacklevel=2,
        )
        return InferenceOptions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
