"""The pieces every loader is made of (the host one in loader.py, the device ones in device.py, the batched
augmentation in augment.py): what a batch is, what a loader gives, the per-sample seed, and host-to-device copies.
Below all of them, so none imports another for these."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import torch
from torch.utils.data import Sampler

from ..errors import ResnetsError

STOPS = (signal.SIGTERM, signal.SIGUSR1)  # a scheduler's stop (engine/preemption.py)


def leave_stops_to_the_run(_worker: int = 0) -> None:
    """A loader worker's `worker_init_fn`: SIGTERM and SIGUSR1 ignored. A scheduler signals every process of a job
    (`scancel`, a preemption): the run decides, finishing its step and checkpointing (engine/preemption.py), and its
    workers end with their loader. PyTorch's own handler in a worker ended it at once on a signal that did not come
    from the run, and the run then failed ("DataLoader worker is killed by signal: Terminated") without its
    checkpoint. (The run itself stops a worker by its loader's shutdown, or with SIGKILL.)"""
    for s in STOPS:
        signal.signal(s, signal.SIG_IGN)


def to_device(values: Sequence | torch.Tensor, device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Host values as a tensor on `device` without making the CPU wait for the GPU: a copy from pageable memory
    waits for every kernel already queued (and the CPU could no longer run ahead of the GPU); one from pinned
    memory does not (the caching host allocator keeps the source alive until the copy is done)."""
    t = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    if device.type != "cuda" or t.device == device:
        return t.to(device)
    return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (splitmix64 steps), so nearby inputs give unrelated seeds."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return x & 0x7FFFFFFFFFFFFFFF


@dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor
    bad: list[tuple[str, str]]  # (path, reason) of skipped samples


class Loader(Protocol):
    """What the training loop and evaluation iterate: batches of uint8 images (host or device) and labels."""

    kind: str

    def set_epoch(self, epoch: int, start: int = 0) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...


class SampledLoader:
    """A loader that draws its batches of indices from a sampler (TrainBatches or EvalBatches)."""

    sampler: Sampler

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.sampler)


def check_batch_split(global_batch: int, world: int) -> None:
    """A global batch is split evenly over the processes (each rank takes global_batch / world images)."""
    if global_batch % world:
        raise ResnetsError(f"batch size {global_batch} does not split evenly over {world} processes")


@contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[torch.Generator]:
    """The CPU generator seeded with `seed` inside the block, and given back as it was after it (torch.manual_seed
    would also seed every accelerator, at 100x the cost)."""
    gen = torch.default_generator
    saved = gen.get_state()
    gen.manual_seed(seed)
    try:
        yield gen
    finally:
        gen.set_state(saved)


def refuse_if_strict(bad: list[tuple[str, str]], strict: bool) -> None:
    """With strict data, an unreadable image stops the run (named) instead of being skipped and counted."""
    if bad and strict:
        raise ResnetsError(f"unreadable image {bad[0][0]}: {bad[0][1]} (strict data is on)")
