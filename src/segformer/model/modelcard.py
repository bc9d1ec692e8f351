"""Model cards: the README.md that `save_pretrained` writes next to the weights, in the Hugging Face hub's format.

`model_card(config, metadata)` is a pure function: YAML front matter (library_name, tags, license, datasets,
base_model, model-index with the metrics) and then the variant, parameters, classes and palette, the training
recipe when the model came from `segformer train`, the last evaluation's metrics, the test protocol, and the licence
note when the weights derive from NVIDIA's. Every metadata key is optional:

- parameters: {"encoder", "decoder", "total"} (`SegFormer.num_parameters()`)
- source, base_model, nvidia_weights: where the weights came from (`load_model`/`create_model` record it)
- training: a `TrainConfig.to_dict()`, iterations: iterations done
- metrics: an `evaluate` result (fractions), evaluated_on: "ade20k val" or similar
- test_protocol: {"mode", "scale", "size_divisor", "crop", "stride"} when the config holds none
- palette: (K, 3) colours; license: an identifier for weights not derived from NVIDIA's
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from . import licence as lic
from .config import SegFormerConfig

NVIDIA_LICENCE = (
    "The weights derive from NVIDIA's SegFormer release, which is under the NVIDIA Source Code License for "
    "SegFormer: non-commercial use only (research and evaluation). See "
    "https://github.com/NVlabs/SegFormer/blob/master/LICENSE before using or sharing this model."
)
NVIDIA_LICENCE_LINK = "https://github.com/NVlabs/SegFormer/blob/master/LICENSE"
# Hub dataset ids, as the official nvidia/segformer-* cards list them.
HUB_DATASETS = {"ade20k": "scene_parse_150", "cityscapes": "cityscapes", "coco-stuff": "coco-stuff", "voc": "voc"}
DATASET_TITLES = {
    "ade20k": "ADE20K",
    "cityscapes": "Cityscapes",
    "coco-stuff": "COCO-Stuff",
    "voc": "Pascal VOC",
    "folder": "folder dataset",
}
CITATION = """@inproceedings{xie2021segformer,
  title     = {SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers},
  author    = {Xie, Enze and Wang, Wenhai and Yu, Zhiding and Anandkumar, Anima and Alvarez, Jose M. and Luo, Ping},
  booktitle = {Neural Information Processing Systems (NeurIPS)},
  year      = {2021}
}"""
_NVIDIA_SOURCES = ("nvidia/", "smp-hub/")


def derives_from_nvidia(source: Any, file: str | Path | None = None, fmt: str | None = None) -> bool:
    """Whether weights loaded from `source` (file, folder, hub id) derive from NVIDIA's: an nvidia/ or smp-hub/ hub
    id, the official or smp key layout (`fmt`), or a folder whose model card says so."""
    if str(source).startswith(_NVIDIA_SOURCES) or fmt in ("official", "smp"):
        return True
    if file is not None:
        card = Path(file).parent / "README.md"
        try:
            return card.is_file() and "license_name: nvidia-source-code-license" in card.read_text()
        except OSError:
            return False
    return False


def training_card(train_config: Any, iterations: int, metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """What `segformer train` passes to `save_pretrained(card=...)`: the recipe, iterations done, the metrics of
    the last evaluation (the test protocol is in the model's config)."""
    train = train_config.to_dict() if hasattr(train_config, "to_dict") else dict(train_config)
    card: dict[str, Any] = {"training": train, "iterations": int(iterations)}
    if train.get("pretrained"):
        card["base_model"] = train["pretrained"]
    if metrics is not None:
        card["metrics"] = dict(metrics)
        card["evaluated_on"] = f"{train.get('dataset', 'dataset')} {train.get('val_split', 'val')}"
        if train.get("eval_max_samples"):
            card["evaluated_on"] += f" (first {train['eval_max_samples']} images)"
    return card


def model_card_for(model: Any, card: Mapping[str, Any] | None = None) -> str:
    """The card of a `SegFormer`: its config and parameter counts, where its weights came from (`model.card`, set by
    `load_model`/`create_model`), and `card` (e.g. `training_card(...)`), which wins over both."""
    metadata = {"parameters": model.num_parameters(), **getattr(model, "card", {}), **(card or {})}
    return model_card(model.config, metadata)


def model_card(config: SegFormerConfig, metadata: Mapping[str, Any] | None = None) -> str:
    """The README.md model card (markdown with YAML front matter) of a model with `config` and `metadata`."""
    meta = dict(metadata or {})
    train = meta.get("training") or {}
    record = getattr(config, "licence", None)
    nvidia = (
        bool(meta.get("nvidia_weights"))
        or str(meta.get("base_model", "")).startswith(_NVIDIA_SOURCES)
        or lic.origin_of(record) == "nvidia"
    )
    dataset = train.get("dataset")
    variant = config.name
    title = f"SegFormer-{variant.upper()}" if variant != "custom" else "SegFormer (custom architecture)"

    front: dict[str, Any] = {
        "library_name": "segformer",
        "pipeline_tag": "image-segmentation",
        "tags": ["image-segmentation", "semantic-segmentation", "segformer", "vision"],
    }
    if nvidia:
        front.update(license="other", license_name="nvidia-source-code-license", license_link=NVIDIA_LICENCE_LINK)
    elif record is not None:
        front.update(lic.card_fields(record))
        if lic.origin_of(record) in ("scratch", "own", "unknown") and meta.get("license"):
            front["license"] = meta["license"]  # the owner's choice, where no third party's weights decide
    else:
        front["license"] = meta.get("license", "unknown")
    if dataset in HUB_DATASETS:
        front["datasets"] = [HUB_DATASETS[dataset]]
    base = meta.get("base_model") or (meta.get("source") if _is_hub_id(meta.get("source")) else None)
    if base and _is_hub_id(base):
        front["base_model"] = base
    metrics = meta.get("metrics") or {}
    if _number(metrics.get("mIoU")) is not None:
        front["model-index"] = [_model_index(title, metrics, meta.get("evaluated_on") or dataset or "validation")]

    out = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "", f"# {title}", ""]
    out += [
        f"{title} semantic segmentation model ({config.num_classes} classes) in the Hugging Face hub layout, saved by "
        "the `segformer` library's `save_pretrained` (SegFormer: Xie et al., NeurIPS 2021, arXiv:2105.15203). "
        "`transformers.SegformerForSemanticSegmentation.from_pretrained` loads this folder too.",
        "",
        "```python",
        "from segformer import Segmenter, load_model",
        "",
        'labels = Segmenter(load_model("THIS_FOLDER_OR_REPO"))("photo.jpg")  # (H, W) class ids',
        "```",
        "",
    ]
    out += _model_section(config, meta.get("parameters"))
    out += _classes_section(config, meta.get("palette"))
    if train:
        out += _training_section(train, meta.get("iterations"))
    if metrics:
        out += _metrics_section(metrics, meta.get("evaluated_on"))
    protocol = config.test_protocol.to_dict() if getattr(config, "test_protocol", None) else None
    out += _protocol_section(protocol or meta.get("test_protocol"))
    out += ["## Licence", ""]
    if nvidia:
        out += [NVIDIA_LICENCE, ""]
    elif record is not None:
        out += [f"Weights: {lic.summary(record)}.", ""]
    if front["license"] == "unknown":
        out += ["The owner of these weights has not set a licence (edit `license:` in the front matter).", ""]
    if record is not None and (record.get("history") or nvidia):
        out += ["Where the weights came from:", "", *(f"- {step}" for step in record.get("history") or []), ""]
    out += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(out)


