"""The official optimiser and schedule: AdamW with head lr x10 and no decay on LayerNorms, warmup + poly.

mmcv's `paramwise_cfg` selects by name ('head' -> lr_mult 10, 'norm' -> decay_mult 0); in the original naming the
'norm' rule hits exactly the LayerNorms, so here the selection is by module type. Biases and the decoder's
BatchNorm keep weight decay, as in the original.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 10.0) -> list[dict]:
    """AdamW groups: (encoder | head) x (decay | LayerNorm no decay); empty groups are left out."""
    no_decay = set()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = name.startswith("head.")
        buckets.setdefault((is_head, id(p) in no_decay), []).append(p)
    groups = []
    for (is_head, nd), params in sorted(buckets.items()):
        groups.append(
            {
                "params": params,
                "lr": lr * (head_lr_mult if is_head else 1.0),
                "weight_decay": 0.0 if nd else weight_decay,
                "name": f"{'head' if is_head else 'encoder'}{'_no_decay' if nd else ''}",
            }
        )
    return groups


def freeze_encoder_stages(model: nn.Module, stages: int) -> int:
    """Freeze the first `stages` encoder stages (patch embedding, blocks and norm of each): their parameters stop
    requiring gradients, so `param_groups` leaves them out of the optimiser and they keep their values exactly
    (no update, no weight decay). Returns the number of frozen parameter values."""
    total = len(model.encoder.stages)
    if not 0 <= stages <= total:
        raise ValueError(f"cannot freeze {stages} encoder stages: the model has {total} (freeze 0..{total})")
    frozen = 0
    for stage in model.encoder.stages[:stages]:
        for p in stage.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 10.0) -> torch.optim.AdamW:
    """AdamW(betas 0.9/0.999) over `param_groups` (the released configs)."""
    return torch.optim.AdamW(param_groups(model, lr, weight_decay, head_lr_mult), lr=lr, betas=(0.9, 0.999))


def lr_factor(it: int, max_iters: int, warmup_iters: int, warmup_ratio: float, power: float, min_ratio: float) -> float:
    """lr / base_lr at iteration `it` (0-based, before its update), mmcv semantics:

    poly: regular = (1 - min_ratio) * (1 - it / max_iters) ** power + min_ratio;
    linear warmup over the first `warmup_iters`: regular * (1 - (1 - it / warmup_iters) * (1 - warmup_ratio)).
    """
    progress = min(it, max_iters) / max_iters
    regular = (1.0 - min_ratio) * (1.0 - progress) ** power + min_ratio
    if it < warmup_iters:
        return regular * (1.0 - (1.0 - it / warmup_iters) * (1.0 - warmup_ratio))
    return regular


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    max_iters: int,
    warmup_iters: int = 1500,
    warmup_ratio: float = 1e-6,
    power: float = 1.0,
    min_lr: float = 0.0,
) -> LambdaLR:
    """Per-iteration warmup + poly (call `step()` after every optimiser step). `min_lr` is absolute for every
    group, as in mmcv, so each group gets its own factor."""

    def factor_for(base_lr: float):
        min_ratio = min_lr / base_lr if base_lr > 0 else 0.0
        return lambda it: lr_factor(it, max_iters, warmup_iters, warmup_ratio, power, min_ratio)

    return LambdaLR(optimizer, [factor_for(g["lr"]) for g in optimizer.param_groups])
