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
    except pickle.UnpicklingError:
        raise RuntimeError(
            f"{path}: refused to load: not a segformer training checkpoint (it holds pickled Python objects, or is "
            "no torch file at all)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__
        raise RuntimeError(f"{path}: unreadable or truncated checkpoint ({first})") from None
    required = ("model", "optimizer", "scheduler", "iteration", "rng", "train_config")
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise RuntimeError(f"{path}: not a segformer training checkpoint (needs keys {', '.join(required)})")
    return state


def find_resume_checkpoint(run_dir: Path) -> Path | None:
    """last.pt if present, else previous.pt (a kill during the rename window), else None (no look inside)."""
    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
        path = run_dir / name
        if path.is_file():
            return path
    return None


def load_resume_checkpoint(run_dir: Path, warn: bool = True) -> tuple[Path, dict[str, Any]]:
    """The newest readable checkpoint of a run: last.pt, or previous.pt (with a warning naming both) when last.pt
    is missing, truncated or otherwise unreadable. Both broken (or absent): one RuntimeError line naming both."""
    last, previous = run_dir / CHECKPOINT_NAME, run_dir / PREVIOUS_NAME
    try:
        return last, load_checkpoint(last)
    except (RuntimeError, FileNotFoundError) as e:
        first_error = e
    try:
        state = load_checkpoint(previous)
    except (RuntimeError, FileNotFoundError) as e:
        raise RuntimeError(
            f"cannot resume {run_dir}: {_reason(first_error)}; and {_reason(e)}. Start a new --out, or drop --resume"
        ) from None
    if warn and last.exists():
        log.warning(
            "%s: %s; falling back to %s (iteration %d)", last, _reason(first_error, last), previous, state["iteration"]
        )
    return previous, state


def _reason(error: Exception, path: Path | None = None) -> str:
    """An error of load_checkpoint as a clause (without the path when `path` is given)."""
    text = str(error.args[0] if error.args else error)
    if path is not None and text.startswith(f"{path}: "):
        text = text[len(f"{path}: ") :]
    return text


def global_batch(train_config: dict[str, Any], processes: int) -> int:
    """The global batch a checkpoint was trained with (older checkpoints do not store it: their product)."""
    return int(train_config["batch_size"]) * int(train_config["grad_accum"]) * processes


def check_compatible(
    path: Path, saved: dict[str, Any], config: TrainConfig, saved_global: int, new_global: int
) -> None:
    """Refuse to resume a checkpoint into a different model, data or batch setup (the weights would not fit, or the
    run would silently become another one). The number of processes may change: the global batch may not."""
    keys = ("model", "dataset", "num_classes", "batch_size", "seed", "in_channels")
    for key in (*keys, "freeze_encoder", "freeze_stages"):  # the optimiser state only fits the same frozen set
        if key in saved and saved[key] != config.to_dict()[key]:
            raise ValueError(
                f"{path}: was written with {key}={saved[key]!r} but this run has {key}={config.to_dict()[key]!r}; "
                "resume with the same settings (RUN_DIR/config.yaml) or start a new --out"
            )
    if saved_global != new_global:
        raise ValueError(
            f"{path}: was trained with a global batch of {saved_global} but this run asks for {new_global}; "
            f"resume with --global-batch {saved_global} (gradient accumulation adapts to the number of processes) "
            "or start a new --out"
        )
    if saved.get("iters", config.iters) != config.iters:
        log.warning(
            "%s: iters changed from %s to %d: the poly schedule is recomputed", path, saved["iters"], config.iters
        )
