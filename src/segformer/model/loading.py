"""Build models and load weights from any published source: a file, a folder, or a Hugging Face hub id.

Nothing here unpickles arbitrary objects: safetensors first, `torch.load(weights_only=True)` otherwise.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import SegFormerConfig, from_hf_config, variant_key
from .convert import detect_format, infer_config_fields, normalize_keys, to_ours
from .modelcard import derives_from_nvidia
from .segformer import SegFormer

log = logging.getLogger("segformer")

LICENCE_NOTE = (
    "Note: the official SegFormer weights (NVlabs releases, nvidia/* on the Hugging Face hub and their smp-hub "
    "copies) are under the NVIDIA Source Code License: non-commercial research and evaluation use only."
)
_licence_shown = False
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")


class CheckpointError(ValueError):
    """A source that cannot be loaded; the message names the file and what to do."""


def _note_licence() -> None:
    global _licence_shown
    if not _licence_shown:
        _licence_shown = True
        log.warning(LICENCE_NOTE)


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
            if source.startswith(("nvidia/", "smp-hub/")):
                _note_licence()
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
            hf = data if data.get("model_type") == "segformer" else None
        return found, hf
    return path, None


def load_state(
    source: str | Path, provenance: dict[str, Any] | None = None
) -> tuple[dict[str, Tensor], dict[str, Any], Path]:
    """Weights in our layout, config fields known from the source, and the file they came from; `provenance`, if
    given, receives where they came from (for the model card)."""
    file, hf_config = resolve(source)
    raw, meta = read_state_dict(file)
    raw = normalize_keys(raw)
    try:
        fmt, _ = detect_format(raw)
        sd = to_ours(raw, fmt)
    except KeyError as e:
        raise CheckpointError(f"{file}: {e.args[0]}") from None
    if fmt in ("official", "smp"):
        _note_licence()
    if provenance is not None:
        provenance.update(source=str(source), nvidia_weights=derives_from_nvidia(source, file, fmt))
    fields: dict[str, Any] = from_hf_config(hf_config) if hf_config else {}
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
            f"{file}: holds an encoder only (no decoder); use create_model(name, pretrained={str(source)!r}) instead"
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


def create_model(
    name: str,
    num_classes: int = 150,
    in_channels: int = 3,
    pretrained: str | Path | None = None,
    class_names: tuple[str, ...] | None = None,
    **overrides: Any,
) -> SegFormer:
    """A new SegFormer of variant `name` (b0..b5); `pretrained` loads encoder weights from any source
    (ImageNet `mit_bX.pth`, hub id `nvidia/mit-b0`, or the encoder of a full segmentation checkpoint)."""
    config = SegFormerConfig.from_name(
        name, num_classes=num_classes, in_channels=in_channels, class_names=class_names, **overrides
    )
    model = SegFormer(config)
    if pretrained is not None:
        provenance: dict[str, Any] = {}
        sd, _, file = load_state(pretrained, provenance)
        model.card = {"base_model": str(pretrained), "nvidia_weights": provenance["nvidia_weights"]}
        encoder = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
        key = "stages.0.patch_embed.proj.weight"
        if key in encoder:
            encoder[key] = adapt_input_conv(encoder[key], in_channels)
        load_into(model.encoder, encoder, file)
    return model


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
    **overrides: Any,
) -> SegFormer:
    """A SegFormer from whatever a user names: a variant (b0..b5, fresh weights, encoder from `pretrained`), a
    SegFormerConfig file (.json/.yaml), or a checkpoint file, folder or hub id (its weights; with `num_classes`
    different from the checkpoint's, a new classifier). `overrides` set config fields such as drop_path_rate.

    The one place train, benchmark, export and info decide what a model argument means.
    """
    key = variant_key(str(spec))
    if key is not None:
        return create_model(
            key, num_classes=150 if num_classes is None else num_classes, pretrained=pretrained,
            class_names=class_names, **overrides,
        )  # fmt: skip
    if pretrained is not None:
        raise ValueError(f"pretrained encoder weights need a variant name (b0..b5) as the model, not {str(spec)!r}")
    path = Path(spec)
    if path.suffix in CONFIG_SUFFIXES:
        import yaml

        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model config file (or pass a variant name like b0)")
        data = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "variant"}  # JSON is YAML
        fields = {"num_classes": num_classes, "class_names": class_names}
        config = SegFormerConfig.from_dict(data).replace(**{k: v for k, v in fields.items() if v is not None})
        return SegFormer(config.replace(**overrides))
    model = load_model(spec, num_classes=num_classes, class_names=class_names)
    if overrides:  # config-only fields (drop rates): same weights in a model built with them
        rebuilt = SegFormer(model.config.replace(**overrides))
        rebuilt.load_state_dict(model.state_dict())
        model = rebuilt
    return model
