"""A torchrun entry point for tests: `segformer` with a fault or a variant injected into this process.

    torchrun --nproc-per-node 2 tests/worker.py train ...     # SEGFORMER_TEST_PATCH picks the patch

Patches (the environment variable SEGFORMER_TEST_PATCH):
- `sgd`: plain SGD (no momentum) over the recipe's parameter groups instead of AdamW, whose steps hide the scale of
  the gradient (a sum instead of a mean over processes would pass with Adam, not with SGD);
- `nan:RANK:CALL`: on process RANK only, the loss is NaN from its CALL-th micro-batch on.
"""

from __future__ import annotations

import math
import os
import sys

import torch


def sgd(model, lr, weight_decay, head_lr_mult=10.0):
    from segformer.training.optim import param_groups

    return torch.optim.SGD(param_groups(model, lr, weight_decay, head_lr_mult), lr=lr, momentum=0.0)


def apply(spec: str) -> None:
    from segformer.training import build, loop

    if spec == "sgd":
        loop.build_optimizer = sgd
    elif spec.startswith("nan:"):
        _, rank, start = spec.split(":")
        if os.environ.get("RANK") != rank:
            return
        original, calls = build.build_loss, []

        def poisoned_loss(spec, options):
            loss = original(spec, options)

            def poisoned(logits, target):
                calls.append(1)
                value = loss(logits, target)
                return value * math.nan if len(calls) >= int(start) else value

            return poisoned

        build.build_loss = poisoned_loss  # the run's criterion (Trainer.criterion) is built through it
    elif spec:
        raise SystemExit(f"unknown SEGFORMER_TEST_PATCH {spec!r}")


if __name__ == "__main__":
    apply(os.environ.get("SEGFORMER_TEST_PATCH", ""))
    from segformer.cli import main

    sys.exit(main(sys.argv[1:]))
