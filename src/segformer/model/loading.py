"""Build models and load weights from any published source: a file, a folder, or a Hugging Face hub id.

Nothing here unpickles arbitrary objects: safetensors first, `torch.load(weights_only=True)` otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import licence as lic
from .classifier import MiTClassifier
from .config import VARIANTS, SegFormerConfig, from_hf_config, variant_key
from .convert import detect_format, infer_config_fields, normalize_keys, to_ours
from .modelcard import derives_from_nvidia
from .segformer import SegFormer

log = logging.getLogger("segformer")

LICENCE_NOTE = (
    "Note: the official SegFormer weights (NVlabs releases, nvidia/* on the Hugging Face hub and their smp-hub "
    "copies) are under the NVIDIA Source Code License: non-commercial research and evaluation use only."
)
PVT_NOTE = (
    "Note: PVTv2 ImageNet-1k weights (whai362/PVT, timm/pvt_v2_*.in1k) are Apache-2.0; ImageNet's terms of access "
    "also apply to weights trained on it."
)
_licence_shown = False
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")


class CheckpointError(ValueError):
    """A source that cannot be loaded; the message names the file and what to do."""


def _note_licence(note: str = LICENCE_NOTE) -> None:
    global _licence_shown
    if not _licence_shown:
        _licence_shown = True
        log.warning(note)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, metadata) from a .safetensors or torch file, unwrapping `state_dict`/`model` containers."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    meta: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e}); is it truncated?") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "Weights only load failed" in str(e):
                raise CheckpointError(
                    f"{path}: refused to load: the file holds pickled Python objects, not just tensors "
                    "(unpickling it could run code); convert it to safetensors where you trust it"
                ) from None
            raise CheckpointError(f"{path}: not a PyTorch checkpoint, or a truncated one ({_first_line(e)})") from None
        except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, ... on files that are not checkpoints
            raise CheckpointError(f"{path}: not a PyTorch checkpoint, or a truncated one ({_first_line(e)})") from None
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model", "module"):
            if isinstance(obj.get(wrapper), dict):
                meta = {k: v for k, v in obj.items() if k != wrapper}
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors (found {type(obj).__name__})")
    return obj, meta


def _hub_folder(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["config.json", *_WEIGHT_FILES]))
    except Exception as e:  # offline, unknown repo, auth: all end the same way for the user
        raise CheckpointError(
            f"{repo_id}: could not get it from the Hugging Face hub ({type(e).__name__}: {_first_line(e)}); "
            "when offline, download it once where there is internet (it is then cached) or pass a local file or folder"
        ) from None


def resolve(source: str | Path) -> tuple[Path, dict[str, Any] | None]:
    """The weight file and (if any) the transformers config.json for a file, folder or hub id."""
    path = Path(source)
    if not path.exists():
        if isinstance(source, str) and _HUB_ID.match(source):
            path = _hub_folder(source)
        else:
            raise CheckpointError(f"{source}: no such file or folder, and not a hub id like 'nvidia/mit-b0'")
    if path.is_dir():
        found = next((path / name for name in _WEIGHT_FILES if (path / name).is_file()), None)
        if found is None:
            raise CheckpointError(f"{path}: folder holds none of {', '.join(_WEIGHT_FILES)}")
        config = path / "config.json"
        hf = None
        if config.is_file():
            try:
                data = json.loads(config.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{config}: not valid JSON ({e})") from None
            hf = data if data.get("model_type") == "segformer" or "segformer_licence" in data else None
        return found, hf
    return path, None


def _is_pvtv2(source: Any, fmt: str, fields: dict[str, Any]) -> bool:
    """PVTv2 ImageNet weights: timm's layout (timm has no MiT), or the original layout with PVTv2's shapes (FFN 8 in
    stage 1, which no NVIDIA release has) or a PVTv2 name. A PVTv2-B5 file has MiT-B5's keys and shapes: renamed to
    something without `pvt_v2`, it reads as NVIDIA's (the safe side)."""
    if fmt == "timm":
        return True
    name = str(source).lower().replace("-", "_")
    ratios = fields.get("mlp_ratio")
    paper_shapes = isinstance(ratios, tuple) and ratios[0] != 4
    return fmt == "official" and "num_classes" not in fields and (paper_shapes or "pvt_v2" in name)


