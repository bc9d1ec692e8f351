import json
import os
from pathlib import Path

import pytest
import torch

from segformer import create_model
from segformer.runtime import import_torchvision

# torchvision (from timm, the pretrain extra) beside this CPU torch fails to import unless imported through this, and
# transformers' image processors import it: first here, before any test imports transformers.
import_torchvision()

# Reproducible and bounded: CI has 2 cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# The tiny models of the tests, defined here only. TINY: a fast stand-in for B0 (create_model("b0", **TINY)).
# TINY_TRAIN: narrower still, the model `segformer train` tests train in seconds (`tiny_model_file`).
TINY = {"embed_dims": (8, 16, 40, 64), "depths": (1, 1, 1, 1), "decoder_dim": 32}
TINY_TRAIN = {"embed_dims": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 2), "decoder_dim": 16}
NAMES = ("sky", "road", "car")


def save_tiny(folder: Path, seed: int = 0) -> Path:
    """A tiny 3-class B0 (`TINY`, classes `NAMES`) with weights from `seed`, saved in `folder`."""
    torch.manual_seed(seed)
    create_model("b0", num_classes=3, class_names=NAMES, **TINY).save_pretrained(folder)
    return folder


def write_scenes(root: Path, count: int, size: int = 64, seed: int = 0) -> Path:
    """A labelled folder dataset of `count` synthetic scenes (`data.synth.render_scene`, size x size):
    ROOT/images/val/NN.png, ROOT/masks/val/NN.png and ROOT/classes.txt."""
    import numpy as np
    from PIL import Image

    from segformer.data.synth import CLASS_NAMES, render_scene

    rng = np.random.default_rng(seed)
    for sub in ("images/val", "masks/val"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    for i in range(count):
        image, mask = render_scene(rng, size)
        Image.fromarray(image).save(root / "images" / "val" / f"{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / "val" / f"{i:02d}.png")
    return root


def tiny_model_file(path: Path, dropout: float = 0.0) -> Path:
    """`TINY_TRAIN` as a model JSON for `segformer train --model`, drop-path and dropout at `dropout`."""
    path.write_text(json.dumps({**TINY_TRAIN, "drop_path_rate": dropout, "classifier_dropout": dropout}))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """`save_tiny` once per test module; modules may define their own."""
    return save_tiny(tmp_path_factory.mktemp("weights"))
