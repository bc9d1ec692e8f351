"""The training sample stream: deterministic, resumable, and the same for any number of processes or workers.

Training runs for a number of iterations, not epochs, and must resume mid-epoch exactly, so samples are addressed
by their position `g` in one endless global stream. Iteration `it` uses positions `it * global_batch + j`
(j < global batch = batch size x processes x grad accumulation). Position `g` is image `perm(seed, epoch)[g % N]`
(one seeded permutation per epoch of N images, epoch = g // N), augmented with `np.random.default_rng([seed, g])`.

    stream = SampleStream(dataset, transform, seed=0)         # position g -> (image, mask) tensors
    plan = BatchPlan(start, iters, batch_size, grad_accum, world_size, rank)   # this rank's positions per batch
    loader = train_loader(stream, plan, num_workers=4)        # a DataLoader over exactly those positions

`SampleStream.load` is the one place where unreadable samples are skipped (`skip_bad`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from ..imageio import ImageReadError
from .base import Sample, SampleSource, Transform, as_dataset

log = logging.getLogger("segformer")


class SampleStream(torch.utils.data.Dataset):
    """Global stream position g -> (image tensor, label tensor), independent of ranks, workers and restarts.

    `dataset` is a `Dataset` or any sample source (`len()`, `load(i) -> (uint8 HWC image, uint8 HW mask, name)`);
    `transform(image, mask, rng)` returns the training arrays. With `skip_bad`, a sample whose `load` fails is
    replaced by the next good one (in index order, wrapping around) and marked bad in memory shared with DataLoader
    workers: `skipped` counts the distinct bad samples met in any process, plus those the dataset dropped while
    building (`dataset.dropped`).
    """

    def __init__(self, dataset: SampleSource, transform: Transform, seed: int = 0, skip_bad: bool = False) -> None:
        if len(dataset) == 0:
            raise ValueError("SampleStream needs a non-empty dataset")
        self.dataset = as_dataset(dataset)
        self.transform = transform
        self.seed = seed
        self.skip_bad = skip_bad
        self._epoch = -1
        self._perm: np.ndarray | None = None
        self._bad = torch.zeros(len(dataset), dtype=torch.bool).share_memory_()

    def __setstate__(self, state: dict) -> None:
        # A plain pickle round trip copies the flags into private memory; share them again for forked workers.
        self.__dict__.update(state)
        self._bad.share_memory_()

    def __len__(self) -> int:  # positions are unbounded; DataLoader only needs this for its repr
        return len(self.dataset)

    @property
    def skipped(self) -> int:
        return self.dataset.dropped + int(self._bad.sum())

    def index_of(self, g: int) -> int:
        """The dataset index at stream position `g`."""
        epoch, pos = divmod(g, len(self.dataset))
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._epoch = epoch
        return int(self._perm[pos])

    def load(self, index: int) -> Sample:
        """`dataset.load(index)`; with `skip_bad`, the next good sample when that one is unreadable."""
        n = len(self.dataset)
        for step in range(n):
            i = (index + step) % n
            if self._bad[i]:
                continue
            try:
                return self.dataset.load(i)
            except (ImageReadError, ValueError, OSError) as e:
                if not self.skip_bad:
                    raise ValueError(f"{e} (pass --skip-bad-samples to skip unreadable samples)") from None
                self._bad[i] = True
                log.warning("skipping bad sample %d (%d skipped so far): %s", i, self.skipped, e)
        raise ValueError(f"every one of the {n} training samples failed to load")

    def __getitem__(self, g: int) -> tuple[Tensor, Tensor]:
        image, mask, _ = self.load(self.index_of(g))
        image, mask = self.transform(image, mask, np.random.default_rng([self.seed, g]))
        return torch.as_tensor(image), torch.as_tensor(mask).long()


class BatchPlan(torch.utils.data.Sampler):
    """Per micro-batch, this rank's slice of the global stream, from iteration `start` to `iters`.

    Iteration `it`, accumulation step `a`, rank `r` takes positions `it * global_batch + (a * world + r) * batch`
    onwards: the global batch of an iteration is the same set of positions for any world size and accumulation.
    """

    def __init__(
        self, start: int, iters: int, batch_size: int, grad_accum: int = 1, world: int = 1, rank: int = 0
    ) -> None:
        if batch_size < 1 or grad_accum < 1:
            raise ValueError(f"BatchPlan needs batch_size >= 1 and grad_accum >= 1, got {batch_size}, {grad_accum}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        self.start, self.iters = start, iters
        self.batch_size, self.grad_accum, self.world, self.rank = batch_size, grad_accum, world, rank

    def __len__(self) -> int:
        return (self.iters - self.start) * self.grad_accum

    def __iter__(self) -> Iterator[list[int]]:
        b = self.batch_size
        global_batch = b * self.world * self.grad_accum
        for it in range(self.start, self.iters):
            for a in range(self.grad_accum):
                first = it * global_batch + a * b * self.world + self.rank * b
                yield list(range(first, first + b))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers are processes already; threads inside them only fight for cores


def train_loader(
    stream: SampleStream, plan: BatchPlan, num_workers: int = 0, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """A DataLoader yielding `plan`'s batches of `stream`, (images (B, 3, H, W), masks (B, H, W)) each."""
    return torch.utils.data.DataLoader(
        stream,
        batch_sampler=plan,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers else None,
        generator=torch.Generator(),  # keeps the global torch RNG untouched by the loader
    )


def next_batch(batches: Iterator) -> tuple[Tensor, Tensor]:
    """The next batch; an error raised in a worker comes back as one line, not a worker traceback."""
    try:
        return next(batches)
    except (ValueError, OSError, RuntimeError, KeyError) as e:
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        if len(lines) > 1 and "DataLoader worker" in lines[0]:
            last = lines[-1]
            raise ValueError(f"training data: {last.split(': ', 1)[-1]}") from None
        raise