def source_licence(
    source: Any, file: Path, fmt: str, fields: dict[str, Any], recorded: dict[str, Any] | None
) -> dict[str, Any]:
    """The licence record of weights loaded from `source`: NVIDIA's for their hub ids whatever the files say, else
    the record they carry, else one read off where they came from."""
    if str(source).startswith(("nvidia/", "smp-hub/")):
        _note_licence()
        history = (recorded or {}).get("history") or []
        return {**(recorded or {}), **lic.record("nvidia", f"NVIDIA weights {source}", *history)}
    if recorded is not None:
        if lic.origin_of(recorded) == "nvidia":
            _note_licence()
        return dict(recorded)
    if _is_pvtv2(source, fmt, fields):
        _note_licence(PVT_NOTE)
        return lic.record("pvtv2", f"PVTv2 ImageNet-1k weights {source}")
    if derives_from_nvidia(source, file, fmt):
        _note_licence()
        return lic.record("nvidia", f"NVIDIA weights {source}")
    return lic.record("unknown", f"weights {source}")


def load_state(
    source: str | Path, provenance: dict[str, Any] | None = None, classifier: bool = False
) -> tuple[dict[str, Tensor], dict[str, Any], Path]:
    """Weights in our layout, config fields known from the source (`licence` among them), and the file they came
    from; `provenance`, if given, receives where they came from (for the model card). `classifier` keeps an ImageNet
    classifier as `classifier.*`."""
    file, hf_config = resolve(source)
    raw, meta = read_state_dict(file)
    raw = normalize_keys(raw)
    try:
        fmt, _ = detect_format(raw)
        sd = to_ours(raw, fmt, classifier=classifier)
    except KeyError as e:
        raise CheckpointError(f"{file}: {e.args[0]}") from None
    fields: dict[str, Any] = from_hf_config(hf_config) if hf_config else {}
    if hf_config and isinstance(hf_config.get("segformer_config"), dict):  # `segformer pretrain` output: an encoder
        own = SegFormerConfig.from_dict(hf_config["segformer_config"]).to_dict()
        fields.update({k: v for k, v in own.items() if k not in ("variant", "num_classes", "class_names")})
    classes = meta.get("meta", {}).get("CLASSES") if isinstance(meta.get("meta"), dict) else None
    if classes and "class_names" not in fields:
        fields["class_names"] = tuple(str(c) for c in classes)
    if isinstance(meta.get("config"), dict):  # our own training checkpoints carry their config
        fields.update({k: v for k, v in SegFormerConfig.from_dict(meta["config"]).to_dict().items() if k != "variant"})
    try:
        inferred = infer_config_fields(sd)
    except KeyError as e:
        raise CheckpointError(f"{file}: {e.args[0]}") from None
    if inferred["pos_embed_size"] is not None and fields.get("pos_embed_size") is not None:
        del inferred["pos_embed_size"]  # the size recorded with the weights (any size with the same grids fits them)
    fields.update(inferred)
    sr = sd.get("encoder.stages.0.blocks.0.attn.sr.weight")
    if sr is not None and sr.shape[-1] == 1:
        raise CheckpointError(f"{file}: a PVTv2-Li encoder (linear attention, pvt_v2_b2_li) is not supported here")
    fields["licence"] = source_licence(source, file, fmt, fields, fields.get("licence"))
    if provenance is not None:
        nvidia = lic.origin_of(fields["licence"]) == "nvidia"
        provenance.update(source=str(source), nvidia_weights=nvidia, format=fmt)
    return sd, fields, file


