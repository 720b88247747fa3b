"""Datasets: every item is (image uint8 tensor (C, H, W), label int). Decoding errors are reported, not fatal.

- TensorDataset: images already in memory (Fashion-MNIST, CIFAR, synthetic).
- ImageFolder: ImageNet layout, one subfolder per class.
- CsvManifest: `path,label` rows (label a class name or an index).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from ..errors import ResnetsError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class BadSample(Exception):
    """An image that cannot be used; the loader skips and counts it (or stops, with strict data). `kind` says
    why, for callers that answer differently (a server's status codes): one of BAD_KINDS."""

    def __init__(self, path: str, reason: str, kind: str = "unreadable"):
        assert kind in BAD_KINDS, kind
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.kind = path, reason, kind

    def __reduce__(self):  # crosses from loader worker processes
        return (BadSample, (self.path, self.reason, self.kind))


BAD_KINDS = (
    "unreadable",  # no such file, not a file, a read error; or an image the transform cannot take (too small)
    "empty",  # no bytes at all
    "too_many_pixels",  # over the pixel limit, from the header (a decompression bomb)
    "not_an_image",  # no decoder knows its format
    "corrupt_image",  # a known format whose data is broken (a truncated JPEG or PNG)
)


# images larger than this many pixels are refused from their header, before any decoding (decompression
# bombs: a 1 MB PNG can hold 20000 x 20000 pixels); RESNETS_MAX_PIXELS (or --max-pixels) sets it. Pillow's own
# default limit.
DEFAULT_MAX_PIXELS = 89_478_485


def max_pixels() -> int:
    """The pixel limit in force: $RESNETS_MAX_PIXELS (set by --max-pixels, and seen by loader workers), else the
    default."""
    try:
        return int(os.environ.get("RESNETS_MAX_PIXELS", DEFAULT_MAX_PIXELS))
    except ValueError:
        return DEFAULT_MAX_PIXELS


def check_header(source, name: str | None = None, limit: int | None = None) -> int:
    """Refuse an image over the pixel limit (`limit`, default the process's) from its header (Pillow reads the
    header only), before decoding. `source`: a path or a binary file object; `name` names it in the error.
    Returns its EXIF orientation (1: upright, or unknown)."""
    from PIL import Image

    limit = max_pixels() if limit is None else limit
    name = name if name is not None else os.fspath(source)
    Image.MAX_IMAGE_PIXELS = None  # our limit, not Pillow's warning and error at 1x and 2x its own
    try:
        with Image.open(source) as im:
            w, h = im.size
            if w * h > limit:
                raise BadSample(name, f"{w}x{h} is {w * h:,} pixels, over the limit of {limit:,} (--max-pixels raises it)",
                                "too_many_pixels")  # fmt: skip
            # JPEG, TIFF and WebP read EXIF with the header; a PNG's getexif() would decode the whole image
            orientation = im.getexif().get(0x0112, 1) if im.format in ("JPEG", "MPO", "TIFF", "WEBP") else 1
    except BadSample:
        raise
    except Exception:  # not an image Pillow knows: the decoders will say what is wrong
        return 1
    return orientation if isinstance(orientation, int) else 1


def _to_uint8(img: torch.Tensor) -> torch.Tensor:
    """16-bit (and other) images scaled to uint8; the first frame of an animation."""
    from torchvision.transforms.v2.functional import to_dtype

    if img.ndim == 4:  # (frames, C, H, W): an animated GIF or WebP
        img = img[0]
    return img if img.dtype == torch.uint8 else to_dtype(img, torch.uint8, scale=True)


def pil_to_tensor(im, channels: int) -> torch.Tensor:
    """A Pillow image (its first frame, EXIF orientation applied) as uint8 (channels, H, W), whatever its mode."""
    import numpy as np
    from PIL import ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16/32-bit grey: scale, do not clip
        a = np.asarray(im, dtype=np.float64)
        a = np.clip(a * (255.0 / (65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0)), 0, 255)
        t = torch.from_numpy(a.round().astype(np.uint8))[None]
        return t.expand(3, -1, -1).contiguous() if channels == 3 else t
    if im.mode == "F":
        t = torch.from_numpy(np.clip(np.asarray(im), 0, 255).round().astype(np.uint8))[None]
        return t.expand(3, -1, -1).contiguous() if channels == 3 else t
    from torchvision.transforms.v2.functional import pil_to_tensor as to_tensor

    return to_tensor(im.convert("RGB" if channels == 3 else "L"))


def decode(path: str | os.PathLike, channels: int = 3) -> torch.Tensor:
    """Decode an image file to uint8 (channels, H, W), or raise BadSample with the reason. torchvision.io for
    JPEG/PNG/WebP/GIF, Pillow for the rest (BMP, TIFF, ...). Grey, palette and alpha images are converted,
    16-bit ones scaled, animations give their first frame, EXIF orientation is applied (a portrait photo stands
    upright), and an image over the pixel limit is refused from its header."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadSample(path, "no such file" if not os.path.exists(path) else "not a file")
    check_header(path)
    from torchvision.io import read_file

    return _decode(read_file(path), path, channels, pillow_first=path.lower().endswith((".bmp", ".tif", ".tiff")),
                   source=path)  # fmt: skip


def decode_bytes(data: bytes, name: str, channels: int = 3, *, max_pixels: int | None = None) -> torch.Tensor:
    """`decode` for an image in memory (an upload): the same formats, conversions and pixel limit (`max_pixels`,
    default the process's); `name` only labels it in errors."""
    import io

    if not data:
        raise BadSample(name, "empty file", "empty")
    buf = io.BytesIO(data)
    check_header(buf, name, max_pixels)
    buf.seek(0)
    return _decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), name, channels, source=buf)


