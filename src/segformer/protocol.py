"""The test protocol: how a model is run on one image (mmseg's test_cfg plus TTA), as one frozen settings type.

`InferenceOptions` is stored in a saved model's config (what `segformer train` used), in the dataset catalog (the
paper's settings per dataset) and passed to every runner (`Segmenter`, `evaluate`, `predict_files`, video, the
app, the export gates). A new test mode is a row of `MODES` and a branch of `inference.run`; nothing else checks
mode names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

from .runtime import check_amp

# The test modes, each with what it needs: whole = resize to the test scale and run once; slide = crop-sized
# windows every stride pixels, averaged where they overlap (mmseg `slide_inference`).
MODES: dict[str, str] = {
    "whole": "resize the image to the test scale and run the model once",
    "slide": "run crop-sized windows every stride pixels and average their logits where they overlap",
}
# Fields that say how the model is meant to be run (stored with a model or dataset); batch_size and amp are how
# this machine runs it.
PROTOCOL_FIELDS = ("mode", "scale", "crop", "stride", "size_divisor", "scales", "flip")


@dataclass(frozen=True)
class InferenceOptions:
    """How to run the model on one image: mode "whole" or "slide", test scale, windows and TTA.

    `scale` is mmseg's img_scale (long side, short side) of a keep-ratio resize; None runs each image at its own
    size. `crop`/`stride` are the slide windows (H, W). `scales` are TTA ratios of the test scale and `flip` adds
    the horizontally flipped image; softmax probabilities are averaged over the passes. `size_divisor` rounds the
    resized sides up (the official ADE20K AlignedResize: 32). Build one with `InferenceOptions.build(options,
    **overrides)`, `for_dataset(info)` or `segformer.inference.options_for_model(config)`.
    """

    mode: str = "whole"
    scale: tuple[int, int] | None = None  # mmseg img_scale (long, short); None = the image's own size
    crop: tuple[int, int] | None = None  # slide window (H, W)
    stride: tuple[int, int] | None = None  # slide step (H, W)
    scales: tuple[float, ...] | None = None  # TTA ratios; None = (1.0,)
    flip: bool = False  # also run on the horizontally flipped image and average
    size_divisor: int | None = None  # round resized sides up to a multiple (official ADE20K: 32)
    batch_size: int = 8  # images (whole) or windows (slide) per forward pass
    amp: str = "none"  # "bf16" / "fp16": run the model under autocast (logits are averaged in float32)

    __test__ = False  # not a pytest test class (the TestProtocol alias is collected by name)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _pair(self.scale, "scale"))
        object.__setattr__(self, "crop", _pair(self.crop, "crop"))
        object.__setattr__(self, "stride", _pair(self.stride, "stride"))
        if self.scales is not None:
            object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {', '.join(map(repr, MODES))}")
        if self.mode == "slide":
            if self.crop is None:
                raise ValueError("slide mode needs a crop size (e.g. crop=(1024, 1024), stride=(768, 768))")
            stride = self.stride or self.crop
            if min(self.crop) < 1 or min(stride) < 1 or stride[0] > self.crop[0] or stride[1] > self.crop[1]:
                raise ValueError(
                    f"slide stride {stride} must be between 1 and the crop {self.crop}, or windows leave gaps"
                )
            object.__setattr__(self, "stride", stride)
        if self.scales is not None and (not self.scales or min(self.scales) <= 0):
            raise ValueError(f"TTA scales {self.scales} must be positive ratios such as 0.75 1.0 1.25")
        if self.size_divisor is not None and self.size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {self.size_divisor}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        check_amp(self.amp)

    @property
    def passes(self) -> int:
        """Forward passes averaged per image (1 without TTA)."""
        return len(self.scales or (1.0,)) * (2 if self.flip else 1)

    @property
    def ratios(self) -> tuple[float, ...]:
        """The TTA ratios of the test scale (1.0 without TTA)."""
        return self.scales or (1.0,)

    def replace(self, **changes: Any) -> InferenceOptions:
        return replace(self, **changes)

    @classmethod
    def build(cls, options: InferenceOptions | None = None, **overrides: Any) -> InferenceOptions:
        """`options` (default: whole image at its own size) with the given fields replaced (validated again)."""
        options = options or cls()
        return options.replace(**overrides) if overrides else options

    @classmethod
    def from_protocol(cls, protocol: InferenceOptions | None, **overrides: Any) -> InferenceOptions:
        """A stored protocol (None: each image at its own size) with the overrides that are not None, so flags that
        were not given keep the protocol's values."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return (protocol or cls()).replace(**given) if given else protocol or cls()

    @classmethod
    def for_dataset(cls, info: Any, tta: bool = False, **overrides: Any) -> InferenceOptions:
        """The paper's test settings of a `segformer.data.DatasetInfo` (scale, mode, window; TTA ratios + flip).
        The official ADE20K pipeline is AlignedResize (sides rounded up to multiples of 32), worth ~0.5-1 mIoU."""
        if tta:
            overrides = {"scales": tuple(info.tta_scales), "flip": True, **overrides}
        return cls.from_protocol(info.test, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """The protocol fields, JSON-ready (what config.json and model cards store); TTA fields only when set."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        out = {k: out[k] for k in PROTOCOL_FIELDS}
        if self.scales is None:
            del out["scales"]
        if not self.flip:
            del out["flip"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | InferenceOptions | None) -> InferenceOptions | None:
        if data is None or isinstance(data, InferenceOptions):
            return data
        return cls(**data)


def _pair(value: Any, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {value}")
    return value  # type: ignore[return-value]
