"""Batches for training and evaluation, deterministic and shardable, behind one seam.

`make_train_loader` / `make_eval_loader` return an iterable of `Batch` (uint8 images and labels, on the host or
already on the device) with `set_epoch(epoch, start)` and `len()`; the training loop does not know which of the
loaders it has:
- "host": per-image v2 transforms in CPU worker processes (torch's DataLoader), batches on the host;
- "device": the batch is augmented at once on the training device (`augment.BatchAugment`): an in-memory dataset
  is held there whole, image files are read by CPU workers and JPEGs decoded on the device (nvJPEG on a GPU).
"auto" takes "device" for in-memory data that fits, and for files when the device is a GPU.

Every random choice is a pure function of (seed, epoch, sample index) for augmentation and of (seed, epoch) for
the order, so a run resumed from any step sees exactly the batches the uninterrupted run saw, whatever the number
of loader workers. A training step's global batch is split across ranks, so N processes see the same global
batch as one.
"""

from __future__ import annotations

import copy
import logging
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..choices import LOADERS
from ..errors import ResnetsError
from .augment import BatchAugment, BatchResizeCrop
from .batching import (  # noqa: F401  (Batch, Loader, SampledLoader, to_device: re-exported)
    Batch,
    Loader,
    SampledLoader,
    check_batch_split,
    leave_stops_to_the_run,
    mix_seed,
    refuse_if_strict,
    seeded_cpu_rng,
    to_device,
)
from .datasets import BadSample, FileDataset, TensorDataset
from .device_loader import device_loader
from .transforms import eval_transform, ten_crop_transform, train_transform

log = logging.getLogger("resnets")


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
        try:
            with seeded_cpu_rng(mix_seed(self.seed, epoch, i)):
                image = self.transform(image)
        except (RuntimeError, ValueError) as e:  # an image too small or odd for the transform: skipped, named
            samples = getattr(self.dataset, "samples", None)
            if samples is None:
                raise
            return BadSample(samples[i][0], str(e).splitlines()[0][:160] if str(e) else type(e).__name__)
        return image, label


class TrainBatches(Sampler[list[int]]):
    """Global batches of a seeded permutation (the last partial one dropped); this rank gets its slice of each.
    `start` skips batches already trained on (resume mid-epoch). With `targets`, class-balanced: each draw picks
    an image with probability 1 / (classes x its class's size), with replacement."""

    def __init__(
        self,
        n: int,
        global_batch: int,
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        targets: Sequence[int] | None = None,
    ):
        check_batch_split(global_batch, world)
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


