"""Training checkpoints: everything needed to continue a run exactly, written so a crash never corrupts one.

The file is a plain dict of tensors and python values (loads with `torch.load(weights_only=True)`); its "model"
and "config" keys make it loadable by `segformer.load_model(RUN_DIR / "last.pt")` as well.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

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


def _write_temp(obj: Any, path: Path) -> str:
    """torch.save into a synced temp file next to `path`; returns its name."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over `path` (atomic on POSIX)."""
    tmp = _write_temp(obj, path)
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep_previous: bool = True) -> Path:
    """Write RUN_DIR/last.pt atomically; the one it replaces becomes previous.pt (a second chance).

    The new file is complete on disk before any rename, so a kill at any moment leaves last.pt or previous.pt
    (or both) whole; `find_resume_checkpoint` picks the newest present.
    """
    path = run_dir / CHECKPOINT_NAME
    tmp = _write_temp(state, path)
    if keep_previous and path.exists():
        os.replace(path, run_dir / PREVIOUS_NAME)
    os.replace(tmp, path)
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
