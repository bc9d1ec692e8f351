"""ImageNet-style classification with a MiT encoder: what `segformer pretrain` trains and what PVTv2's ImageNet
checkpoints hold.

The head is the one the authors describe (NVlabs/SegFormer#39: "similar to DeiT, avg_pool, no class token") and the
one PVTv2 and timm's `pvt_v2_bX` use: the last stage's map, after its LayerNorm, averaged over positions, then one
Linear layer.
"""

from __future__ import annotations

from torch import Tensor, nn

from .config import SegFormerConfig
from .layers import init_weights
from .mit import MixTransformer


class MiTClassifier(nn.Module):
    """`model(x)` maps a normalised (B, C, H, W) batch to (B, num_classes) logits; `config.num_classes` classes."""

    def __init__(self, config: SegFormerConfig, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.config = config
        self.encoder = MixTransformer(config)
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(config.embed_dims[-1], config.num_classes)
        self.apply(init_weights)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The four encoder maps (B, C_i, ceil(H/s), ceil(W/s)) for s = 4, 8, 16, 32."""
        return self.encoder(x)

    def pool(self, x: Tensor) -> Tensor:
        """(B, C4) image embeddings: the last stage's normalised map averaged over positions."""
        return self.encoder(x)[-1].mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.drop(self.pool(x)))

    def num_parameters(self) -> dict[str, int]:
        enc = sum(p.numel() for p in self.encoder.parameters())
        head = sum(p.numel() for p in self.classifier.parameters())
        return {"encoder": enc, "classifier": head, "total": enc + head}
