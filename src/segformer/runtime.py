"""Where and in what precision a model runs: one device resolver and one table of autocast modes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from .constants import AMP_DTYPES


def check_amp(amp: str, what: str = "amp") -> str:
    """`amp` itself when it names a mode of AMP_DTYPES, else a one-line ValueError listing them."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"{what}={amp!r} is not one of {', '.join(AMP_DTYPES)}")
    return amp


@contextlib.contextmanager
def autocast(device: torch.device | str, amp: str) -> Iterator[None]:
    """`torch.autocast` at the dtype of `amp`; a no-op for "none" (no autocast region is entered at all)."""
    dtype = AMP_DTYPES[check_amp(amp)]
    if dtype is None:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype)):
        yield


def resolve_device(name: str | torch.device) -> torch.device:
    """'auto' -> this process's GPU if there is one, else the CPU; a bare 'cuda' -> the GPU of LOCAL_RANK (torchrun).

    A CUDA device asked for on a machine without one is a one-line error, not a crash deep inside the model.
    """
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} asked for, but no CUDA GPU is available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return device


def cores_per_process() -> int:
    """The cores this process may run on, shared with the other torchrun processes of its machine
    (LOCAL_WORLD_SIZE); 0 when there are more such processes than cores. Worker counts are derived from it."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1) or 1))


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process in torch.distributed's default group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def import_torchvision():  # -> the torchvision module, or None when it is not installed
    """torchvision, imported so that it works beside a CPU-only torch.

    PyPI's torchvision wheels are CUDA builds. Beside a CPU-only torch (the +cpu wheel) their compiled ops cannot
    load, which torchvision tolerates except in one place: torchvision 0.28 registers fake kernels for
    `torchvision::nms` and `::qnms` without checking that its ops loaded, and the import fails ("operator
    torchvision::nms does not exist"), and so does every import of timm or of transformers' image processors after
    it. Then each such operator's schema is declared (no kernel: it stays unavailable) and the import retried; the
    Python parts (transforms, feature extraction) are all that timm and transformers use here.
    """
    import importlib.util
    import re
    import sys

    if importlib.util.find_spec("torchvision") is None:
        return None
    declared: set[str] = set()
    while True:
        try:
            import torchvision

            return torchvision
        except RuntimeError as e:
            missing = re.search(r"operator torchvision::(\w+) does not exist", str(e))
            if missing is None or missing[1] in declared:
                raise
            for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
                del sys.modules[name]  # the failed, half-run import
            declared.add(missing[1])
            schema = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
            torch.library.define(f"torchvision::{missing[1]}", schema)


def import_timm():  # -> the timm module
    """timm (the `pretrain` extra; see `import_torchvision`), or a one-line ImportError saying how to install it."""
    try:
        import_torchvision()
        import timm
    except ImportError as e:
        raise ImportError(f"this needs timm and torchvision: pip install 'segformer[pretrain]' ({e})") from None
    return timm


def compile_unavailable(device: torch.device | str) -> str | None:
    """Why `torch.compile` cannot compile for `device` here (None when it can): its CPU backend needs a C++
    compiler, its CUDA backend Triton. Checked up front so that a run falls back in one line, not a traceback."""
    import shutil

    kind = torch.device(device).type
    if kind == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed (pip install triton)"
    if kind == "cpu":
        compiler = os.environ.get("CXX", "g++")
        return None if shutil.which(compiler) else f"no C++ compiler ({compiler}) for its CPU backend"
    return f"no torch.compile backend for {kind} here"
