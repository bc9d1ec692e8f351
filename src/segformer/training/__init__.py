"""Training: the paper's recipe (AdamW, head lr x10, warmup + poly), a short schedule for small budgets, exact resume,
DDP under torchrun."""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import PRESETS, SCHEDULES, TrainConfig
from .loop import TrainResult, train, train_step
from .losses import LOSSES, build_loss, segmentation_loss
from .optim import build_optimizer, build_scheduler, lr_factor, param_groups

__all__ = [
    "LOSSES",
    "PRESETS",
    "SCHEDULES",
    "TrainConfig",
    "TrainResult",
    "build_loss",
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
