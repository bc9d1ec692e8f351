"""Training: the paper's recipe (AdamW, head lr x10, warmup + poly), exact resume, DDP under torchrun."""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import PRESETS, TrainConfig
from .loop import TrainResult, train, train_step
from .losses import segmentation_loss
from .optim import build_optimizer, build_scheduler, lr_factor, param_groups

__all__ = [
    "PRESETS",
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "build_scheduler",
    "load_checkpoint",
    "lr_factor",
    "param_groups",
    "save_checkpoint",
    "segmentation_loss",
    "train",
    "train_step",
]
