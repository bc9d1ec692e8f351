"""SegFormer = MixTransformer encoder + AllMLPHead decoder."""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import Tensor, nn

from ..fileio import atomic_folder
from .config import SegFormerConfig, to_hf_config
from .convert import from_ours
from .head import AllMLPHead
from .layers import execution_path, init_classifier, init_weights
from .mit import MixTransformer
from .modelcard import model_card_for


class SegFormer(nn.Module):
    """`model(x)` maps a normalised (B, C, H, W) batch to logits (B, K, ceil(H/4), ceil(W/4))."""

    def __init__(self, config: SegFormerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = MixTransformer(config)
        self.head = AllMLPHead(config.embed_dims, config.decoder_dim, config.num_classes, config.classifier_dropout)
        self.apply(init_weights)
        init_classifier(self.head.classifier)
        self.onnxruntime_ops = False  # set by `export_onnx(..., onnxruntime_ops=True)` while it exports

    def forward(self, x: Tensor) -> Tensor:
        path = execution_path(x, self.onnxruntime_ops)  # decided once here for every block and the decoder
        return self.head(self.encoder(x, path), path)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The four encoder maps (B, C_i, ceil(H/s), ceil(W/s)) for s = 4, 8, 16, 32."""
        return self.encoder(x)

    def reset_classifier(self, num_classes: int, class_names: tuple[str, ...] | None = None) -> None:
        """A new, freshly initialised classifier for `num_classes` (fine-tuning on another label set)."""
        old = self.head.classifier
        self.head.classifier = nn.Conv2d(old.in_channels, num_classes, 1).to(old.weight.device, old.weight.dtype)
        init_classifier(self.head.classifier)
        self.config = self.config.replace(num_classes=num_classes, class_names=class_names)

    def save_pretrained(self, folder: str | os.PathLike, card: dict | None = None) -> Path:
        """Write `config.json` + `model.safetensors` in the Hugging Face hub layout, and the `README.md` model card
        (`segformer.modelcard`; `card` adds metadata such as the training recipe and metrics).

        `transformers.SegformerForSemanticSegmentation.from_pretrained(folder)` loads it, and so does `load_model`.
        The folder is written all-or-nothing (`fileio.atomic_folder`: a temporary folder swapped into place), so a
        crash or a full disk leaves the previous model there, whole; other files already in the folder are kept.
        """
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in from_ours(self.state_dict(), "hf").items()}
        config = json.dumps(to_hf_config(self.config), indent=2) + "\n"
        card_text = model_card_for(self, card)
        return atomic_folder(
            folder,
            {
                "model.safetensors": lambda p: save_file(state, str(p), metadata={"format": "pt"}),
                "config.json": lambda p: p.write_text(config, encoding="utf-8"),
                "README.md": lambda p: p.write_text(card_text, encoding="utf-8"),
            },
        )

    def num_parameters(self) -> dict[str, int]:
        enc = sum(p.numel() for p in self.encoder.parameters())
        dec = sum(p.numel() for p in self.head.parameters())
        return {"encoder": enc, "decoder": dec, "total": enc + dec}