def load_into(module: torch.nn.Module, sd: dict[str, Tensor], file: str | Path) -> None:
    """Strict load with a one-line error naming the file and the first offending keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in sd and sd[k].shape != v.shape
    ]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys {missing[:3]}")
        if extra:
            parts.append(f"{len(extra)} unexpected keys {extra[:3]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (checkpoint vs model) {shapes[:3]}")
        raise CheckpointError(f"{file}: does not fit this model: {'; '.join(parts)}")
    module.load_state_dict(sd, strict=True)


def load_model(
    source: str | Path, num_classes: int | None = None, class_names: tuple[str, ...] | None = None
) -> SegFormer:
    """A SegFormer from a file, folder or hub id in any supported layout; variant and classes read off the weights.

    With `num_classes` different from the checkpoint's, only the classifier is re-initialised (fine-tuning).
    """
    provenance: dict[str, Any] = {}
    sd, fields, file = load_state(source, provenance)
    if "num_classes" not in fields:
        raise CheckpointError(
            f"{file}: holds an encoder only (no decoder); use create_model('auto', pretrained={str(source)!r}) "
            "(--model auto --pretrained SOURCE) instead"
        )
    config = SegFormerConfig(**fields)
    model = SegFormer(config)
    load_into(model, sd, file)
    if num_classes is not None and num_classes != config.num_classes:
        log.warning(
            "re-initialised the classifier: %s has %d classes, asked for %d", file, config.num_classes, num_classes
        )
        model.reset_classifier(num_classes, class_names)
    elif class_names is not None:
        model.config = model.config.replace(class_names=tuple(class_names))
    model.card = provenance  # where the weights came from, for the model card save_pretrained writes
    return model.eval()


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Pretrained RGB first-conv weights (O, 3, k, k) for `in_channels` inputs, keeping the response scale:
    1 channel sums RGB; more channels repeat RGB cyclically and rescale by 3 / in_channels."""
    rgb = weight.shape[1]
    if in_channels == rgb:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // rgb)
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (rgb / in_channels)


def encoder_variant(fields: dict[str, Any]) -> str | None:
    """The VARIANTS row whose encoder has the widths, depths and FFN expansions read off a state dict, else None."""
    ratios = fields["mlp_ratio"]
    ratios = tuple(ratios) if isinstance(ratios, tuple) else (ratios,) * len(fields["embed_dims"])
    shape = (tuple(fields["embed_dims"]), tuple(fields["depths"]), ratios)
    return next((k for k, row in VARIANTS.items() if (row.embed_dims, row.depths, row.mlp_ratios) == shape), None)


def _describe(fields: dict[str, Any]) -> str:
    ratios = fields["mlp_ratio"] if isinstance(fields["mlp_ratio"], tuple) else (fields["mlp_ratio"],) * 4
    found = encoder_variant(fields)
    return (
        f"{'a ' + found if found else 'an'} encoder (widths {','.join(map(str, fields['embed_dims']))}, depths "
        f"{','.join(map(str, fields['depths']))}, Mix-FFN expansion {','.join(map(str, ratios))})"
    )


def _check_fits(config: SegFormerConfig, fields: dict[str, Any], file: Path, partial: bool) -> None:
    """One line when the file's encoder is not the asked-for variant's: which variant it is, and the two ways on."""
    same = (tuple(fields["embed_dims"]), tuple(fields["depths"])) == (config.embed_dims, config.depths)
    ffn = tuple(fields["mlp_ratio"]) if isinstance(fields["mlp_ratio"], tuple) else (fields["mlp_ratio"],) * 4
    if same and ffn == config.mlp_ratios:
        return
    found = encoder_variant(fields)
    use = f"use --model {found} (create_model({found!r}, ...)) for all of it" if found else "use a matching config"
    if not same:
        raise CheckpointError(f"{file}: holds {_describe(fields)}, which does not fit {config.name}: {use}")
    if not partial:
        raise CheckpointError(
            f"{file}: holds {_describe(fields)}, which does not fit {config.name} (Mix-FFN expansion "
            f"{','.join(map(str, config.mlp_ratios))}): {use}, or add --pretrained-partial (partial=True) to load "
            "what fits and re-initialise the rest"
        )


