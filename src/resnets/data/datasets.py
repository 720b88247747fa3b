"""Datasets: every item is (image uint8 tensor (C, H, W), label int); and the one decoder of image files and
uploads. Decoding errors are reported (BadSample), not fatal.

- TensorDataset: images already in memory (Fashion-MNIST, CIFAR, synthetic).
- FileDataset: image files with labels, decoded on access; made by `image_folder` (ImageNet layout, one
  subfolder per class) and `csv_manifest` (`path,label` rows, the label a class name or an index).
- decode / decode_bytes: every image decoded in the sandbox (data/sandbox.py: capped worker processes), its
  format allowed by signature, its header read first (fails closed) and bounded by the pixel limit and the budget
  in bytes, decoded no larger than the consumer needs, every format to the model's channel count.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from ..errors import ResnetsError
from . import images
from .decoder import to_mode
from .images import (  # noqa: F401  (resnets.data.datasets' names, as before)
    BAD_KINDS,
    BYTES_PER_PIXEL_BOUND,
    BYTES_PER_PIXEL_BUDGET,
    DECODE_GAP,
    DEFAULT_MAX_PIXELS,
    HEADER_TIMEOUT,
    IMAGE_SUFFIXES,
    BadSample,
    Header,
    decode_array,
    decode_labels,
    exact_decode,
    read_header,
    read_image_file,
)

max_pixels = images.max_pixels  # resnets.data.datasets.max_pixels, as before (parameters shadow it below)


def to_channels(img: torch.Tensor, channels: int) -> torch.Tensor:
    """An image tensor (C, H, W), or (frames, C, H, W), as uint8 with `channels` channels (1 or 3), whatever it
    came as: the first frame; 16-bit and float scaled; alpha dropped; colour to grey by luma (as Pillow's "L"),
    grey to colour by repetition."""
    from torchvision.transforms.v2.functional import rgb_to_grayscale, to_dtype

    if img.ndim == 4:  # (frames, C, H, W): an animation
        img = img[0]
    if img.dtype != torch.uint8:
        img = to_dtype(img, torch.uint8, scale=True)
    if img.shape[0] in (2, 4):  # grey or colour with alpha
        img = img[:-1]
    if img.shape[0] == channels:
        return img
    if channels == 1:
        return rgb_to_grayscale(img)
    return img.expand(3, -1, -1).contiguous()


def pil_to_tensor(im, channels: int) -> torch.Tensor:
    """A Pillow image (its current frame, EXIF orientation applied) as uint8 (channels, H, W), whatever its mode
    (16-bit, int32 and float scaled band by band, as the decoder does: no full-size float copy)."""
    from PIL import ImageOps
    from torchvision.transforms.v2.functional import pil_to_tensor as to_tensor

    return to_tensor(to_mode(ImageOps.exif_transpose(im), channels))


def image_tensor(
    image, channels: int, *, taken: str = "a PIL image or a (C, H, W) image tensor of 1-4 channels is taken"
) -> torch.Tensor:
    """An image already in memory (a PIL image, or an image tensor (C, H, W) of 1-4 channels, uint8 or float in
    [0, 1]) as a uint8 tensor on the CPU with `channels` channels: what predict's in-memory inputs and
    `Preprocessing.transforms()` take. Anything else is a ResnetsError: `taken` says what is, then what came."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return pil_to_tensor(image, channels)
    if (
        isinstance(image, torch.Tensor)
        and image.ndim == 3
        and image.shape[0] in (1, 2, 3, 4)
        and min(image.shape[1:]) > 0
    ):
        t = image if image.dtype == torch.uint8 else (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
        return to_channels(t.cpu(), channels)
    what = f"a tensor of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
    raise ResnetsError(f"{taken}; got {what}")


def decode(
    path: str | os.PathLike, channels: int = 3, *, size: int | tuple[int, int | None] | None = None
) -> torch.Tensor:
    """Decode an image file to uint8 (channels, H, W), or raise BadSample with the reason: `decode_bytes` of the
    file, which is refused unread when it is larger than any image within the pixel limit."""
    path = os.fspath(path)
    return decode_bytes(read_image_file(path), path, channels, size=size)


def decode_bytes(
    data: bytes,
    name: str,
    channels: int = 3,
    *,
    max_pixels: int | None = None,
    size: int | tuple[int, int | None] | None = None,
) -> torch.Tensor:
    """An image in memory (a file's bytes, an upload) as uint8 (channels, H, W), or BadSample with the reason;
    `name` labels it in errors. Decoded in the sandbox (data/sandbox.py: a worker process under a memory and a time
    cap, Pillow only): its format allowed by signature, its header read and checked against the pixel limit
    (`max_pixels`, default the process's) and the budget in bytes before any pixel is decoded. Grey, palette and
    alpha images are converted to the model's `channels`, 16-bit ones scaled, an animation gives its first frame,
    EXIF orientation is applied (a portrait photo stands upright).

    `size`: what the consumer resizes the image to, the shorter side (int), or (shorter side, longest side at most)
    as a detector's min_size/max_size; an image more than twice that is decoded smaller (a JPEG by DCT scaling,
    others reduced by a whole factor), never below twice it. None, or $RESNETS_EXACT_DECODE: full size."""
    return decode_sized(data, name, channels, max_pixels=max_pixels, size=size)[0]


def decode_sized(
    data: bytes,
    name: str,
    channels: int = 3,
    *,
    max_pixels: int | None = None,
    size: int | tuple[int, int | None] | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """decode_bytes, and the image's full (width, height), upright: what coordinates on the decoded image, which may
    be smaller, are scaled back to."""
    array, full = decode_array(data, name, channels, max_pixels=max_pixels, size=size)
    # the pixels as the decoder sent them, (H, W, C) -> (C, H, W): one copy, no conversion
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous(), full


def read_mode(channels: int):
    """torchvision.io's decoding mode for a model of `channels` input channels (RGB or grey)."""
    from torchvision.io import ImageReadMode

    return ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY


class TensorDataset(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]):
        assert images.dtype == torch.uint8 and images.ndim == 4 and len(images) == len(labels)
        self.images, self.labels, self.classes = images, labels, list(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "TensorDataset":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TensorDataset(self.images[idx], self.labels[idx], self.classes)

    def relabel(self, mapping: dict[int, int], classes: Sequence[str]) -> "TensorDataset":
        """Labels mapped old -> new (every label must be in `mapping`), with the new class names."""
        labels = torch.tensor([mapping[int(t)] for t in self.labels.tolist()], dtype=self.labels.dtype)
        return TensorDataset(self.images, labels, classes)


class FileDataset(Dataset):
    """Images with labels, read (`read(i)`: the bytes, bounded) and decoded on access; samples are (name, label),
    the name a file's path here (a shard's member in shards.ShardDataset). `size` is what the loader's transform
    resizes to (decode_bytes' `size`: set by the loaders), None for full size."""

    size: int | tuple[int, int | None] | None = None

    def __init__(self, samples: list[tuple[str, int]], classes: Sequence[str], channels: int = 3):
        self.samples, self.classes, self.channels = samples, list(classes), channels

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, i: int) -> bytes:
        return read_image_file(self.samples[i][0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        name, label = self.samples[i]
        return decode_bytes(self.read(i), name, self.channels, size=self.size), label

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    def subset(self, indices: Sequence[int]) -> "FileDataset":
        return FileDataset([self.samples[int(i)] for i in indices], self.classes, self.channels)

    def relabel(self, mapping: dict[int, int], classes: Sequence[str]) -> "FileDataset":
        return FileDataset([(p, mapping[t]) for p, t in self.samples], classes, self.channels)

    def numbered(self, channels: int) -> "FileDataset":
        """The same images decoded to `channels`, each labelled with its position (how inference names them)."""
        return FileDataset([(p, i) for i, (p, _) in enumerate(self.samples)], [], channels)


def label_map(names: Sequence[str], classes: Sequence[str] | None, where) -> list[int]:
    """The label in `classes` (the training set's, in its order) of each of `names` (a split's own classes, in its
    order); without `classes`, their own. A name the training set lacks is refused in one line naming `where`."""
    if classes is None:
        return list(range(len(names)))
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise ResnetsError(f"{where} has classes not in the training set: {', '.join(unknown[:5])}")
    order = {c: i for i, c in enumerate(classes)}
    return [order[c] for c in names]


def image_folder(root: str | os.PathLike, channels: int = 3, classes: Sequence[str] | None = None) -> FileDataset:
    """One subfolder per class (sorted names, as torchvision's ImageFolder). Images are found recursively."""
    root = Path(root)
    if not root.is_dir():
        raise ResnetsError(f"data folder not found: {root}")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise ResnetsError(f"{root} has no class subfolders (expected {root}/<class>/<image>)")
    label_map(found, classes, root)
    classes = list(classes) if classes is not None else found
    samples = []
    for idx, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise ResnetsError(f"class folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
        samples += [(str(p), idx) for p in files]
    return FileDataset(samples, classes, channels)


def csv_manifest(path: str | os.PathLike, channels: int = 3, classes: Sequence[str] | None = None) -> FileDataset:
    """Rows of `path,label` (a header row is allowed); relative paths are relative to the CSV's folder."""
    path = Path(path)
    if not path.is_file():
        raise ResnetsError(f"CSV manifest not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ResnetsError(f"{path} is not a CSV manifest of path,label rows (UTF-8 text): {e}") from None
    if rows and rows[0][0].strip().lower() in ("path", "file", "filename", "image"):
        rows = rows[1:]
    if not rows:
        raise ResnetsError(f"{path} lists no images")
    if any(len(r) < 2 for r in rows):
        raise ResnetsError(f"{path}: every row needs path,label")
    labels = [r[1].strip() for r in rows]
    if classes is None:
        classes = sorted(set(labels), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for (p, _, *rest), label in zip(rows, labels):
        if label not in index:
            raise ResnetsError(f"{path}: label {label!r} is not a known class")
        full = Path(p.strip())
        samples.append((str(full if full.is_absolute() else path.parent / full), index[label]))
    return FileDataset(samples, list(classes), channels)


def synthetic(n: int, num_classes: int, size: int, channels: int = 3, seed: int = 0) -> TensorDataset:
    """Random images for throughput runs (no learning signal)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return TensorDataset(images, labels, [str(i) for i in range(num_classes)])
