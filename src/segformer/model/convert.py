"""Declarative key maps between our state dict and the published layouts: official NVlabs (mmseg 0.x),
Hugging Face hub (transformers `save_pretrained`), segmentation_models_pytorch, the module names transformers 5.x
uses in memory (`model.state_dict()` saved with torch.save), and timm's PVTv2 (`timm/pvt_v2_bX.in1k`). PVTv2's own
release (whai362/PVT `.pth` files) uses the original MiT names, so it reads as the official ImageNet layout.

One table drives both directions. Templates name indices: `{s}` stage from 0, `{s1}` stage from 1, `{r}` stage
counted from the last (smp's decoder order), `{b}` block. Every key must be mapped or explicitly dropped, so
a checkpoint of another architecture fails loudly instead of loading half its weights.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

FORMATS = ("ours", "official", "hf", "smp", "hf5", "timm")
NUM_STAGES = 4

# Encoder leaves: ours, official (= smp), HF hub and transformers-5 in-memory (`hf5`), each relative to that
# format's encoder prefix.
_ENCODER = [
    (
        "stages.{s}.patch_embed.proj",
        "patch_embed{s1}.proj",
        "patch_embeddings.{s}.proj",
        "stages.{s}.patch_embeddings.proj",
    ),
    (
        "stages.{s}.patch_embed.norm",
        "patch_embed{s1}.norm",
        "patch_embeddings.{s}.layer_norm",
        "stages.{s}.patch_embeddings.layer_norm",
    ),
    (
        "stages.{s}.blocks.{b}.norm1",
        "block{s1}.{b}.norm1",
        "block.{s}.{b}.layer_norm_1",
        "stages.{s}.blocks.{b}.layernorm_before",
    ),
    (
        "stages.{s}.blocks.{b}.attn.q",
        "block{s1}.{b}.attn.q",
        "block.{s}.{b}.attention.self.query",
        "stages.{s}.blocks.{b}.attention.q_proj",
    ),
    (
        "stages.{s}.blocks.{b}.attn.kv",
        "block{s1}.{b}.attn.kv",
        "block.{s}.{b}.attention.self.kv",
        "stages.{s}.blocks.{b}.attention.kv_proj",
    ),
    (
        "stages.{s}.blocks.{b}.attn.proj",
        "block{s1}.{b}.attn.proj",
        "block.{s}.{b}.attention.output.dense",
        "stages.{s}.blocks.{b}.attention.o_proj",
    ),
    (
        "stages.{s}.blocks.{b}.attn.sr",
        "block{s1}.{b}.attn.sr",
        "block.{s}.{b}.attention.self.sr",
        "stages.{s}.blocks.{b}.attention.sequence_reduction.sequence_reduction",
    ),
    (
        "stages.{s}.blocks.{b}.attn.norm",
        "block{s1}.{b}.attn.norm",
        "block.{s}.{b}.attention.self.layer_norm",
        "stages.{s}.blocks.{b}.attention.sequence_reduction.layer_norm",
    ),
    (
        "stages.{s}.blocks.{b}.norm2",
        "block{s1}.{b}.norm2",
        "block.{s}.{b}.layer_norm_2",
        "stages.{s}.blocks.{b}.layernorm_after",
    ),
    (
        "stages.{s}.blocks.{b}.ffn.fc1",
        "block{s1}.{b}.mlp.fc1",
        "block.{s}.{b}.mlp.dense1",
        "stages.{s}.blocks.{b}.mlp.fc1",
    ),
    (
        "stages.{s}.blocks.{b}.ffn.dwconv",
        "block{s1}.{b}.mlp.dwconv.dwconv",
        "block.{s}.{b}.mlp.dwconv.dwconv",
        "stages.{s}.blocks.{b}.mlp.dwconv.dwconv",
    ),
    (
        "stages.{s}.blocks.{b}.ffn.fc2",
        "block{s1}.{b}.mlp.fc2",
        "block.{s}.{b}.mlp.dense2",
        "stages.{s}.blocks.{b}.mlp.fc2",
    ),
    ("stages.{s}.norm", "norm{s1}", "layer_norm.{s}", "stages.{s}.layer_norm"),
    # The positional-encoding ablation (SegFormerConfig.pos_embed_size); no published layout has it.
    ("stages.{s}.pos_embed", "pos_embed{s1}", "pos_embeddings.{s}", "stages.{s}.pos_embeddings"),
]
_ENCODER_PREFIX = {
    "ours": "encoder.",
    "official": "backbone.",
    "hf": "segformer.encoder.",
    "smp": "encoder.",
    "hf5": "segformer.",
}

# Decoder leaves, absolute keys: ours, official, HF hub, smp, hf5.
_DECODER = [
    (
        "head.proj.{s}",
        "decode_head.linear_c{s1}.proj",
        "decode_head.linear_c.{s}.proj",
        "decoder.mlp_stage.{r}.linear",
        "decode_head.linear_projections.{s}.proj",
    ),
    (
        "head.fuse",
        "decode_head.linear_fuse.conv",
        "decode_head.linear_fuse",
        "decoder.fuse_stage.0",
        "decode_head.linear_fuse",
    ),
    (
        "head.bn",
        "decode_head.linear_fuse.bn",
        "decode_head.batch_norm",
        "decoder.fuse_stage.1",
        "decode_head.batch_norm",
    ),
    (
        "head.classifier",
        "decode_head.linear_pred",
        "decode_head.classifier",
        "segmentation_head.0",
        "decode_head.classifier",
    ),
]

# Keys that carry nothing our model uses: the official head's unused `conv_seg`, ImageNet classifiers.
_DROP = {
    "official": re.compile(r"^(decode_head\.conv_seg|head|backbone\.head)\.(weight|bias)$"),
    "hf": re.compile(r"^classifier\.(weight|bias)$"),
    "smp": re.compile(r"^encoder\.head\.(weight|bias)$"),
    "hf5": re.compile(r"^classifier\.(weight|bias)$"),
    "ours": re.compile(r"^$"),
}

_LEAF = r"\.(?P<leaf>weight|bias|running_mean|running_var|num_batches_tracked)$"
_PLACEHOLDER = re.compile(r"\{(s|s1|r|b)\}")


def _table(fmt: str) -> list[tuple[str, str]]:
    """(our template, their template) pairs for one format, full keys."""
    col = {"official": 1, "smp": 1, "hf": 2, "hf5": 3}[fmt]
    pairs = [(_ENCODER_PREFIX["ours"] + row[0], _ENCODER_PREFIX[fmt] + row[col]) for row in _ENCODER]
    col = {"official": 1, "hf": 2, "smp": 3, "hf5": 4}[fmt]
    return pairs + [(row[0], row[col]) for row in _DECODER]


def _compile(template: str) -> re.Pattern[str]:
    parts = _PLACEHOLDER.split(template)
    # split() alternates literal text and placeholder names
    regex = "".join(re.escape(p) if i % 2 == 0 else rf"(?P<{p}>\d+)" for i, p in enumerate(parts))
    return re.compile("^" + regex + _LEAF)


def _indices(match: re.Match[str]) -> dict[str, int]:
    found = match.groupdict()
    out: dict[str, int] = {}
    if found.get("s") is not None:
        out["s"] = int(found["s"])
    elif found.get("s1") is not None:
        out["s"] = int(found["s1"]) - 1
    elif found.get("r") is not None:
        out["s"] = NUM_STAGES - 1 - int(found["r"])
    if found.get("b") is not None:
        out["b"] = int(found["b"])
    if "s" in out:
        out.update(s1=out["s"] + 1, r=NUM_STAGES - 1 - out["s"])
    return out


_RULES: dict[tuple[str, str], list[tuple[re.Pattern[str], str]]] = {}


def _rules(src: str, dst: str) -> list[tuple[re.Pattern[str], str]]:
    if (src, dst) not in _RULES:
        fmt = dst if src == "ours" else src
        pairs = _table(fmt)
        if src != "ours":
            pairs = [(theirs, ours) for ours, theirs in pairs]
        _RULES[(src, dst)] = [(_compile(a), b) for a, b in pairs]
    return _RULES[(src, dst)]


def _rename(sd: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    out, unmapped = {}, []
    rules = _rules(src, dst)
    for key, value in sd.items():
        if _DROP[src].match(key):
            continue
        for pattern, target in rules:
            m = pattern.match(key)
            if m:
                out[target.format(**_indices(m)) + "." + m.group("leaf")] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise KeyError(f"{len(unmapped)} keys do not belong to a {src} SegFormer state dict: {unmapped[:5]}")
    return out


# transformers keeps keys and values as two Linears; we (like the original) keep one fused `kv`.
# format -> (key infix, value infix, fused infix in that format's table)
_SPLIT_KV = {
    "hf": ("attention.self.key.", "attention.self.value.", "attention.self.kv."),
    "hf5": ("attention.k_proj.", "attention.v_proj.", "attention.kv_proj."),
}


def _merge_kv(sd: dict[str, Tensor], fmt: str) -> dict[str, Tensor]:
    key_part, value_part, kv_part = _SPLIT_KV[fmt]
    out = {}
    for key, value in sd.items():
        if key_part in key:
            other = key.replace(key_part, value_part)
            if other not in sd:
                raise KeyError(f"missing {other!r} next to {key!r}")
            out[key.replace(key_part, kv_part)] = torch.cat([value, sd[other]], dim=0)  # rows: keys, then values
        elif value_part not in key:
            out[key] = value
    return out


def _split_kv(sd: dict[str, Tensor], fmt: str) -> dict[str, Tensor]:
    key_part, value_part, kv_part = _SPLIT_KV[fmt]
    out = {}
    for key, value in sd.items():
        if kv_part in key:
            k, v = value.chunk(2, dim=0)
            out[key.replace(kv_part, key_part)] = k.clone()
            out[key.replace(kv_part, value_part)] = v.clone()
        else:
            out[key] = value
    return out


# timm's pvt_v2 names -> the original names: the inverse of timm's `checkpoint_filter_fn`, one rule per pattern.
_FROM_TIMM = [
    (re.compile(r"^patch_embed\."), lambda m: "patch_embed1."),
    (re.compile(r"^stages\.(\d+)\.downsample\."), lambda m: f"patch_embed{int(m[1]) + 1}."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\."), lambda m: f"block{int(m[1]) + 1}.{m[2]}."),
    (re.compile(r"^stages\.(\d+)\.norm\."), lambda m: f"norm{int(m[1]) + 1}."),
]
_TO_TIMM = [
    (re.compile(r"^patch_embed1\."), lambda m: "patch_embed."),
    (re.compile(r"^patch_embed(\d+)\."), lambda m: f"stages.{int(m[1]) - 1}.downsample."),
    (re.compile(r"^block(\d+)\.(\d+)\."), lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}."),
    (re.compile(r"^norm(\d+)\."), lambda m: f"stages.{int(m[1]) - 1}.norm."),
]


def _retime(sd: dict[str, Tensor], rules: list, dwconv: tuple[str, str]) -> dict[str, Tensor]:
    """Rename keys by the first matching prefix rule, and the depthwise conv's infix (`dwconv`: from, to)."""
    out = {}
    for key, value in sd.items():
        for pattern, new in rules:
            key, n = pattern.subn(new, key, count=1)
            if n:
                break
        out[key.replace(*dwconv)] = value
    return out


