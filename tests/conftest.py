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


TINY = {"embed_dims": (8, 16, 40, 64), "depths": (1, 1, 1, 1), "decoder_dim": 32}  # a fast stand-in for B0
NAMES = ("sky", "road", "car")


def save_tiny(folder: Path, seed: int = 0) -> Path:
    """A tiny 3-class B0 (`TINY`, classes `NAMES`) with weights from `seed`, saved in `folder`."""
    torch.manual_seed(seed)
    create_model("b0", num_classes=3, class_names=NAMES, **TINY).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """`save_tiny` once per test module; modules may define their own."""
    return save_tiny(tmp_path_factory.mktemp("weights"))
