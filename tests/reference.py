"""Independent references for parity tests: transformers' SegFormer, made faithful to the original LayerNorm eps,
and hand-written key maps that turn its weights into the official NVlabs and smp layouts."""

from __future__ import annotations

import torch
from torch import nn

from segformer import SegFormerConfig


def hf_model(config: SegFormerConfig, seed: int = 0):
    """transformers' SegformerForSemanticSegmentation with random weights and the original eps split
    (1e-6 in block and stage norms; transformers builds every LayerNorm with 1e-5)."""
    import transformers

    hf_config = transformers.SegformerConfig(
        num_channels=config.in_channels,
        depths=list(config.depths),
        hidden_sizes=list(config.embed_dims),
        num_attention_heads=list(config.num_heads),
        sr_ratios=list(config.sr_ratios),
        decoder_hidden_size=config.decoder_dim,
        num_labels=config.num_classes,
        layer_norm_eps=config.layer_norm_eps,
    )
    torch.manual_seed(seed)
    model = transformers.SegformerForSemanticSegmentation(hf_config)
    set_block_eps(model, config.layer_norm_eps)
    randomize(model, seed)
    return model.eval()


def set_block_eps(model: nn.Module, eps: float) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) and "patch_embeddings" not in name and "sequence_reduction" not in name:
            module.eps = eps


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> None:
    """Weights far from init (norm scales, biases, BN statistics) so that a wrong mapping cannot hide."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.state_dict().items():
        if p.dtype != torch.float32:
            continue
        if name.endswith("running_var"):
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        elif p.ndim == 1:
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if "norm" in name or ".bn." in name else 0))
        else:
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p[0].numel()) ** 0.5)


def hub_state_dict(model: nn.Module, folder) -> dict[str, torch.Tensor]:
    """The hub layout (what every nvidia/* checkpoint holds), read back from transformers' own save_pretrained."""
    from safetensors.torch import load_file

    model.save_pretrained(folder)
    return load_file(f"{folder}/model.safetensors")


def hf_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hub layout -> NVlabs layout, written from segformer-facts.md section 3.3, plus an unused conv_seg."""
    out = {}
    for key, value in sd.items():
        k = key
        if k.startswith("segformer.encoder."):
            k = k.replace("segformer.encoder.", "backbone.")
            parts = k.split(".")
            if parts[1] == "patch_embeddings":
                k = f"backbone.patch_embed{int(parts[2]) + 1}." + ".".join(parts[3:]).replace("layer_norm", "norm")
            elif parts[1] == "layer_norm":
                k = f"backbone.norm{int(parts[2]) + 1}.{parts[3]}"
            elif parts[1] == "block":
                rest = ".".join(parts[4:])
                for a, b in [
                    ("attention.self.query", "attn.q"),
                    ("attention.output.dense", "attn.proj"),
                    ("attention.self.sr", "attn.sr"),
                    ("attention.self.layer_norm", "attn.norm"),
                    ("layer_norm_1", "norm1"),
                    ("layer_norm_2", "norm2"),
                    ("mlp.dense1", "mlp.fc1"),
                    ("mlp.dense2", "mlp.fc2"),
                ]:
                    rest = rest.replace(a, b)
                if "attention.self.key" in rest:
                    vkey = key.replace("attention.self.key", "attention.self.value")
                    value = torch.cat([value, sd[vkey]])
                    rest = rest.replace("attention.self.key", "attn.kv")
                elif "attention.self.value" in rest:
                    continue
                k = f"backbone.block{int(parts[2]) + 1}.{parts[3]}.{rest}"
        else:
            k = k.replace("decode_head.batch_norm", "decode_head.linear_fuse.bn")
            k = k.replace("decode_head.linear_fuse.weight", "decode_head.linear_fuse.conv.weight")
            k = k.replace("decode_head.classifier", "decode_head.linear_pred")
            for i in range(4):
                k = k.replace(f"decode_head.linear_c.{i}.", f"decode_head.linear_c{i + 1}.")
        out[k] = value
    num_classes = sd["decode_head.classifier.weight"].shape[0]
    out["decode_head.conv_seg.weight"] = torch.randn(num_classes, 128, 1, 1)
    out["decode_head.conv_seg.bias"] = torch.randn(num_classes)
    return out


def official_to_smp(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NVlabs layout -> segmentation_models_pytorch Segformer layout (smp's own conversion semantics)."""
    out = {}
    for key, value in sd.items():
        if key.startswith("backbone."):
            out["encoder." + key.removeprefix("backbone.")] = value
        elif key.startswith("decode_head.linear_c"):
            i = int(key[len("decode_head.linear_c")])
            out[f"decoder.mlp_stage.{4 - i}.linear.{key.rsplit('.', 1)[1]}"] = value
        elif key.startswith("decode_head.linear_fuse.conv"):
            out["decoder.fuse_stage.0.weight"] = value
        elif key.startswith("decode_head.linear_fuse.bn."):
            out["decoder.fuse_stage.1." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("decode_head.linear_pred."):
            out["segmentation_head.0." + key.rsplit(".", 1)[1]] = value
    return out