class ShardBatches(Sampler[list[int]]):
    """Batches of streamed shards (`groups`: each shard's sample numbers): each epoch a seeded order of the shards,
    each dealt in turn to the rank holding the fewest images so far, so a rank fetches only its shards; a rank's
    images are shuffled within each run of `window` consecutive shards of its own (the shuffle buffer: `window`
    shards fetched at a time) and served in local batches. Every rank takes the same number of batches,
    `epoch_batches` = floor((N - (world - 1) x largest shard) / world / local batch): the images a rank holds past
    that (at most about one shard's worth, other ones each epoch) wait for a later epoch; with one process, every
    image but the last partial batch. `start` skips batches already trained on (resume mid-epoch)."""

    def __init__(
        self, groups: list[list[int]], global_batch: int, *, seed: int, rank: int = 0, world: int = 1, window: int = 4
    ):
        check_batch_split(global_batch, world)
        self.groups, self.global_batch, self.seed, self.rank, self.world = groups, global_batch, seed, rank, world
        self.window, self.local = window, global_batch // world
        self.n = sum(map(len, groups))
        self.epoch, self.start = 0, 0
        self.batches = epoch_batches(groups, global_batch, world)
        if self.batches < 1:
            raise ResnetsError(
                f"the streamed shards ({self.n} images in {len(groups)} shards) give {world} processes less than one "
                f"batch of {self.local} each: write smaller shards, or use a smaller --batch-size"
            )

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.batches - self.start

    def mine(self) -> list[int]:
        """This rank's images of the epoch, in the order it trains on them."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 0x5A4D))
        held = [0] * self.world
        dealt: list[list[list[int]]] = [[] for _ in range(self.world)]
        for k in torch.randperm(len(self.groups), generator=g).tolist():
            r = min(range(self.world), key=lambda j: (held[j], j))
            dealt[r].append(self.groups[k])
            held[r] += len(self.groups[k])
        order: list[int] = []
        shards = dealt[self.rank]
        for w in range(0, len(shards), self.window):
            run = torch.tensor([i for shard in shards[w : w + self.window] for i in shard], dtype=torch.long)
            order += run[torch.randperm(len(run), generator=g)].tolist()
        return order

    def __iter__(self) -> Iterator[list[int]]:
        order, base = self.mine(), self.epoch * self.n
        for b in range(self.start, self.batches):
            yield [i + base for i in order[b * self.local : (b + 1) * self.local]]


def epoch_batches(groups: list[list[int]], global_batch: int, world: int) -> int:
    """The batches each rank takes an epoch from streamed shards (see ShardBatches)."""
    n, largest = sum(map(len, groups)), max(map(len, groups), default=0)
    return max(n - (world - 1) * largest, 0) // world // (global_batch // world)


class EvalBatches(Sampler[list[int]]):
    """Every index exactly once over all ranks (rank r takes r, r+world, ...; of streamed shards, whole shards:
    r, r+world, ... of `groups`): no sample counted twice or lost."""

    def __init__(self, n: int, batch: int, rank: int = 0, world: int = 1, groups: list[list[int]] | None = None):
        if groups is None:
            self.indices = list(range(rank, n, world))
        else:
            self.indices = [i for shard in groups[rank::world] for i in shard]
        self.batch = batch

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch)

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(0, len(self.indices), self.batch):
            yield self.indices[i : i + self.batch]


class Collate:
    """Stacks good samples, sets aside the undecodable ones (or raises, with strict data)."""

    def __init__(self, strict: bool = False):
        self.strict = strict

    def __call__(self, items: Sequence) -> Batch:
        good = [it for it in items if not isinstance(it, BadSample)]
        bad = [(it.path, it.reason) for it in items if isinstance(it, BadSample)]
        refuse_if_strict(bad, self.strict)
        if not good:
            return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), bad)
        return Batch(torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), bad)


def make_loader(dataset: Augmented, batch_sampler: Sampler, *, workers: int, strict: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=Collate(strict),
        worker_init_fn=leave_stops_to_the_run,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers > 0 else None,
    )


class HostLoader(SampledLoader):
    """Per-image transforms in CPU workers: torch's DataLoader over `Augmented`."""

    kind = "host"

    def __init__(
        self, dataset: Dataset, transform: Callable, sampler: Sampler, *, seed: int, workers: int, strict: bool = False
    ):
        self.sampler = sampler
        self.loader = make_loader(Augmented(dataset, transform, seed), sampler, workers=workers, strict=strict)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.loader)


def _fits_on(device: torch.device, nbytes: int) -> tuple[bool, str]:
    """Whether a dataset of `nbytes` may live on the device: on a GPU at most half of its free memory."""
    if device.type != "cuda":
        return True, ""
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes <= free // 2:
        return True, ""
    return False, f"{nbytes / 2**30:.1f} GiB of images do not fit in half of the GPU's {free / 2**30:.1f} GiB free"


def choose_loader(kind: str, dataset: Dataset, device: torch.device, *, augment_ok: bool = True) -> str:
    """ "host" or "device" for `kind` ("auto", "host", "device"), with one log line when "device" cannot be had."""
    if kind not in LOADERS:
        raise ResnetsError(f"loader must be one of {', '.join(LOADERS)}; got {kind!r}")
    if kind == "host":
        return "host"
    if isinstance(dataset, TensorDataset):
        fits, why = _fits_on(device, dataset.images.numel())
        if not fits:
            log.warning("%s: using the host loader", why)
            return "host"
        return "device" if augment_ok else "host"
    if kind == "device" or device.type == "cuda":
        return "device" if augment_ok else "host"
    return "host"


