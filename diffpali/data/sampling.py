"""Index order for the three loaders: reproducible from the seed, sharded over ranks, resumable.

Training indices come from :class:`ResumableSampler`: epoch ``e`` is a permutation drawn from
``(seed, e)`` alone, so a restarted process rebuilds exactly the order an uninterrupted one had
and, told how many batches the checkpoint had consumed, continues with the next one. Every rank
takes every ``world_size``-th index of the same permutation, so the union of the ranks' k-th
batches is the k-th batch of one process at ``world_size`` times the batch size.

Evaluation uses :class:`ShardSampler`: each rank scores a disjoint slice and nothing is padded,
so no question is counted twice (``DistributedSampler`` repeats samples to even out the ranks).
Under FSDP the split is first padded (:class:`PaddedSplit`) with marked copies that no metric counts.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_permutation(size: int, seed: int, epoch: int) -> list[int]:
    """A permutation of ``range(size)`` that depends on ``(seed, epoch)`` only."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.randperm(size, generator=generator).tolist()


class ResumableSampler(Sampler[int]):
    """Training indices for one rank: a fresh permutation per epoch, and a way to start mid-epoch.

    Lightning calls :meth:`set_epoch` at each epoch start (it looks for it on the DataLoader's
    sampler). ``len()`` is always a whole epoch's share, as Lightning expects when it resumes: it
    counts the batches already done, then reads the rest from here.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if size <= 0:
            raise ValueError("ResumableSampler needs a non-empty dataset")
        self.size, self.seed, self.shuffle, self.rank, self.world_size = size, seed, shuffle, rank, world_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """Leave out this rank's first ``samples_done`` indices of ``epoch`` (once, when that epoch is next read)."""
        self._resume = (epoch, samples_done)

    def shard(self) -> list[int]:
        """This rank's indices for the current epoch, in order."""
        order = epoch_permutation(self.size, self.seed, self.epoch) if self.shuffle else list(range(self.size))
        # Like DistributedSampler, repeat the first indices so every rank runs the same number of steps
        # (DDP's all-reduce needs lock-step); with one process nothing is repeated.
        padded = -(-self.size // self.world_size) * self.world_size
        order = (order * 2)[:padded] if padded > self.size else order
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
        self._resume = None
        return iter(self.shard()[start:])

    def __len__(self) -> int:
        return -(-self.size // self.world_size)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` in order: disjoint shards that cover the split once."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


class PaddedSplit(torch.utils.data.Dataset):
    """An evaluation split padded to a multiple of ``world_size`` with copies of its first records, each marked
    ``padding=True`` (scored by no metric). Under FSDP every forward gathers weights from every rank, so the
    ranks must run as many batches; DDP's unpadded shards would leave one rank waiting in a gather."""

    def __init__(self, examples: Any, world_size: int) -> None:
        self.examples = examples
        self.size = -(-len(examples) // world_size) * world_size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < len(self.examples):
            return self.examples[index]
        return {**self.examples[index % len(self.examples)], "padding": True}