def load_partial(module: torch.nn.Module, sd: dict[str, Tensor], file: str | Path) -> list[str]:
    """Copy every tensor of `sd` whose name and shape fit `module`; the rest of `module` keeps its initialisation.
    Logs exactly which tensors were not loaded and their share of the module's parameters; returns their names."""
    own = module.state_dict()
    fits = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict({**own, **fits}, strict=True)
    skipped = [k for k in own if k not in fits]
    total = sum(p.numel() for p in module.parameters())
    share = sum(own[k].numel() for k in skipped) / total
    log.warning(
        "%s: loaded %d of %d tensors; %d re-initialised (%.2f%% of the encoder's %d parameters): %s",
        file, len(fits), len(own), len(skipped), 100 * share, total, ", ".join(skipped) or "none",
    )  # fmt: skip
    return skipped


def create_model(
    name: str,
    num_classes: int = 150,
    in_channels: int = 3,
    pretrained: str | Path | None = None,
    class_names: tuple[str, ...] | None = None,
    partial: bool = False,
    **overrides: Any,
) -> SegFormer:
    """A new SegFormer of variant `name` (a VARIANTS row, or "auto": the row the `pretrained` encoder's shapes are);
    `pretrained` loads encoder weights from any source (ImageNet `mit_bX.pth`, hub id `nvidia/mit-b0`, PVTv2's
    `pvt_v2_bX.pth` or timm hub id/folder `timm/pvt_v2_b2.in1k`, our `segformer pretrain` output, or the encoder of
    a full segmentation checkpoint). An encoder of other shapes is one clear error; `partial=True` instead loads
    every tensor that fits (PVTv2-B0..B4 into the released B0..B4: all but the stage 1-2 FFNs) and logs the rest."""
    if pretrained is None:
        if name == "auto":
            raise ValueError("model 'auto' takes its variant from the pretrained encoder: give pretrained weights")
        config = SegFormerConfig.from_name(
            name, num_classes=num_classes, in_channels=in_channels, class_names=class_names,
            **{"licence": lic.record("scratch"), **overrides},
        )  # fmt: skip
        return SegFormer(config)
    provenance: dict[str, Any] = {}
    sd, fields, file = load_state(pretrained, provenance)
    if name == "auto":
        name = encoder_variant(fields) or ""
    record = dict(fields["licence"])
    settings = {"num_classes": num_classes, "in_channels": in_channels, "class_names": class_names}
    settings.update(licence=record, **overrides)
    if name:
        config = SegFormerConfig.from_name(name, **settings)
    else:  # "auto" and no variant has these shapes: the architecture the weights (and their config) record
        arch = ("embed_dims", "depths", "num_heads", "sr_ratios", "mlp_ratio", "layer_norm_eps", "decoder_dim")
        config = SegFormerConfig(**{**{k: fields[k] for k in arch if k in fields}, **settings})
    _check_fits(config, fields, file, partial)
    model = SegFormer(config)
    model.card = {"base_model": str(pretrained), "nvidia_weights": provenance["nvidia_weights"]}
    load_encoder(model, sd, file, partial)
    return model


def load_encoder(model: SegFormer, sd: dict[str, Tensor], file: str | Path, partial: bool = False) -> None:
    """The `encoder.*` tensors of `sd` (our layout) into `model.encoder`, the first conv adapted to the model's input
    channels; strict, or with `partial` every tensor that fits (the rest listed in the log and the licence record)."""
    encoder = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    key = "stages.0.patch_embed.proj.weight"
    if key in encoder:
        encoder[key] = adapt_input_conv(encoder[key], model.config.in_channels)
    if not partial:
        load_into(model.encoder, encoder, file)
        return
    skipped = load_partial(model.encoder, encoder, file)
    if skipped and model.config.licence is not None:
        history = [*model.config.licence.get("history", []), f"{len(skipped)} encoder tensors re-initialised"]
        model.config = model.config.replace(licence={**model.config.licence, "history": history})


