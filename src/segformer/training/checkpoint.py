"""Training checkpoints: everything needed to continue a run exactly, written so a crash never corrupts one.

The file is a plain dict of tensors and python values (loads with `torch.load(weights_only=True)`); its "model"
and "config" keys make it loadable by `segformer.load_model(RUN_DIR / "last.pt")` as well.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..fileio import atomic_write
from .config import TrainConfig

log = logging.getLogger("segformer")

CHECKPOINT_NAME = "last.pt"
PREVIOUS_NAME = "previous.pt"


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's torch RNG state(s) as tensors (numpy/python RNGs are not used by the training loop)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _save_synced(obj: Any, name: str) -> None:
    """torch.save into `name`, flushed and fsynced: whole on disk before anything is renamed."""
    with open(name, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep_previous: bool = True) -> Path:
    """Write RUN_DIR/last.pt atomically; the one it replaces becomes previous.pt (a second chance).

    The new file is complete on disk before any rename, so a kill at any moment leaves last.pt or previous.pt
    (or both) whole; `find_resume_checkpoint` picks the newest present.
    """
    path = run_dir / CHECKPOINT_NAME

    def write(tmp: str) -> None:
        _save_synced(state, tmp)
        if keep_previous and path.exists():
            os.replace(path, run_dir / PREVIOUS_NAME)  # then atomic_write renames the new file into place

    atomic_write(path, write)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, refusing pickled objects; one clear line if the file is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RuntimeError(
            f"{path}: refused to load: holds pickled Python objects, not a segformer training checkpoint ({e})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeError(
            f"{path}: unreadable or truncated checkpoint ({first}); delete it to fall back to {PREVIOUS_NAME}"
        ) from None
    required = ("model", "optimizer", "scheduler", "iteration", "rng", "train_config")
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise RuntimeError(f"{path}: not a segformer training checkpoint (needs keys {', '.join(required)})")
    return state


def find_resume_checkpoint(run_dir: Path) -> Path | None:
    """last.pt if it is readable, else previous.pt (a kill during the rename window), else None."""
    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
        path = run_dir / name
        if path.is_file():
            return path
    return None


def check_compatible(path: Path, saved: dict[str, Any], config: TrainConfig) -> None:
    """Refuse to resume a checkpoint into a different model or data setup (the weights would not fit anyway)."""
    for key in ("model", "dataset", "num_classes", "batch_size", "grad_accum", "seed"):
        if key in saved and saved[key] != config.to_dict()[key]:
            raise ValueError(
                f"{path}: was written with {key}={saved[key]!r} but this run has {key}={config.to_dict()[key]!r}; "
                "resume with the same settings (RUN_DIR/config.yaml) or start a new --out"
            )
    if saved.get("iters", config.iters) != config.iters:
        log.warning(
            "%s: iters changed from %s to %d: the poly schedule is recomputed", path, saved["iters"], config.iters
        )
