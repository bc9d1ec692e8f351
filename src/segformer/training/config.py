"""Training configuration: one flat frozen dataclass, the paper's recipes as presets, YAML in and out.

Flat on purpose: every field is one CLI flag (`--field-name`) and one YAML key, so a run is fully described by the
`config.yaml` it writes next to its checkpoints.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..constants import AMP_DTYPES
from ..fileio import write_text
from ..runtime import cores_per_process

# The paper's recipe (section 4.1 and the released configs; segformer-facts.md 1.6). The shared part (AdamW 6e-5,
# wd 0.01, head lr x10, warmup 1500 from 1e-6, poly 1.0 to 0) is the TrainConfig default; presets hold the rest.
# batch_size is per process: the paper's global batch on one GPU; with N GPUs pass --batch-size 16/N (see README).
PRESETS: dict[str, dict[str, Any]] = {
    "ade20k": {"iters": 160_000, "batch_size": 16, "crop": (512, 512), "scale": (2048, 512)},
    "cityscapes": {"iters": 160_000, "batch_size": 8, "crop": (1024, 1024), "scale": (2048, 1024)},
    "coco-stuff": {"iters": 80_000, "batch_size": 16, "crop": (512, 512), "scale": (2048, 512)},
    # Not in the paper: the usual mmseg VOC-aug schedule with the SegFormer optimiser.
    "voc": {"iters": 40_000, "batch_size": 16, "crop": (512, 512), "scale": (2048, 512)},
}

# Schedules for budgets other than the paper's (`--schedule NAME`): TrainConfig fields laid over the dataset's preset,
# under a config file and flags. "short": a few hundred to a few thousand iterations on a small dataset, where the
# paper's recipe (tuned for 160k iterations from ImageNet weights) loses to a plain loop. Measured at 1000 iterations
# from scratch (BENCHMARKS.md, "Short runs"; benchmarks/short_runs.py): the scale jitter 0.5-2.0 costs the most,
# then the 1500-iteration warmup (longer than the run) and the photometric distortion; the head's lr x10 helps, so it
# stays. Crops, flips, cat_max_ratio, the optimiser and the poly decay are the paper's.
SCHEDULES: dict[str, dict[str, Any]] = {
    "short": {"ratio_range": (1.0, 1.0), "photometric": False, "warmup_iters": 0, "head_lr_mult": 10.0},
}


# Default DataLoader workers per training process: at most this many (see `default_num_workers`).
MAX_DEFAULT_WORKERS = 8


def default_num_workers() -> int:
    """DataLoader workers for one training process: the cores this process may run on, shared by the training
    processes of this machine (LOCAL_WORLD_SIZE under torchrun), less one for the process itself; at most 8.

    `benchmarks/data_throughput.py` measures what one worker delivers (README: how many a GPU needs)."""
    return max(0, min(MAX_DEFAULT_WORKERS, cores_per_process() - 1))


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. `None` for num_classes/crop/scale means "from the dataset"."""

    model: str = "b0"  # variant b0..b5, or a SegFormerConfig .json/.yaml file (custom architectures)
    dataset: str = "ade20k"  # a name in segformer.data.DATASETS, "folder", "hf" (Hugging Face datasets) or "raster"
    data_root: str | None = None
    # How mask values become class ids (segformer.data.labels.LabelConvention; stored with the saved model).
    ignore_index: int = 255
    reduce_zero_label: bool = False
    label_map: str | None = None  # "A:B,C:D"
    palette: str | None = None  # CSV file, name,r,g,b per class, for colour masks
    image_column: str | None = None  # --dataset hf: column names when not the usual ones
    mask_column: str | None = None
    out: str = "runs/segformer"
    pretrained: str | None = None  # encoder weights: file, folder or hub id (e.g. nvidia/mit-b0)
    # Load what fits of a pretrained encoder of other FFN widths (PVTv2-B0..B4 into the released B0..B4)
    pretrained_partial: bool = False
    num_classes: int | None = None
    train_split: str = "train"
    val_split: str = "val"
    iters: int = 160_000
    batch_size: int = 16  # per process; global batch = batch_size * world_size * grad_accum
    global_batch: int | None = None  # keep this global batch for any number of processes (grad_accum adapts)
    crop: tuple[int, int] | None = None  # (H, W)
    scale: tuple[int, int] | None = None  # mmseg img_scale (long side, short side)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    drop_path_rate: float | None = None  # None = the model's (0.1)
    classifier_dropout: float | None = None  # None = the model's (0.1)
    lr: float = 6e-5
    weight_decay: float = 0.01
    head_lr_mult: float = 10.0
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 1.0
    min_lr: float = 0.0
    num_workers: int | None = None  # DataLoader workers per process; None = follow the cores (default_num_workers)
    amp: str = "none"
    grad_accum: int = 1
    clip_grad: float | None = None
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the training forward (eagerly, with a note, where it cannot compile)
    eval_every: int = 16_000  # 0 = no periodic evaluation (the final one still runs when a val split exists)
    eval_max_samples: int | None = None
    save_every: int = 2000
    log_every: int = 50
    seed: int = 0
    schedule: str | None = None  # a name in SCHEDULES; from_preset/from_dict (CLI, YAML) fill in its settings
    deterministic: bool = False
    skip_bad_samples: bool = False
    tensorboard: bool = False
    device: str = "auto"
    resume: bool = False
    # Loss (segformer.training.losses): NAME[:WEIGHT] terms, names ce, ohem, dice, focal, lovasz.
    loss: str = "ce"
    class_weights: str | None = None  # auto | w1,w2,... | FILE; numbers once training has resolved them
    avg_non_ignore: bool = True  # mmseg's CE averaging: over labelled pixels (True) or all pixels (False)
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100_000  # per image (mmseg)
    # Input channels; mean/std per channel on the raw pixel values (None: ImageNet's for 3 channels, else computed).
    in_channels: int = 3
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # Frozen parameters stay out of the optimiser (and the saved model stays complete).
    freeze_encoder: bool = False
    freeze_stages: int = 0  # the first K encoder stages (patch embedding, blocks, norm)

    def __post_init__(self) -> None:
        from .losses import format_loss_spec, parse_class_weights, parse_loss_spec

        try:
            object.__setattr__(self, "loss", format_loss_spec(parse_loss_spec(self.loss)))
            if self.class_weights is not None:
                weights = parse_class_weights(self.class_weights)
                if isinstance(weights, tuple):  # canonical text of the numbers
                    object.__setattr__(self, "class_weights", ",".join(repr(w) for w in weights))
        except ValueError as e:
            raise ValueError(f"train config: {e}") from None
        if not 0.0 < self.ohem_thresh <= 1.0 or self.ohem_min_kept < 1:
            raise ValueError(
                f"train config: ohem_thresh={self.ohem_thresh} must be in (0, 1] and ohem_min_kept="
                f"{self.ohem_min_kept} >= 1"
            )
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValueError(f"train config: schedule={self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.in_channels < 1 or self.freeze_stages < 0:
            raise ValueError(
                f"train config: in_channels={self.in_channels} must be >= 1, freeze_stages={self.freeze_stages} >= 0"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.in_channels:
                raise ValueError(
                    f"train config: {name} has {len(value)} values but in_channels={self.in_channels}; "
                    "give one per channel"
                )
        if (self.mean is None) != (self.std is None):
            raise ValueError(
                "train config: give both mean and std (or neither: ImageNet's for 3 channels, else computed)"
            )
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"train config: std={list(self.std)} must be > 0 for every channel")
        positive = ("iters", "batch_size", "grad_accum", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"train config: {name}={getattr(self, name)} must be >= 1")
        for name in ("warmup_iters", "eval_every", "save_every", "num_workers", "seed"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"train config: {name}={getattr(self, name)} must be >= 0")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"train config: amp={self.amp!r}; choose one of {', '.join(AMP_DTYPES)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.head_lr_mult <= 0 or self.min_lr < 0:
            raise ValueError("train config: lr and head_lr_mult must be > 0, weight_decay and min_lr >= 0")
        if not 0 < self.warmup_ratio <= 1:
            raise ValueError(f"train config: warmup_ratio={self.warmup_ratio} must be in (0, 1]")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"train config: clip_grad={self.clip_grad} must be > 0 (or None for no clipping)")
        for name in ("crop", "scale"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or min(value) < 1):
                raise ValueError(f"train config: {name}={value} must be two positive ints")
        if len(self.ratio_range) != 2 or not 0 < self.ratio_range[0] <= self.ratio_range[1]:
            raise ValueError(f"train config: ratio_range={self.ratio_range} must be (low, high) with 0 < low <= high")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"train config: num_classes={self.num_classes} must be >= 1")
        if self.global_batch is not None and self.global_batch < 1:
            raise ValueError(f"train config: global_batch={self.global_batch} must be >= 1")
        if self.eval_max_samples is not None and self.eval_max_samples < 1:
            raise ValueError(f"train config: eval_max_samples={self.eval_max_samples} must be >= 1")
        if not 0 <= self.ignore_index <= 255:
            raise ValueError(f"train config: ignore_index={self.ignore_index} is outside 0..255 (masks are 8-bit)")
        if self.label_map is not None:
            from ..data.labels import parse_label_map

            parse_label_map(self.label_map)  # a malformed map fails here, before anything is read or written

    def data_options(self) -> dict[str, Any]:
        """The `build_dataset` keywords of the label and column fields (labels: a LabelConvention)."""
        from ..data.labels import LabelConvention

        labels = LabelConvention.from_options(
            ignore_index=self.ignore_index,
            reduce_zero_label=self.reduce_zero_label,
            label_map=self.label_map,
            palette=self.palette,
        )
        return {"labels": labels, "image_column": self.image_column, "mask_column": self.mask_column}

    @classmethod
    def from_preset(cls, dataset: str, /, **overrides: Any) -> TrainConfig:
        """The paper recipe for `dataset` (ade20k, cityscapes, coco-stuff, voc; anything else: defaults), with the
        settings of `overrides["schedule"]` (a name in SCHEDULES) over it and the other `overrides` over both.

        `overrides` may also name `dataset` (the same one) when they come from a merged config dict."""
        schedule = _schedule_settings(overrides.get("schedule"))
        return cls.from_dict({**PRESETS.get(dataset, {}), **schedule, "dataset": dataset, **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "train config") -> TrainConfig:
        """Build from plain values (YAML/JSON), converting lists to tuples and checking names and types; the
        settings of a `schedule` named in `data` fill in the fields `data` leaves out."""
        data = {**_schedule_settings(data.get("schedule")), **data}
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(f"{source}: unknown field {key!r}; known fields: {', '.join(sorted(known))}")
            if name == "class_weights" and isinstance(value, list):  # YAML lists of weights
                value = ",".join(str(v) for v in value)
            values[name] = _coerce(value, hints[name], f"{source}: {key}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain python values only (tuples as lists): safe for YAML, JSON and `torch.load(weights_only=True)`."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def save_yaml(self, path: str | Path) -> None:
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _schedule_settings(name: Any) -> dict[str, Any]:
    """The fields `--schedule name` sets ({} for None; an unknown name is refused by TrainConfig itself)."""
    return SCHEDULES.get(name, {}) if isinstance(name, str) else {}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file (keys are TrainConfig fields; '-' or '_' both accepted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must hold a mapping of TrainConfig fields, found {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = [k for k in data if str(k).replace("-", "_") not in known]
    if unknown:
        raise ValueError(f"{path}: unknown field {unknown[0]!r}; known fields: {', '.join(sorted(known))}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` checked against a field's type hint; lists become tuples, ints become floats where needed."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}={value!r} must be a list of numbers")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[float, ...]: any length
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ValueError(f"{where}={value!r} must have {len(args)} entries")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}={value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"{where}={value!r} must be an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "6e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}={value!r} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}={value!r} must be a string")
        return value
    return value