def timm_to_original(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm `pvt_v2_bX` keys -> the original (whai362 / NVlabs ImageNet) keys."""
    return _retime(sd, _FROM_TIMM, (".mlp.dwconv.", ".mlp.dwconv.dwconv."))


def original_to_timm(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The original ImageNet keys -> timm `pvt_v2_bX` keys (what timm's `checkpoint_filter_fn` does)."""
    return _retime(sd, _TO_TIMM, (".mlp.dwconv.dwconv.", ".mlp.dwconv."))


# ImageNet classifiers: each layout's key prefix, and ours (`MiTClassifier.classifier`).
_CLASSIFIER = {"official": "head.", "timm": "head.", "hf": "classifier.", "hf5": "classifier.", "ours": "classifier."}
_CLASSIFIER_KEY = re.compile(r"^(backbone\.)?(head|classifier)\.(weight|bias)$")


def detect_format(sd: dict[str, Any]) -> tuple[str, bool]:
    """(format, has_decoder) from the keys alone; raises when no SegFormer layout matches."""
    keys = set(sd)
    if "encoder.stages.0.patch_embed.proj.weight" in keys:
        return "ours", "head.classifier.weight" in keys
    if "patch_embed.proj.weight" in keys and "stages.0.blocks.0.attn.q.weight" in keys:  # timm's pvt_v2
        return "timm", False
    if "backbone.patch_embed1.proj.weight" in keys:
        return "official", "decode_head.linear_pred.weight" in keys
    if "patch_embed1.proj.weight" in keys:  # an ImageNet backbone file (mit_bX.pth), or smp-hub/mit_bX
        return "official", False
    if "segformer.encoder.patch_embeddings.0.proj.weight" in keys:
        return "hf", "decode_head.classifier.weight" in keys
    if "encoder.patch_embeddings.0.proj.weight" in keys:  # a bare SegformerModel
        return "hf", False
    if "segformer.stages.0.patch_embeddings.proj.weight" in keys:  # transformers 5.x `model.state_dict()`
        return "hf5", "decode_head.classifier.weight" in keys
    if "encoder.patch_embed1.proj.weight" in keys:
        return "smp", "segmentation_head.0.weight" in keys
    sample = sorted(keys)[:5]
    raise KeyError(f"not a SegFormer state dict (no known layout matches); first keys: {sample}")


def normalize_keys(sd: dict[str, Any]) -> dict[str, Any]:
    """Strip wrappers' prefixes (DDP `module.`, torch.compile `_orig_mod.`) and prefix headless layouts."""
    out = {}
    for key, value in sd.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        out[key] = value
    if "patch_embed1.proj.weight" in out:
        out = {("backbone." + k if not k.startswith("head.") else k): v for k, v in out.items()}
    if "encoder.patch_embeddings.0.proj.weight" in out or "stages.0.patch_embeddings.proj.weight" in out:
        out = {"segformer." + k: v for k, v in out.items()}  # a bare SegformerModel
    return out


def to_ours(sd: dict[str, Tensor], fmt: str | None = None, classifier: bool = False) -> dict[str, Tensor]:
    """Any supported layout -> ours. Unknown keys raise; known-useless keys (conv_seg) drop, and so do ImageNet
    classifiers unless `classifier` (then `classifier.weight/bias`, as `MiTClassifier` names them)."""
    sd = normalize_keys(sd)
    fmt = fmt or detect_format(sd)[0]
    if fmt == "timm":
        sd = normalize_keys(timm_to_original(sd))
        fmt = "official"
    head = {}
    if classifier:
        head = {"classifier." + m[3]: v for k, v in sd.items() if (m := _CLASSIFIER_KEY.match(k))}
        sd = {k: v for k, v in sd.items() if not _CLASSIFIER_KEY.match(k)}
    if fmt == "ours":
        return {**sd, **head}
    if fmt in _SPLIT_KV:
        sd = _merge_kv(sd, fmt)
    return {**_rename(sd, fmt, "ours"), **head}


def from_ours(sd: dict[str, Tensor], fmt: str) -> dict[str, Tensor]:
    """Ours -> another layout (`hf` is what `save_pretrained` writes); an ImageNet `classifier.*` goes along as that
    layout's classifier. `timm` gives timm's pvt_v2 keys (an encoder, with its classifier if any)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    head = {k.removeprefix("classifier."): v for k, v in sd.items() if k.startswith("classifier.")}
    sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    if fmt == "ours":
        out = dict(sd)
    elif fmt == "timm":
        original = {k.removeprefix("backbone."): v for k, v in _rename(sd, "ours", "official").items()}
        out = original_to_timm(original)
    else:
        out = _rename(sd, "ours", fmt)
        out = _split_kv(out, fmt) if fmt in _SPLIT_KV else out
    prefix = _CLASSIFIER.get(fmt, "classifier.")
    return {**out, **{prefix + k: v for k, v in head.items()}}


def infer_config_fields(sd: dict[str, Tensor]) -> dict[str, Any]:
    """Architecture fields read off the shapes of a state dict in our layout (heads cannot be read: defaults)."""
    dims, depths, srs = [], [], []
    s = 0
    while f"encoder.stages.{s}.patch_embed.proj.weight" in sd:
        dims.append(sd[f"encoder.stages.{s}.patch_embed.proj.weight"].shape[0])
        depth = 0
        while f"encoder.stages.{s}.blocks.{depth}.norm1.weight" in sd:
            depth += 1
        depths.append(depth)
        sr = sd.get(f"encoder.stages.{s}.blocks.0.attn.sr.weight")
        srs.append(sr.shape[-1] if sr is not None else 1)
        s += 1
    if not dims:
        raise KeyError("state dict has no encoder weights (encoder.stages.0.patch_embed.proj.weight)")
    fields: dict[str, Any] = {
        "embed_dims": tuple(dims),
        "depths": tuple(depths),
        "sr_ratios": tuple(srs),
        "in_channels": sd["encoder.stages.0.patch_embed.proj.weight"].shape[1],
        # per stage, from fc2's input width (fc1, the first tensor a corrupted file shows, then fails alone)
        "mlp_ratio": tuple(sd[f"encoder.stages.{s}.blocks.0.ffn.fc2.weight"].shape[1] // d for s, d in enumerate(dims)),
    }
    pos = sd.get("encoder.stages.0.pos_embed.weight")  # (1, C, h, w) on the stage-1 grid: any input size with
    fields["pos_embed_size"] = (4 * pos.shape[2], 4 * pos.shape[3]) if pos is not None else None  # that grid
    if "head.classifier.weight" in sd:
        fields["decoder_dim"] = sd["head.classifier.weight"].shape[1]
        fields["num_classes"] = sd["head.classifier.weight"].shape[0]
    return fields