def load_classifier(source: str | Path, **overrides: Any) -> MiTClassifier:
    """An ImageNet classifier (encoder + Linear head) from PVTv2/timm files, NVIDIA's `mit_bX.pth`, or our
    `segformer pretrain` output; the variant and class count are read off the weights."""
    sd, fields, file = load_state(source, classifier=True)
    if "classifier.weight" not in sd:
        raise CheckpointError(f"{file}: holds no ImageNet classifier (head.weight / classifier.weight)")
    keep = {k: v for k, v in fields.items() if k in {f.name for f in dataclasses.fields(SegFormerConfig)}}
    keep.pop("num_classes", None)
    keep.update(num_classes=sd["classifier.weight"].shape[0], **overrides)
    key = encoder_variant(fields)
    config = SegFormerConfig.from_name(key, **keep) if key else SegFormerConfig(**keep)
    model = MiTClassifier(config)
    load_into(model, {k: v for k, v in sd.items() if k.startswith(("encoder.", "classifier."))}, file)
    return model.eval()


CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def random_weights_note(spec: str | Path, model: SegFormer) -> str:
    """The line that tells a user a variant name gave freshly initialised weights ("" for anything else)."""
    key = variant_key(str(spec))
    return f"{key}: randomly initialised weights ({model.config.num_classes} classes)" if key else ""


def model_from_spec(
    spec: str | Path,
    *,
    num_classes: int | None = None,
    pretrained: str | Path | None = None,
    class_names: tuple[str, ...] | None = None,
    partial: bool = False,
    **overrides: Any,
) -> SegFormer:
    """A SegFormer from whatever a user names: a variant (b0..b5, fresh weights, encoder from `pretrained`), a
    SegFormerConfig file (.json/.yaml), or a checkpoint file, folder or hub id (its weights; with `num_classes`
    different from the checkpoint's, a new classifier). `overrides` set config fields such as drop_path_rate.

    The one place train, benchmark, export and info decide what a model argument means.
    """
    key = "auto" if str(spec) == "auto" else variant_key(str(spec))
    if key is not None:
        return create_model(
            key, num_classes=150 if num_classes is None else num_classes, pretrained=pretrained,
            class_names=class_names, partial=partial, **overrides,
        )  # fmt: skip
    path = Path(spec)
    if pretrained is not None and path.suffix not in CONFIG_SUFFIXES:
        raise ValueError(
            f"pretrained encoder weights need a variant name (b0..b5, auto) or a config file as the model, not {spec!s}"
        )
    if path.suffix in CONFIG_SUFFIXES:
        import yaml

        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model config file (or pass a variant name like b0)")
        data = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "variant"}  # JSON is YAML
        fields = {"num_classes": num_classes, "class_names": class_names}
        config = SegFormerConfig.from_dict(data).replace(**{k: v for k, v in fields.items() if v is not None})
        if pretrained is None:
            return SegFormer(config.replace(**{"licence": lic.record("scratch"), **overrides}))
        sd, found, file = load_state(pretrained)
        config = config.replace(**{"licence": found["licence"], **overrides})
        _check_fits(config, found, file, partial)
        model = SegFormer(config)
        load_encoder(model, sd, file, partial)
        return model
    model = load_model(spec, num_classes=num_classes, class_names=class_names)
    if overrides:  # config-only fields (drop rates): same weights in a model built with them
        rebuilt = SegFormer(model.config.replace(**overrides))
        rebuilt.load_state_dict(model.state_dict())
        model = rebuilt
    return model
