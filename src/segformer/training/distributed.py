"""torch.distributed plumbing for `torchrun`: env:// initialisation, rank helpers, and a batch norm that syncs.

Nothing is monkeypatched: code that writes files or prints asks `is_main()`.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


def launched_by_torchrun() -> bool:
    """True when torchrun (or any env:// launcher) set WORLD_SIZE/RANK for this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device) -> bool:
    """Join the process group described by torchrun's environment (NCCL on CUDA, gloo on CPU).

    Returns True when this call initialised it (the caller then tears it down with `cleanup`).
    """
    if dist.is_available() and dist.is_initialized():
        return False
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) < 2:
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method="env://", timeout=timedelta(minutes=30))
    return True


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """Only rank 0 writes files, logs and shows progress."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: object) -> object:
    """Rank 0's `obj` on every rank (used for decisions such as 'stop now')."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: object) -> list[object]:
    """Every rank's `obj`, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward sums the gradients too (every rank's loss depends on every input)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x: Tensor) -> Tensor:
    return _AllReduceSum.apply(x)


class CrossProcessBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the whole global batch, on any device.

    `nn.SyncBatchNorm` only runs on GPUs; this is the CPU (gloo) stand-in, used when world size > 1 on CPU.
    Statistics are two-pass (mean, then centred variance) through differentiable all-reduces, so gradients flow
    across processes exactly as for one process holding the whole batch. Same parameter and buffer names as
    BatchNorm2d, so state dicts are interchangeable.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = (0, 2, 3)
        count = all_reduce_sum(torch.tensor([float(x.numel() // x.shape[1])], device=x.device))
        mean = all_reduce_sum(x.sum(dims)) / count  # (C,)
        centred = x - mean[None, :, None, None]  # (B, C, H, W)
        var = all_reduce_sum((centred * centred).sum(dims)) / count  # biased: what BN normalises with
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * unbiased.detach())
                self.num_batches_tracked.add_(1)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Batch norms that sync across processes: nn.SyncBatchNorm on GPUs, `CrossProcessBatchNorm2d` on CPU."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            new = CrossProcessBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine)
            new.load_state_dict(child.state_dict())
            new.to(child.weight.device if child.affine else device)
            setattr(model, name, new)
        else:
            convert_batchnorm(child, device)
    return model


def check_replicas_agree(model: nn.Module) -> None:
    """DDP keeps replicas bitwise identical; compare digests once at the end so a silent divergence cannot pass."""
    import hashlib

    digest = hashlib.sha256()
    for value in model.state_dict().values():
        digest.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    digests = gather_objects(digest.hexdigest())
    if len(set(digests)) != 1:
        raise RuntimeError(f"the {len(digests)} processes ended with different weights (digests {digests})")
