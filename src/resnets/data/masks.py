"""Semantic-segmentation folders (`--dataset masks --data DIR`): DIR/train/images/*, DIR/train/masks/<same stem>.png
(one class index per pixel; 255: ignored), the same under DIR/val, and DIR/classes.txt naming the class of each
index, background first (`resnets data shapes` writes this layout). Every file is untrusted: classes.txt is read
within a size limit and checked; an image without its mask is named and skipped (refused with strict data); a
mask of another size than its image, of more than one channel, or with a value that is not a class is a named bad
sample. Samples are the image normalised with ImageNet's statistics (the segmentation models do not normalise
themselves) and the mask as int64, augmented together with torchvision.transforms.v2 on tv_tensors."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import ResnetsError
from .batching import mix_seed, seeded_cpu_rng
from .datasets import IMAGE_SUFFIXES, BadSample, decode, decode_labels, read_header, read_image_file
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger("resnets")

CLASSES_FILE = "classes.txt"
IGNORE = 255  # a mask value that no class takes: left out of the loss and the scores
MAX_CLASSES_BYTES = 1 << 20


def read_classes(root: Path) -> list[str]:
    """The class names of classes.txt (one per line, index = mask value), checked."""
    path = root / CLASSES_FILE
    if not path.is_file():
        raise ResnetsError(f"no {CLASSES_FILE} in {root} (one class name per line, the background first)")
    if path.stat().st_size > MAX_CLASSES_BYTES:
        raise ResnetsError(f"{path} is larger than {MAX_CLASSES_BYTES:,} bytes; not a list of class names")
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise ResnetsError(f"{path} is not UTF-8 text") from None
    if not 2 <= len(names) <= IGNORE:
        raise ResnetsError(f"{path} names {len(names)} classes; a mask holds 2 to {IGNORE} (255 is 'ignore')")
    if len(set(names)) != len(names):
        raise ResnetsError(f"{path} names a class twice")
    return names


def _pairs(split: Path, strict: bool) -> list[tuple[str, str]]:
    """(image, mask) paths of a split folder, paired by file stem; images without a mask named and skipped."""
    images, masks = split / "images", split / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise ResnetsError(f"{split} needs images/ and masks/ folders")
    found = {p.stem: p for p in masks.iterdir() if p.suffix.lower() == ".png"}
    pairs, lonely = [], []
    for p in sorted(images.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        (pairs.append((str(p), str(found[p.stem]))) if p.stem in found else lonely.append(p))
    if lonely and strict:
        raise ResnetsError(f"{lonely[0]} has no mask {masks / (lonely[0].stem + '.png')} (strict data is on)")
    for p in lonely[:20]:
        log.warning("%s has no mask (%s); skipped", p, masks / (p.stem + ".png"))
    if not pairs:
        raise ResnetsError(f"no image in {images} has its mask in {masks}")
    return pairs


def read_mask(path: str, classes: int, size: tuple[int, int], image: str) -> torch.Tensor:
    """The mask at `path` as int64 (H, W), checked against its image's (H, W) and the classes; decoded in the
    sandbox (datasets.decode_labels), as every image is."""
    import numpy as np

    data = read_image_file(path)
    header = read_header(data, path)
    if header.format != "PNG":
        raise BadSample(path, f"a mask is a PNG; this is {header.format or 'not an image'}", "not_an_image")
    try:
        m = decode_labels(data, path)
    except BadSample as e:
        reason = e.reason if "class indices" in e.reason or "cap" in e.reason else f"a broken PNG ({e.reason})"
        raise BadSample(path, reason, e.kind) from None
    if m.shape != size:
        raise BadSample(
            path, f"the mask is {m.shape[1]}x{m.shape[0]}, its image {Path(image).name} {size[1]}x{size[0]}"
        )
    bad = (m >= classes) & (m != IGNORE)
    if bad.any():
        raise BadSample(path, f"pixel value {int(m[bad][0])} is not a class ({classes} in {CLASSES_FILE}; 255: ignore)")
    return torch.from_numpy(m.astype(np.int64))  # int64 after the checks: 8 bytes a pixel, once


def transforms(augment: str, crop: int):
    """torchvision.transforms.v2 on (Image, Mask): flips, or torchvision's segmentation reference (random scale
    0.5-2x, flip, a random crop of `crop` padded with 0 / ignore), then float and ImageNet's normalisation."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    steps = {
        "none": [],
        "hflip": [v2.RandomHorizontalFlip(0.5)],
        "scale": [
            v2.RandomResize(crop // 2, crop * 2),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE}),
        ],
    }[augment]
    return v2.Compose(
        [
            *steps,
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class MaskFolder(Dataset):
    """A split's (image, mask) pairs. Item `epoch * len + i` is pair i augmented with the RNG seeded by
    (seed, epoch, i), as the other datasets' training keys are."""

    def __init__(
        self, pairs: list[tuple[str, str]], classes: list[str], augment: str = "none", crop: int = 0, seed: int = 0
    ):
        self.pairs, self.classes, self.augment, self.crop, self.seed = pairs, classes, augment, crop, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def with_augment(self, augment: str, crop: int, seed: int = 0) -> "MaskFolder":
        return MaskFolder(self.pairs, self.classes, augment, crop, seed)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors

        epoch, i = divmod(int(key), len(self.pairs))
        image, mask = self.pairs[i]
        img = decode(image, 3)
        target = read_mask(mask, len(self.classes), tuple(img.shape[1:]), image)
        with seeded_cpu_rng(mix_seed(self.seed, epoch, i)):
            img, target = transforms(self.augment, self.crop)(tv_tensors.Image(img), tv_tensors.Mask(target))
        return img.as_subclass(torch.Tensor), target.as_subclass(torch.Tensor)


def load(data: str | os.PathLike, split: str, *, strict: bool = False, classes: list[str] | None = None):
    """The `split` ("train", or "val": DIR/val, validation or test) of the folder `data`; None when it has no such
    split. classes: those of training, which the split's own classes.txt (if any) must repeat."""
    root = Path(data)
    if not root.is_dir():
        raise ResnetsError(f"data folder not found: {root}")
    names = ("train",) if split == "train" else ("val", "validation", "test")
    folder = next((root / n for n in names if (root / n).is_dir()), None)
    if folder is None:
        if split != "train" or not (root / "images").is_dir():
            return None
        folder = root
    own = read_classes(root) if (root / CLASSES_FILE).is_file() or classes is None else classes
    if classes is not None and own != classes:
        raise ResnetsError(f"{root / CLASSES_FILE} does not list the classes of training")
    return MaskFolder(_pairs(folder, strict), own)


def collate(items: list) -> tuple[list, list, list]:
    """(images, masks, bad) of a batch, as data.coco.collate gives them."""
    good = [it for it in items if not isinstance(it, BadSample)]
    bad = [(it.path, it.reason) for it in items if isinstance(it, BadSample)]
    return [g[0] for g in good], [g[1] for g in good], bad
