"""Test-time inference as one spine of three stages, which every runtime and test mode plugs into:

    prepared = prepare(images, options, mean, std)      # prepare.py: normalise, resize; sizes kept
    passes = run(forward, prepared)                     # run.py: whole / slide / TTA around any forward function
    result = finish(passes, prepared)                   # finish.py: exact resized argmax, or probabilities

`Segmenter` composes them for one model or runtime; `predict_files` (files.py) places prepare in its reader
processes and finish in its writers; `predict_video` (video.py), `evaluate`, the app and the export gates all go
through `Segmenter`. The settings are one `InferenceOptions` (`segformer.protocol`).
"""

from ..protocol import MODES, InferenceOptions
from .files import OutputStyle, PredictSummary, collect_images, default_num_workers, plan_outputs, predict_files
from .finish import Finished, argmax_resized, average_probabilities, finish
from .prepare import (
    ImageLike,
    Prepared,
    normalize_batch,
    prepare,
    prepare_normalized,
    resize,
    resized_size,
    stack_images,
    to_model_array,
    to_rgb_array,
)
from .run import Forward, Pass, compiled_forward, eager_forward, run, slide_windows
from .segmenter import (
    Segmenter,
    iter_same_size,
    model_device,
    options_for_model,
    predict_batch,
    predict_labels,
    predict_logits,
)

__all__ = [
    "MODES",
    "Finished",
    "Forward",
    "ImageLike",
    "InferenceOptions",
    "OutputStyle",
    "Pass",
    "PredictSummary",
    "Prepared",
    "Segmenter",
    "argmax_resized",
    "average_probabilities",
    "collect_images",
    "compiled_forward",
    "default_num_workers",
    "eager_forward",
    "finish",
    "iter_same_size",
    "model_device",
    "normalize_batch",
    "options_for_model",
    "plan_outputs",
    "predict_batch",
    "predict_files",
    "predict_labels",
    "predict_logits",
    "prepare",
    "prepare_normalized",
    "resize",
    "resized_size",
    "run",
    "slide_windows",
    "stack_images",
    "to_model_array",
    "to_rgb_array",
]
