"""SegFormer = MixTransformer encoder + AllMLPHead decoder, and its Hugging Face hub serialisation."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .config import SegFormerConfig
from .convert import from_ours
from .head import AllMLPHead
from .layers import init_classifier, init_weights
from .mit import MixTransformer
from .modelcard import model_card_for

# ImageNet mean/std on 0..255 RGB: what every published SegFormer checkpoint was trained with.
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


class SegFormer(nn.Module):
    """`model(x)` maps a normalised (B, C, H, W) batch to logits (B, K, ceil(H/4), ceil(W/4))."""

    def __init__(self, config: SegFormerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = MixTransformer(config)
        self.head = AllMLPHead(config.embed_dims, config.decoder_dim, config.num_classes, config.classifier_dropout)
        self.apply(init_weights)
        init_classifier(self.head.classifier)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The four encoder maps (B, C_i, ceil(H/s), ceil(W/s)) for s = 4, 8, 16, 32."""
        return self.encoder(x)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, num_classes: int | None = None) -> SegFormer:
        """Same as `segformer.load_model`: a file, folder or hub id in any supported layout."""
        from .loading import load_model

        return load_model(source, num_classes=num_classes)

    def reset_classifier(self, num_classes: int, class_names: tuple[str, ...] | None = None) -> None:
        """A new, freshly initialised classifier for `num_classes` (fine-tuning on another label set)."""
        old = self.head.classifier
        self.head.classifier = nn.Conv2d(old.in_channels, num_classes, 1).to(old.weight.device, old.weight.dtype)
        init_classifier(self.head.classifier)
        self.config = self.config.replace(num_classes=num_classes, class_names=class_names)

    def save_pretrained(self, folder: str | os.PathLike, card: dict[str, Any] | None = None) -> Path:
        """Write `config.json` + `model.safetensors` in the Hugging Face hub layout, and the `README.md` model card
        (`segformer.modelcard`; `card` adds metadata such as the training recipe and metrics).

        `transformers.SegformerForSemanticSegmentation.from_pretrained(folder)` loads it, and so does `load_model`.
        Files are written to temporary names and renamed, so a crash never leaves a half-written model.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in from_ours(self.state_dict(), "hf").items()}
        _atomic_write(folder / "model.safetensors", lambda p: save_file(state, p, metadata={"format": "pt"}))
        text = json.dumps(hf_config_dict(self.config), indent=2) + "\n"
        _atomic_write(folder / "config.json", lambda p: Path(p).write_text(text))
        _atomic_write(folder / "README.md", lambda p: Path(p).write_text(model_card_for(self, card)))
        return folder

    def num_parameters(self) -> dict[str, int]:
        enc = sum(p.numel() for p in self.encoder.parameters())
        dec = sum(p.numel() for p in self.head.parameters())
        return {"encoder": enc, "decoder": dec, "total": enc + dec}


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def hf_config_dict(config: SegFormerConfig) -> dict[str, Any]:
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
        "semantic_loss_ignore_index": 255,
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)},
        "segformer_class_names": config.class_names is not None,
    }


def config_from_hf(data: dict[str, Any]) -> dict[str, Any]:
    """The config fields a transformers `config.json` fixes (those the weights' shapes cannot tell)."""
    out: dict[str, Any] = {}
    if "num_attention_heads" in data:
        out["num_heads"] = tuple(data["num_attention_heads"])
    for ours, theirs in (("drop_path_rate", "drop_path_rate"), ("classifier_dropout", "classifier_dropout_prob")):
        if theirs in data:
            out[ours] = data[theirs]
    id2label = data.get("id2label")
    if id2label and data.get("segformer_class_names", True):
        names = [id2label[str(i)] if str(i) in id2label else id2label.get(i) for i in range(len(id2label))]
        if all(isinstance(n, str) for n in names) and not all(n == f"LABEL_{i}" for i, n in enumerate(names)):
            out["class_names"] = tuple(names)
    return out