def read_mode(channels: int):
    """torchvision.io's decoding mode for a model of `channels` input channels (RGB or grey)."""
    from torchvision.io import ImageReadMode

    return ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY


def _decode(raw: torch.Tensor, name: str, channels: int, *, source, pillow_first: bool = False) -> torch.Tensor:
    """torchvision's decoder (unless `pillow_first`), else Pillow's on `source` (a path or a file object)."""
    from torchvision.io import decode_image

    if not pillow_first:
        try:
            return _to_uint8(decode_image(raw, mode=read_mode(channels), apply_exif_orientation=True))
        except RuntimeError:
            pass
    from PIL import Image

    def bad(e: Exception, kind: str) -> BadSample:
        return BadSample(name, f"cannot decode image ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})", kind)

    try:  # Pillow raises many types for foreign or broken files
        im = Image.open(source)
    except Exception as e:  # no decoder knows it
        raise bad(e, "not_an_image") from None
    try:
        with im:
            im.load()
            return pil_to_tensor(im, channels)
    except Exception as e:  # a known format whose data is broken
        raise bad(e, "corrupt_image") from None


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
    """Files with labels; decodes on access."""

    def __init__(self, samples: list[tuple[str, int]], classes: Sequence[str], channels: int = 3):
        self.samples, self.classes, self.channels = samples, list(classes), channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return decode(path, self.channels), label

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    def subset(self, indices: Sequence[int]) -> "FileDataset":
        return FileDataset([self.samples[int(i)] for i in indices], self.classes, self.channels)

    def relabel(self, mapping: dict[int, int], classes: Sequence[str]) -> "FileDataset":
        return FileDataset([(p, mapping[t]) for p, t in self.samples], classes, self.channels)


def image_folder(root: str | os.PathLike, channels: int = 3, classes: Sequence[str] | None = None) -> FileDataset:
    """One subfolder per class (sorted names, as torchvision's ImageFolder). Images are found recursively."""
    root = Path(root)
    if not root.is_dir():
        raise ResnetsError(f"data folder not found: {root}")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise ResnetsError(f"{root} has no class subfolders (expected {root}/<class>/<image>)")
    classes = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ResnetsError(f"{root} has classes not in the training set: {', '.join(unknown[:5])}")
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
