"""The loader: which samples each step reads, on one process or several.

The order of epoch ``e`` is a pure function of ``(seed, e)`` (:func:`epoch_order`).  With
``world_size`` processes, rank ``r`` takes every ``world_size``-th sample of that order
starting at ``r`` (:func:`shard`): the shards of one epoch are disjoint and together
cover every sample exactly once.  Training drops the last partial batch, so every rank
runs the same number of steps per epoch; a step ``s`` is ``(epoch, batch) =
divmod(s, steps_per_epoch)``, which is all a checkpoint needs to continue mid-epoch
(:meth:`Loader.position`).  Batches are read one step ahead in a background thread, so
disk reads overlap the step.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from selfsup.errors import SelfSupError

ORDER_SEED_STRIDE = 100_003  # epoch e of seed s shuffles with seed s * stride + e


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``range(n)`` used in ``epoch`` (int64)."""
    gen = torch.Generator().manual_seed(seed * ORDER_SEED_STRIDE + epoch)
    return torch.randperm(n, generator=gen).numpy()


def shard(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s share of ``order``: elements ``rank, rank + world_size, ...``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return order[rank::world_size]


class Loader:
    """Batches of ``samples`` (an :class:`~selfsup.data.ImageSet`) for one process.

    ``shuffle=False`` keeps the stored order (evaluation); ``drop_last=False`` also
    yields the last partial batch.  Iterating :meth:`epoch` or :meth:`steps` yields
    ``(indices, images)``: the sample indices (int64 numpy) and their uint8 images as a
    CPU tensor (B, H, W, C), page-locked with ``pin_memory`` (for a CUDA device).
    """

    def __init__(self, samples, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, rank: int = 0, world_size: int = 1, prefetch: bool = True,
                 pin_memory: bool = False):
        if batch_size < 1:
            raise SelfSupError(f"batch size must be at least 1, got {batch_size}")
        self.samples, self.batch_size, self.seed = samples, batch_size, seed
        self.shuffle, self.drop_last, self.prefetch = shuffle, drop_last, prefetch
        self.pin_memory = pin_memory  # page-locked batches: asynchronous copies to a GPU
        self.rank, self.world_size = rank, world_size
        self.n = len(samples)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's samples in ``epoch``, in the order they are read."""
        order = epoch_order(self.n, self.seed, epoch) if self.shuffle else np.arange(self.n)
        return shard(order, self.rank, self.world_size)

    @property
    def steps_per_epoch(self) -> int:
        per_rank = self.n // self.world_size  # the smallest shard
        if self.drop_last:
            return per_rank // self.batch_size
        return -(-len(shard(np.arange(self.n), self.rank, self.world_size)) // self.batch_size)

    def position(self, step: int) -> tuple[int, int]:
        """``(epoch, batch within the epoch)`` of global step ``step``."""
        return divmod(step, max(self.steps_per_epoch, 1))

    def read(self, idx: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(self.samples.read(idx))  # (B, H, W, C) uint8
        return batch.pin_memory() if self.pin_memory else batch

    def steps(self, start: int, stop: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Batches of global steps ``start .. stop - 1`` (across epochs)."""
        order_cache: dict[int, np.ndarray] = {}

        def indices(step: int) -> np.ndarray:
            epoch, it = self.position(step)
            if epoch not in order_cache:
                order_cache.clear()
                order_cache[epoch] = self.epoch_indices(epoch)
            return order_cache[epoch][it * self.batch_size:(it + 1) * self.batch_size]

        yield from self._read_ahead(indices(s) for s in range(start, stop))

    def epoch(self, epoch: int = 0) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Every batch of one epoch on this rank (the last one partial unless drop_last)."""
        idx = self.epoch_indices(epoch)
        count = self.steps_per_epoch
        yield from self._read_ahead(idx[i * self.batch_size:(i + 1) * self.batch_size] for i in range(count))

    def _read_ahead(self, batches: Iterator[np.ndarray]) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        if not self.prefetch:
            for idx in batches:
                yield idx, self.read(idx)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="selfsup-loader") as pool:
            pending = None
            for idx in batches:
                future = pool.submit(self.read, idx)
                if pending is not None:
                    yield pending[0], pending[1].result()
                pending = (idx, future)
            if pending is not None:
                yield pending[0], pending[1].result()