# what the training transforms resize the shorter side to (datasets.decode_bytes' `size`): the paper's scale
# augmentation up to 480, RandomResizedCrop the crop (its smallest crops are upsampled from at least twice it); the
# padded random crops take the image as it is (None: full size)
TRAIN_DECODE = {"paper-imagenet": 480, "paper-cifar": None, "crop-flip": None}


def decoded_at(dataset: Dataset, size) -> Dataset:
    """`dataset`, when it decodes files, as a copy that decodes them no larger than `size` needs (datasets.decode_bytes'
    `size`: a JPEG by DCT scaling, anything else reduced by a whole factor, never below twice that)."""
    if not isinstance(dataset, FileDataset):
        return dataset
    dataset = copy.copy(dataset)
    dataset.size = size
    return dataset


def shard_groups(dataset) -> list[list[int]] | None:
    """Streamed shards' sample numbers, shard by shard (shards.ShardDataset.shard_groups); None for other data."""
    groups = getattr(dataset, "shard_groups", None)
    return groups() if groups is not None else None


def make_train_loader(
    dataset: Dataset,
    *,
    kind: str,
    device: torch.device,
    batch_size: int,
    seed: int,
    augment: str,
    crop: int,
    mean: Sequence[float],
    pad: int = 4,
    auto_augment: str = "none",
    random_erasing: float = 0.0,
    interpolation: str = "bilinear",
    rank: int = 0,
    world: int = 1,
    balanced: bool = False,
    workers: int = 0,
    strict: bool = False,
) -> Loader:
    """Training batches of `batch_size` / `world` images for this rank, augmented as `augment` says."""
    groups = shard_groups(dataset)
    if groups is not None:
        if balanced:
            raise ResnetsError("--balanced draws images from anywhere in the set: not with streamed shards")
        sampler = ShardBatches(groups, batch_size, seed=seed, rank=rank, world=world)
    else:
        targets = dataset.targets if balanced else None
        sampler = TrainBatches(len(dataset), batch_size, seed=seed, rank=rank, world=world, targets=targets)
    kind = choose_loader(kind, dataset, device)
    dataset = decoded_at(dataset, TRAIN_DECODE.get(augment, crop))
    if kind == "host":
        tf = train_transform(
            augment,
            crop=crop,
            mean=mean,
            auto_augment=auto_augment,
            random_erasing=random_erasing,
            interpolation=interpolation,
            pad=pad,
        )
        return HostLoader(dataset, tf, sampler, seed=seed, workers=workers, strict=strict)
    aug = BatchAugment(
        augment,
        crop=crop,
        mean=mean,
        seed=seed,
        pad=pad,
        auto_augment=auto_augment,
        random_erasing=random_erasing,
        interpolation=interpolation,
    )
    return device_loader(dataset, sampler, aug, device, workers=workers, strict=strict)


def make_eval_loader(
    dataset: Dataset,
    *,
    kind: str,
    device: torch.device,
    batch_size: int,
    resize: int,
    crop: int,
    interpolation: str = "bilinear",
    crop_mode: str = "center",
    ten_crop: bool = False,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
    strict: bool = False,
) -> Loader:
    """Every image of `dataset` once over all ranks, resized and centre-cropped (or the paper's 10 crops, on the
    host)."""
    sampler = EvalBatches(len(dataset), batch_size, rank, world, shard_groups(dataset))
    kind = "host" if ten_crop else choose_loader(kind, dataset, device)
    dataset = decoded_at(dataset, resize)
    if kind == "host":
        make = ten_crop_transform if ten_crop else eval_transform
        tf = make(resize=resize, crop=crop, interpolation=interpolation, crop_mode=crop_mode)
        return HostLoader(dataset, tf, sampler, seed=0, workers=workers, strict=strict)
    return device_loader(
        dataset, sampler, BatchResizeCrop(resize, crop, crop_mode == "squash"), device, workers=workers, strict=strict
    )
