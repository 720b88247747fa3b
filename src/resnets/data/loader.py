"""Batches for training and evaluation, deterministic and shardable.

Every random choice is a pure function of (seed, epoch, sample index) for augmentation and of (seed, epoch) for
the order, so a run resumed from any step sees exactly the batches the uninterrupted run saw, whatever the number
of loader workers. A training step's global batch is split across ranks, so N processes see the same global
batch as one.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import ResnetsError
from .datasets import BadSample

log = logging.getLogger("resnets")


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (splitmix64 steps), so nearby inputs give unrelated seeds."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return x & 0x7FFFFFFFFFFFFFFF


class Augmented(Dataset):
    """Wraps a dataset: item `epoch * len + i` is sample i transformed with RNG seeded by (seed, epoch, i).
    A sample that cannot be decoded comes back as its BadSample, for the collate function to count."""

    def __init__(self, dataset: Dataset, transform: Callable, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int):
        epoch, i = divmod(int(key), len(self.dataset))
        try:
            image, label = self.dataset[i]
        except BadSample as e:
            return e
        # the CPU generator alone (torch.manual_seed also seeds every accelerator and costs 100x more)
        gen = torch.default_generator
        saved = gen.get_state()
        gen.manual_seed(mix_seed(self.seed, epoch, i))
        try:
            image = self.transform(image)
        finally:
            gen.set_state(saved)
        return image, label


class TrainBatches(Sampler[list[int]]):
    """Global batches of a seeded permutation (the last partial one dropped); this rank gets its slice of each.
    `start` skips batches already trained on (resume mid-epoch). With `targets`, class-balanced: each draw picks
    an image with probability 1 / (classes x its class's size), with replacement."""

    def __init__(self, n: int, global_batch: int, *, seed: int, rank: int = 0, world: int = 1,
                 targets: Sequence[int] | None = None):  # fmt: skip
        if global_batch % world:
            raise ResnetsError(f"batch size {global_batch} does not split evenly over {world} processes")
        if n < global_batch:
            raise ResnetsError(f"the training set ({n} images) is smaller than one batch ({global_batch})")
        self.n, self.global_batch, self.seed, self.rank, self.world = n, global_batch, seed, rank, world
        self.epoch, self.start = 0, 0
        self.weights = None
        if targets is not None:
            t = torch.as_tensor(list(targets))
            self.weights = 1.0 / torch.bincount(t).double()[t]

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.n // self.global_batch - self.start

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 0xDA7A))
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        local = self.global_batch // self.world
        base = self.epoch * self.n
        for b in range(self.start, self.n // self.global_batch):
            chunk = order[b * self.global_batch + self.rank * local : b * self.global_batch + (self.rank + 1) * local]
            yield (chunk + base).tolist()


class EvalBatches(Sampler[list[int]]):
    """Every index exactly once over all ranks (rank r takes r, r+world, ...): no sample counted twice or lost."""

    def __init__(self, n: int, batch: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, n, world))
        self.batch = batch

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch)

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(0, len(self.indices), self.batch):
            yield self.indices[i : i + self.batch]


@dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor
    bad: list[tuple[str, str]]  # (path, reason) of skipped samples


class Collate:
    """Stacks good samples, sets aside the undecodable ones (or raises, with strict data)."""

    def __init__(self, strict: bool = False):
        self.strict = strict

    def __call__(self, items: Sequence) -> Batch:
        good = [it for it in items if not isinstance(it, BadSample)]
        bad = [(it.path, it.reason) for it in items if isinstance(it, BadSample)]
        if bad and self.strict:
            raise ResnetsError(f"unreadable image {bad[0][0]}: {bad[0][1]} (strict data is on)")
        if not good:
            return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), bad)
        return Batch(torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), bad)


def make_loader(dataset: Augmented, batch_sampler: Sampler, *, workers: int, strict: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=Collate(strict),
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers > 0 else None,
    )
