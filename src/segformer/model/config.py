"""Model configuration: one frozen dataclass, and the MiT-B0..B5 variants as one table of data.

The released rows (b0..b5) are those of the released code (Xie et al., NeurIPS 2021, arXiv:2105.15203), which
differ from the paper's appendix in one place: the Mix-FFN expansion is 4 in every stage of every variant. The
paper-spec rows (b0-paper..b4-paper) take the appendix's expansions 8, 8, 4, 4 (Table 6; its ImageNet Table 7 counts
these shapes): they are PVTv2-B0..B4 key for key, whose ImageNet weights are Apache-2.0. B5 is the same in both.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..constants import IGNORE_INDEX, MEAN, STD
from ..fileio import write_text
from ..protocol import InferenceOptions


class Variant(NamedTuple):
    """One row of VARIANTS. Heads (1, 2, 5, 8) and sr ratios (8, 4, 2, 1) are shared by every row."""

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    decoder_dim: int
    mlp_ratios: tuple[int, ...] = (4, 4, 4, 4)  # the released code's Mix-FFN expansion per stage


_B0, _B1_B5 = (32, 64, 160, 256), (64, 128, 320, 512)
_PAPER_FFN = (8, 8, 4, 4)  # the paper's Table 6 for B0..B4 = PVTv2-B0..B4
VARIANTS: dict[str, Variant] = {
    "b0": Variant(_B0, (2, 2, 2, 2), 256),
    "b1": Variant(_B1_B5, (2, 2, 2, 2), 256),
    "b2": Variant(_B1_B5, (3, 4, 6, 3), 768),
    "b3": Variant(_B1_B5, (3, 4, 18, 3), 768),
    "b4": Variant(_B1_B5, (3, 8, 27, 3), 768),
    "b5": Variant(_B1_B5, (3, 6, 40, 3), 768),
    "b0-paper": Variant(_B0, (2, 2, 2, 2), 256, _PAPER_FFN),
    "b1-paper": Variant(_B1_B5, (2, 2, 2, 2), 256, _PAPER_FFN),
    "b2-paper": Variant(_B1_B5, (3, 4, 6, 3), 768, _PAPER_FFN),
    "b3-paper": Variant(_B1_B5, (3, 4, 18, 3), 768, _PAPER_FFN),
    "b4-paper": Variant(_B1_B5, (3, 8, 27, 3), 768, _PAPER_FFN),
}

# Paper Table 7 (ImageNet-1k classification, 224x224): params in M with the 1000-class head, GFLOPs, top-1. These
# count the paper-spec shapes (FFN 8, 8, 4, 4; B5: 4): PVTv2's published numbers.
IMAGENET = {
    "b0-paper": (3.7, 0.6, 70.5),
    "b1-paper": (14.0, 2.1, 78.7),
    "b2-paper": (25.4, 4.0, 81.6),
    "b3-paper": (45.2, 6.9, 83.1),
    "b4-paper": (62.6, 10.1, 83.6),
    "b5": (82.0, 11.8, 83.8),
}


def paper_twin(name: str) -> str | None:
    """The other row of the same depths and widths: 'b2' <-> 'b2-paper' (None for b5 and custom)."""
    twin = name.removesuffix("-paper") if name.endswith("-paper") else f"{name}-paper"
    return twin if twin in VARIANTS else None


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
    """The VARIANTS row a variant name means ('B2', 'mit-b2', 'segformer_b2' -> 'b2'; 'b2_paper' -> 'b2-paper';
    PVTv2's names 'pvt_v2_b2', 'pvt-v2-b2' -> 'b2-paper', 'pvt_v2_b5' -> 'b5'), else None."""
    key = name.lower().replace("_", "-")
    for prefix in ("segformer-", "mit-"):
        key = key.removeprefix(prefix)
    if key.startswith("pvt-v2-"):  # PVTv2-B0..B4 are the paper-spec rows; PVTv2-B5 is b5
        key = key.removeprefix("pvt-v2-")
        key = key if key in ("b5", "b5-paper") or key.endswith("-paper") else f"{key}-paper"
        key = key.replace("b5-paper", "b5")
    return key if key in VARIANTS else None


@dataclass(frozen=True)
class SegFormerConfig:
    """Everything needed to build a SegFormer; serialisable to JSON/YAML through `to_dict`/`from_dict`."""

    embed_dims: tuple[int, ...] = (32, 64, 160, 256)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    # Mix-FFN expansion: one for every stage (the released code's 4), or one per stage (the paper's 8, 8, 4, 4)
    mlp_ratio: int | tuple[int, ...] = 4
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
    # Where the weights came from and so their licence: `segformer.model.licence` record ({"origin", "history"});
    # None = not recorded.
    licence: dict[str, Any] | None = field(default=None, hash=False)
    variant: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # lists from JSON/YAML become tuples: the config stays hashable
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        object.__setattr__(self, "test_protocol", InferenceOptions.from_dict(self.test_protocol))
        if self.licence is not None and not isinstance(self.licence, dict):
            raise ValueError(f"config.licence must be a mapping (segformer.model.licence record), got {self.licence!r}")
        if self.labels is not None and not isinstance(self.labels, dict):
            raise ValueError(f"config.labels must be a mapping (LabelConvention.to_dict()), got {type(self.labels)}")
        n = len(self.embed_dims)
        if isinstance(self.mlp_ratio, tuple) and len(set(self.mlp_ratio)) == 1 and len(self.mlp_ratio) == n:
            object.__setattr__(self, "mlp_ratio", self.mlp_ratio[0])  # one value for all: stored as one number
        if isinstance(self.mlp_ratio, tuple) and len(self.mlp_ratio) != n:
            raise ValueError(f"config.mlp_ratio={self.mlp_ratio} must be one number or one per stage ({n} stages)")
        for name in ("depths", "num_heads", "sr_ratios"):
            value = getattr(self, name)
            if len(value) != n:
                raise ValueError(f"config.{name}={value} must have one entry per stage ({n} stages)")
        for dim, heads in zip(self.embed_dims, self.num_heads, strict=True):
            if dim % heads:
                raise ValueError(f"config.embed_dims {dim} is not divisible by num_heads {heads}")
        if any(d < 1 for d in self.depths) or min(self.sr_ratios) < 1:
            raise ValueError(f"config.depths {self.depths} and sr_ratios {self.sr_ratios} must be >= 1")
        if self.num_classes < 1 or self.in_channels < 1 or self.decoder_dim < 1 or min(self.mlp_ratios) < 1:
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
        row = VARIANTS[key]
        base = {
            "embed_dims": row.embed_dims,
            "depths": row.depths,
            "decoder_dim": row.decoder_dim,
            "mlp_ratio": row.mlp_ratios,
            "variant": key,
        }
        return cls(**{**base, **overrides})

    def replace(self, **changes: Any) -> SegFormerConfig:
        return dataclasses.replace(self, **changes)

    @property
    def mlp_ratios(self) -> tuple[int, ...]:
        """The Mix-FFN expansion of each stage."""
        ratio = self.mlp_ratio
        return tuple(ratio) if isinstance(ratio, tuple) else (ratio,) * len(self.embed_dims)

    @property
    def name(self) -> str:
        """The variant name if the architecture matches one of the table, else 'custom'."""
        shape = (self.embed_dims, self.depths, self.decoder_dim, self.mlp_ratios)
        for key, row in VARIANTS.items():
            if tuple(row) == shape:
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
        "mlp_ratios": list(config.mlp_ratios),
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
        "segformer_licence": config.licence,
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
    if isinstance(data.get("segformer_licence"), dict):  # where the weights came from (model.licence)
        out["licence"] = data["segformer_licence"]
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