def _is_hub_id(value: Any) -> bool:
    if not isinstance(value, str) or value.count("/") != 1 or Path(value).exists():
        return False
    return not value.startswith((".", "/", "~"))


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _pct(value: Any) -> str:
    value = _number(value)
    return "-" if value is None else f"{100 * value:.2f}"


def _model_index(title: str, metrics: Mapping[str, Any], evaluated_on: str) -> dict[str, Any]:
    name, _, split = str(evaluated_on).partition(" ")
    dataset = {"name": DATASET_TITLES.get(name, name), "type": HUB_DATASETS.get(name, name)}
    if split:
        dataset["split"] = split
    values = []
    for key, kind in (("mIoU", "mean_iou"), ("aAcc", "accuracy"), ("mAcc", "mean_accuracy")):
        value = _number(metrics.get(key))
        if value is not None:
            values.append({"type": kind, "value": round(100 * value, 2), "name": key})
    task = {"type": "image-segmentation", "name": "Semantic Segmentation"}
    return {"name": title, "results": [{"task": task, "dataset": dataset, "metrics": values}]}


def _model_section(config: SegFormerConfig, parameters: Mapping[str, int] | None) -> list[str]:
    rows = [
        ("variant", config.name),
        ("classes", str(config.num_classes)),
        ("input channels", str(config.in_channels)),
        ("encoder widths", " / ".join(str(d) for d in config.embed_dims)),
        ("encoder depths", " / ".join(str(d) for d in config.depths)),
        ("decoder width", str(config.decoder_dim)),
    ]
    if parameters:
        rows.append(
            (
                "parameters",
                f"{parameters['total'] / 1e6:.2f} M (encoder {parameters['encoder'] / 1e6:.2f} M, "
                f"decoder {parameters['decoder'] / 1e6:.2f} M)",
            )
        )
    rows.append(("input", "RGB, normalised with the ImageNet mean/std on 0..255 (`segformer.MEAN`/`STD`)"))
    return ["## Model", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def _palette(config: SegFormerConfig, palette: Any) -> list[tuple[int, int, int]]:
    # The caller's colours (the demo passes its dataset's), else generated ones: this module sits below the data
    # package, so it does not guess a dataset from the class count.
    if palette is not None:
        return [tuple(int(c) for c in colour) for colour in palette]
    from ..imageio import default_palette

    return [tuple(int(c) for c in colour) for colour in default_palette(config.num_classes)]


def _classes_section(config: SegFormerConfig, palette: Any) -> list[str]:
    names: Sequence[str] = config.class_names or [f"class_{i}" for i in range(config.num_classes)]
    colours = _palette(config, palette)
    lines = ["## Classes", "", "| id | name | colour |", "|---|---|---|"]
    for i, name in enumerate(names):
        colour = colours[i] if i < len(colours) else None
        swatch = "#{:02x}{:02x}{:02x}".format(*colour) if colour is not None else "-"
        lines.append(f"| {i} | {_cell(name)} | `{swatch}` |")
    return [*lines, ""]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _training_section(train: Mapping[str, Any], iterations: Any) -> list[str]:
    dataset = train.get("dataset", "?")
    data = "a folder dataset (`images/`, `masks/`)" if dataset == "folder" else DATASET_TITLES.get(dataset, dataset)
    planned = train.get("iters")
    done = f"{iterations} of {planned}" if iterations is not None and iterations != planned else f"{planned}"
    crop, scale = train.get("crop"), train.get("scale")
    rows = [
        ("data", f"{data}, split `{train.get('train_split', 'train')}`"),
        ("iterations", done),
        ("batch", f"{train.get('batch_size')} per process x {train.get('grad_accum', 1)} accumulation"),
        ("crop / scale", f"{_size(crop)} crops of images rescaled to {_size(scale)} x {train.get('ratio_range')}"),
        (
            "optimiser",
            f"AdamW, lr {train.get('lr')}, weight decay {train.get('weight_decay')}, head lr x"
            f"{train.get('head_lr_mult')}",
        ),
        ("schedule", f"linear warmup {train.get('warmup_iters')} iterations, poly power {train.get('power')}"),
        ("encoder init", f"`{train['pretrained']}`" if train.get("pretrained") else "random (from scratch)"),
        ("precision", str(train.get("amp", "none")).replace("none", "fp32")),
        ("seed", str(train.get("seed"))),
    ]
    return [
        "## Training",
        "",
        "Trained with `segformer train` (the run's `config.yaml` holds every setting):",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {_cell(v)} |" for k, v in rows),
        "",
    ]


def _size(value: Any) -> str:
    if not value:
        return "the dataset's default"
    return "x".join(str(v) for v in value)


def _metrics_section(metrics: Mapping[str, Any], evaluated_on: str | None) -> list[str]:
    where = f" on {evaluated_on}" if evaluated_on else ""
    lines = [
        "## Evaluation",
        "",
        f"Last evaluation{where} (single scale, percent):",
        "",
        "| mIoU | aAcc | mAcc | mDice |",
        "|---|---|---|---|",
        f"| {_pct(metrics.get('mIoU'))} | {_pct(metrics.get('aAcc'))} | {_pct(metrics.get('mAcc'))} "
        f"| {_pct(metrics.get('mDice'))} |",
        "",
    ]
    per_class = metrics.get("per_class")
    if isinstance(per_class, Mapping) and per_class:
        lines += ["| class | IoU | Acc |", "|---|---|---|"]
        for name, values in per_class.items():
            lines.append(f"| {_cell(name)} | {_pct(values.get('IoU'))} | {_pct(values.get('Acc'))} |")
        lines.append("")
    return lines


def _protocol_section(protocol: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Test protocol", ""]
    if not protocol:
        return [*lines, "No protocol stored: each image runs whole, at its own size (unless flags say otherwise).", ""]
    mode, scale = protocol.get("mode", "whole"), protocol.get("scale")
    if scale:
        text = f"{mode} inference, images rescaled (keeping the aspect ratio) to fit {scale[0]}x{scale[1]}"
        flags = f"--mode {mode} --scale {scale[0]}x{scale[1]}"
    else:
        text, flags = f"{mode} inference at each image's own size", f"--mode {mode} --scale original"
    if protocol.get("size_divisor"):
        text += f", sides rounded up to a multiple of {protocol['size_divisor']}"
        flags += f" --size-divisor {protocol['size_divisor']}"
    if mode == "slide" and protocol.get("crop"):
        crop, stride = protocol["crop"], protocol.get("stride") or protocol["crop"]
        text += f", windows {_size(crop)} every {_size(stride)}"
        flags += f" --crop {_size(crop)} --stride {_size(stride)}"
    return [
        *lines,
        f"{text}; label maps at the original size. `segformer predict` and `Segmenter` run it by default (stored in "
        "`config.json`); the same with explicit flags:",
        "",
        f"    segformer predict MODEL IMAGES --out OUT {flags}",
        "",
    ]
