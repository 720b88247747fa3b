"""The "device" loaders: batches made on the device that trains, CPU or GPU.

- In-memory datasets (Fashion-MNIST, CIFAR, synthetic) are copied to the device once; a batch is a gather of
  its indices and one batched augmentation.
- Image files are read by CPU worker processes, which decode them in the sandbox (datasets.decode_bytes); for a
  GPU they send a JPEG's bytes as they are (its header checked) and the JPEGs of a batch are decoded together there
  (nvJPEG, through `torchvision.io.decode_jpeg`). A JPEG the batch decoder refuses is decoded alone, then on the CPU; one that
  nothing can decode is skipped and counted, as the host loader does.
"""

from __future__ import annotations

import logging
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import ResnetsError
from .batching import Batch, SampledLoader, leave_stops_to_the_run, refuse_if_strict, to_device
from .datasets import (
    BadSample,
    FileDataset,
    TensorDataset,
    decode_bytes,
    read_header,
    read_mode,
)
from .decoder import signature

log = logging.getLogger("resnets")


def device_loader(
    dataset: Dataset, sampler: Sampler, transform, device: torch.device, *, workers: int = 0, strict: bool = False
):
    if isinstance(dataset, TensorDataset):
        return TensorLoader(dataset, sampler, transform, device)
    if isinstance(dataset, FileDataset):
        return FileLoader(dataset, sampler, transform, device, workers=workers, strict=strict)
    raise ResnetsError(f"no device loader for {type(dataset).__name__}")


def _train_keys(keys: list[int], n: int) -> tuple[int, list[int]]:
    """Sampler keys are epoch * n + index while training (plain indices when evaluating): (epoch, indices)."""
    epoch = keys[0] // n if keys else 0
    return epoch, [k - epoch * n for k in keys]


class TensorLoader(SampledLoader):
    """An in-memory dataset held whole on the device; each batch gathered and transformed there."""

    kind = "device"

    def __init__(self, dataset: TensorDataset, sampler: Sampler, transform, device: torch.device):
        self.images = dataset.images.to(device)
        self.labels = dataset.labels.to(device)
        self.sampler, self.transform, self.device = sampler, transform, device
        self.train = hasattr(transform, "augment")  # BatchAugment takes (images, index, epoch)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.images)
        for keys in self.sampler:
            epoch, index = _train_keys(keys, n)
            idx = to_device(index, self.device)
            x = self.images[idx]
            x = self.transform(x, idx, epoch) if self.train else self.transform(x)
            yield Batch(x, self.labels[idx], [])


def jpegs_on_device(device: torch.device) -> bool:
    """Whether JPEGs go to the device as bytes (nvJPEG on a GPU); on a CPU every image is decoded in the sandbox."""
    return device.type == "cuda"


class Encoded(Dataset):
    """Worker side of the file loader: (key, label, path, data, is_jpeg) where data is a JPEG's bytes (1-D uint8)
    or the decoded pixels (C, H, W) of any other image; a BadSample for a file that cannot be read."""

    def __init__(self, dataset: FileDataset, jpeg_bytes: bool = True):
        self.dataset, self.channels, self.jpeg_bytes = dataset, dataset.channels, jpeg_bytes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int):
        i = int(key) % len(self.dataset)
        path, label = self.dataset.samples[i]
        try:
            data = self.dataset.read(i)
            if self.jpeg_bytes and signature(data) == "JPEG":  # nvJPEG: the header checked here, the pixels there
                if read_header(data, path).orientation == 1:  # nvJPEG ignores EXIF orientation
                    return int(key), label, path, torch.frombuffer(bytearray(data), dtype=torch.uint8), True
            size = self.dataset.size
            return int(key), label, path, decode_bytes(data, path, self.channels, size=size), False
        except BadSample as e:
            return e


def decode_jpegs(datas: list[torch.Tensor], paths: list[str], device: torch.device, channels: int = 3) -> list:
    """Decode JPEG bytes on `device` in one batch; what the batch decoder refuses is decoded alone, then on the CPU
    (Pillow as the last resort). Returns, per file, a uint8 (C, H, W) tensor on `device` or a BadSample."""
    from torchvision.io import decode_jpeg

    mode = read_mode(channels)
    if not datas:
        return []
    try:
        out = decode_jpeg(datas, mode=mode, device=device)
        if all(o.shape[0] == channels for o in out):
            return list(out)
    except RuntimeError:
        pass
    images: list = []
    for data, path in zip(datas, paths):
        try:
            img = decode_jpeg(data, mode=mode, device=device)
            if img.shape[0] == channels:
                images.append(img)
                continue
        except RuntimeError:
            pass
        try:  # the CPU decoders (libjpeg-turbo, then Pillow: CMYK, odd subsampling, some progressive files)
            images.append(decode_bytes(data.numpy().tobytes(), path, channels).to(device))
        except BadSample as e:
            images.append(e)
    return images


class FileLoader(SampledLoader):
    """Image files: read (and non-JPEGs decoded) by CPU workers, JPEGs decoded on the device, transformed there."""

    kind = "device"

    def __init__(
        self,
        dataset: FileDataset,
        sampler: Sampler,
        transform,
        device: torch.device,
        *,
        workers: int = 0,
        strict: bool = False,
    ):
        self.sampler, self.transform, self.device, self.strict = sampler, transform, device, strict
        self.n, self.channels = len(dataset), dataset.channels
        self.train = hasattr(transform, "augment")
        self.loader = DataLoader(
            Encoded(dataset, jpeg_bytes=jpegs_on_device(device)),
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=list,
            worker_init_fn=leave_stops_to_the_run,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def __iter__(self) -> Iterator[Batch]:
        for items in self.loader:
            yield self._batch(items)

    def _batch(self, items: list) -> Batch:
        bad = [(it.path, it.reason) for it in items if isinstance(it, BadSample)]
        items = [it for it in items if not isinstance(it, BadSample)]
        jpegs = [it for it in items if it[4]]
        decoded = dict(
            zip(
                (it[0] for it in jpegs),
                decode_jpegs([it[3] for it in jpegs], [it[2] for it in jpegs], self.device, self.channels),
            )
        )
        images, keys, labels = [], [], []
        for key, label, path, data, is_jpeg in items:
            img = decoded[key] if is_jpeg else to_device(data, self.device)
            if isinstance(img, BadSample):
                bad.append((img.path, img.reason))
                continue
            images.append(img)
            keys.append(key)
            labels.append(label)
        refuse_if_strict(bad, self.strict)
        if not images:
            return Batch(torch.empty(0, device=self.device), torch.empty(0, dtype=torch.long, device=self.device), bad)
        epoch, index = _train_keys(keys, self.n)
        y = to_device(labels, self.device)
        if self.train:
            x = self.transform(images, torch.tensor(index, dtype=torch.long), epoch)
        else:
            x = self.transform(images)
        return Batch(x, y, bad)
