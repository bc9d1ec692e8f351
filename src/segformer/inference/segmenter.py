"""`Segmenter`: prepare -> run -> finish for one model or runtime, the one runner behind `predict`, `evaluate`,
video, the app and the export gates.

Inference the way the paper's numbers were measured (mmseg test modes), at the original image size: see
`prepare` (normalise, resize), `run` (whole / slide / TTA around a forward function) and `finish` (the exact
resized argmax, or averaged probabilities).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..constants import MEAN, STD
from ..data.catalog import protocol_for_classes
from ..model.config import SegFormerConfig, channel_stats
from ..protocol import InferenceOptions
from .finish import Finished, average_probabilities, finish
from .prepare import ImageLike, Prepared, normalize_batch, prepare, prepare_normalized, stack_images, to_model_array
from .run import Forward, Pass, compiled_forward, eager_forward, run


def options_for_model(config: SegFormerConfig, **overrides: Any) -> InferenceOptions:
    """The test protocol saved with the model (by `segformer train`), else the paper's when its classes are those of
    a standard dataset (official and hub checkpoints), else each image at its own size; `overrides` that are not
    None replace fields."""
    return InferenceOptions.from_protocol(config.test_protocol or protocol_for_classes(config.class_names), **overrides)


def model_device(model: Any) -> torch.device:
    """Where a model's parameters live (a forward function: its `device`, else the CPU)."""
    if isinstance(model, nn.Module):
        param = next(model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    return torch.device(getattr(model, "device", "cpu"))


class Segmenter:
    """`segmenter(image)` -> (H, W) int64 class ids at the original size, for a path, PIL image or uint8 array
    (multi-band models: a TIFF / .npy path or an (H, W, C) array, normalised with the statistics in the model's
    config).

    >>> seg = Segmenter(load_model("nvidia/segformer-b0-finetuned-ade-512-512"), device="cuda")
    >>> labels = seg("room.jpg")
    >>> seg = Segmenter(model, InferenceOptions.for_dataset(DATASETS["cityscapes"]), flip=True)

    `model` is a `SegFormer` (any nn.Module: run eagerly, under autocast when `options.amp` says; with `compile`,
    through `torch.compile`, or eagerly with a one-line note where compiling cannot work), or any forward function
    (B, C, h, w) -> (B, K, h', w') with a `config` (`export.runtimes`: ONNX Runtime, ExecuTorch). Without
    `options` it runs the model's own test protocol (`options_for_model`): what training stored, or the paper's
    for an official checkpoint of a standard dataset; pass `InferenceOptions()` for each image at its own size.
    """

    def __init__(
        self,
        model: nn.Module | Forward,
        options: InferenceOptions | None = None,
        device: str | torch.device | None = None,
        compile: bool = False,
        **overrides: Any,
    ) -> None:
        config = getattr(model, "config", None)
        if options is None and isinstance(config, SegFormerConfig):
            options = options_for_model(config)
        self.options = InferenceOptions.build(options, **overrides)
        if isinstance(model, nn.Module):
            model = model.eval() if device is None else model.to(device).eval()
            make = compiled_forward if compile else eager_forward
            self.forward = make(model, self.options.amp)
        else:
            if compile:
                raise ValueError("compile applies to PyTorch models; an exported runtime is compiled already")
            self.forward = model
        self.model = model
        self.device = model_device(model)
        self.channels = config.in_channels if isinstance(config, SegFormerConfig) else 3
        self.mean, self.std = channel_stats(config) if isinstance(config, SegFormerConfig) else (MEAN, STD)

    # The three stages, for callers that place them apart (predict's readers and writers, evaluation).
    def prepare(self, images: Sequence[np.ndarray]) -> Prepared:
        """Same-sized arrays (H, W, C) -> the prepared batch on this segmenter's device."""
        return prepare(stack_images(images).to(self.device), self.options, self.mean, self.std)

    def run(self, prepared: Prepared) -> Iterator[Pass]:
        return run(self.forward, prepared)

    def finish(self, passes: Iterable[Pass], prepared: Prepared, probabilities: bool = False) -> Finished:
        return finish(passes, prepared, probabilities)

    def segment(self, prepared: Prepared, probabilities: bool = False) -> Finished:
        """run + finish, without autograd."""
        with torch.inference_mode():
            return self.finish(self.run(prepared), prepared, probabilities)

    def read(self, image: ImageLike) -> np.ndarray:
        """The array this segmenter's model reads from a path, PIL image or array."""
        return to_model_array(image, self.channels)

    def probabilities(self, image: ImageLike) -> Tensor:
        """Softmax probabilities (K, H, W) on the CPU at the original size."""
        scores = self.segment(self.prepare([self.read(image)]), probabilities=True).probabilities
        assert scores is not None
        return scores[0].cpu().clone()  # clone: not an inference-mode tensor

    def __call__(self, image: ImageLike) -> np.ndarray:
        return self.predict_arrays([self.read(image)])[0]

    def predict_arrays(self, images: Sequence[np.ndarray], softmax: bool = False) -> list[Any]:
        """Label maps (or, with `softmax`, (labels, probabilities) pairs) for RGB uint8 arrays (multi-band
        models: (H, W, C) arrays); images of the same size go through the model together."""
        out: list[Any] = [None] * len(images)
        groups = iter_same_size(range(len(images)), lambda i: images[i].shape, self.options.batch_size)
        for group in groups:
            result = self.segment(self.prepare([images[i] for i in group]), probabilities=softmax)
            labels = result.labels.cpu().numpy().astype(np.int64, copy=False)
            for k, i in enumerate(group):
                scores = result.probabilities
                out[i] = (labels[k], scores[k].cpu()) if scores is not None else labels[k]
        return out


def iter_same_size(items: Iterable[Any], size_of: Any, limit: int) -> Iterable[list[Any]]:
    """Consecutive items grouped into lists of at most `limit` sharing `size_of(item)` (for batching)."""
    group: list[Any] = []
    for item in items:
        if group and (len(group) >= limit or size_of(item) != size_of(group[0])):
            yield group
            group = []
        group.append(item)
    if group:
        yield group


def predict_batch(model: nn.Module, x: Tensor, options: InferenceOptions, softmax: bool = True) -> Tensor:
    """(B, K, H, W) at the size of the normalised batch x (B, C, H, W): softmax probabilities (averaged over
    the TTA passes), or, with `softmax=False` and a single pass, the resized logits (same argmax, cheaper).
    The caller puts the model in eval mode (dropout and BatchNorm statistics)."""
    prepared = prepare_normalized(x, options)
    with torch.inference_mode():
        passes = run(eager_forward(model, options.amp), prepared)
        return average_probabilities(passes, prepared.image_size, options.passes, softmax)


def predict_labels(model: nn.Module, x: Tensor, options: InferenceOptions) -> Tensor:
    """(B, H, W) int64 class ids at the size of the normalised batch x (`finish`: no full-size scores for one
    pass)."""
    prepared = prepare_normalized(x, options)
    with torch.inference_mode():
        return finish(run(eager_forward(model, options.amp), prepared), prepared).labels


def predict_logits(
    model: nn.Module, image: ImageLike, options: InferenceOptions | None = None, **overrides: Any
) -> Tensor:
    """Softmax probabilities (K, H, W) at the original image size, on the model's device.

    `image` is a path, PIL image, uint8 (H, W, 3) array (a multi-band model: (H, W, C) array or TIFF / .npy
    path), or an already normalised float tensor (C, H, W). The model is put in eval mode. `options`/`overrides`
    as `InferenceOptions.build`; the argmax over K is the label map.
    """
    options = InferenceOptions.build(options, **overrides)
    model.eval()
    device = model_device(model)
    if isinstance(image, Tensor) and image.is_floating_point() and image.ndim == 3:
        x = image.to(device).unsqueeze(0)
    else:
        config = model.config
        array = to_model_array(image, config.in_channels)
        x = normalize_batch(stack_images([array]).to(device), *channel_stats(config))
    return predict_batch(model, x, options)[0].clone()  # a normal tensor: inference-mode ones refuse in-place ops
