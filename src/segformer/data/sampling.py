"""Deterministic, resumable sample order for iteration-based training.

Training runs for a number of iterations, not epochs, and must resume mid-epoch exactly. `TrainSampler` is a
pure function of (seed, iteration): sample `slot` of iteration `it` on rank `r` is position
`(it * world + r) * batch + slot` of an endless stream made of one seeded permutation per epoch, and its
augmentation seed is (seed, it, r, slot). Restarting at `start_iter` therefore replays exactly what an
uninterrupted run would have done, with any number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


class TrainSampler(torch.utils.data.Sampler):
    """Endless `(index, (seed, iteration, rank, slot))` keys for `SegmentationDataset.__getitem__`.

    Use with `DataLoader(dataset, batch_size=batch_size, sampler=TrainSampler(...))`; `batch_size` here must be the
    loader's (per-rank) batch size so iterations line up.
    """

    def __init__(
        self, length: int, batch_size: int, seed: int = 0, start_iter: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if length < 1 or batch_size < 1:
            raise ValueError(f"TrainSampler needs length >= 1 and batch_size >= 1, got {length} and {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.start_iter, self.rank, self.world_size = start_iter, rank, world_size

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, epoch)).permutation(self.length)

    def __iter__(self) -> Iterator[tuple[int, tuple[int, int, int, int]]]:
        epoch, perm = -1, np.empty(0, dtype=np.int64)
        it = self.start_iter
        while True:
            for slot in range(self.batch_size):
                position = (it * self.world_size + self.rank) * self.batch_size + slot
                e, j = divmod(position, self.length)
                if e != epoch:
                    epoch, perm = e, self._permutation(e)
                yield int(perm[j]), (self.seed, it, self.rank, slot)
            it += 1
