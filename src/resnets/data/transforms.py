"""Image pipelines built from torchvision.transforms.v2.

Per-sample pipelines work on uint8 tensors (C, H, W) and return uint8: batches travel to the device as bytes
(4x less to copy) and are converted and normalised there, a whole batch at once (`normalizer`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import v2

from ..choices import AUGMENTS, AUTO_AUGMENTS
from ..errors import ResnetsError


def auto_augment_of(augment: str, auto_augment: str) -> str:
    """The automatic augmentation in force: "strong" augmentation means TrivialAugment unless one is named."""
    return "trivial" if augment == "strong" and auto_augment == "none" else auto_augment


_INTERP = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}


class Normalizer:
    """uint8 batch (B, C, H, W) or (B, K, C, H, W) -> float32 in [0, 1], normalised per channel: what
    v2.Compose([v2.ToDtype(float32, scale=True), v2.Normalize(mean, std)]) computes, to the bit. v2.Normalize
    copies its mean and std to the device on every call, and a copy from pageable memory makes the CPU wait for
    the GPU's queue; here they are copied once per device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if not all(std):
            raise ResnetsError("std evaluated to zero, leading to division by zero")
        self.mean, self.std = tuple(mean), tuple(std)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._on:
            self._on[x.device] = (
                torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1).to(x.device),
                torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1).to(x.device),
            )
        mean, std = self._on[x.device]
        x = x.to(torch.float32).mul_(1.0 / 255) if x.dtype == torch.uint8 else x.to(torch.float32)
        return x.sub(mean).div_(std)


def normalizer(mean: Sequence[float], std: Sequence[float]) -> Normalizer:
    return Normalizer(mean, std)


def train_transform(
    augment: str,
    *,
    crop: int,
    mean: Sequence[float],
    auto_augment: str = "none",
    random_erasing: float = 0.0,
    interpolation: str = "bilinear",
    pad: int = 4,
) -> v2.Transform:
    """augment:
    - "paper-imagenet": shorter side resized at random in [256, 480] (scale augmentation), random 224 crop, flip,
      colour augmentation (section 3.4; colour jitter stands in for AlexNet's PCA lighting);
    - "rrc": RandomResizedCrop(crop) and flip (the modern recipes);
    - "paper-cifar": `pad` pixels of zero padding each side, random crop, flip (section 4.2);
    - "crop-flip": the same padding and crop with flips, for datasets where mirrored images are natural;
    - "strong": for small data: RandomResizedCrop (scale 0.25-1), flip and TrivialAugment;
    - "none": resize and centre-crop only.
    """
    interp = _INTERP[interpolation]
    if augment == "paper-imagenet":
        steps = [
            v2.RandomShortestSize(list(range(256, 481)), antialias=True),
            v2.RandomCrop(crop),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.4, 0.4, 0.4),
        ]
    elif augment == "rrc":
        steps = [v2.RandomResizedCrop(crop, interpolation=interp, antialias=True), v2.RandomHorizontalFlip()]
    elif augment == "strong":
        steps = [
            v2.RandomResizedCrop(crop, scale=(0.25, 1.0), interpolation=interp, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
        auto_augment = auto_augment_of(augment, auto_augment)
    elif augment in ("paper-cifar", "crop-flip"):
        steps = [v2.RandomCrop(crop, padding=pad, pad_if_needed=True), v2.RandomHorizontalFlip()]
    elif augment == "none":
        steps = [v2.Resize(crop, interpolation=interp, antialias=True), v2.CenterCrop(crop)]
    else:
        raise ResnetsError(f"unknown augment {augment!r} (choose from {', '.join(AUGMENTS)})")
    if auto_augment != "none":
        steps.append(auto_augment_transform(auto_augment, interpolation))
    if random_erasing > 0:
        # erased pixels take the mean colour, i.e. 0 after normalisation
        steps.append(v2.RandomErasing(p=random_erasing, value=[round(m * 255) for m in mean]))
    return v2.Compose(steps)


def auto_augment_transform(name: str, interpolation: str = "bilinear") -> v2.Transform:
    """TrivialAugmentWide ("trivial") or RandAugment ("randaugment") on uint8 images."""
    if name == "trivial":
        return v2.TrivialAugmentWide(interpolation=_INTERP[interpolation])
    if name == "randaugment":
        return v2.RandAugment(interpolation=_INTERP[interpolation])
    raise ResnetsError(f"unknown auto_augment {name!r} (choose from {', '.join(AUTO_AUGMENTS)})")


class NearestResize:
    """Nearest-neighbour resize to `size` (an int: the shorter side; or (height, width)) with Pillow's rule, so
    "nearest" means what it means to PIL-based pipelines (Keras' `load_img`, timm): output pixel i samples
    floor(offset) with offset = scale / 2 + i * scale accumulated in float64, as Pillow's C code does.
    torchvision's NEAREST samples floor(i * scale) and differs on most pixels."""

    def __init__(self, size: int | tuple[int, int]):
        self.size = size

    @staticmethod
    def _index(n_in: int, n_out: int) -> torch.Tensor:
        import numpy as np

        steps = np.full(n_out, n_in / n_out, dtype=np.float64)
        steps[0] *= 0.5
        return torch.from_numpy(np.add.accumulate(steps).astype(np.int64).clip(max=n_in - 1))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        if isinstance(self.size, int):
            s = self.size
            oh, ow = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)  # v2.Resize's sizes
        else:
            oh, ow = self.size
        if (oh, ow) == (h, w):
            return img
        rows, cols = self._index(h, oh).to(img.device), self._index(w, ow).to(img.device)
        return img.index_select(-2, rows).index_select(-1, cols)


def _resize(resize: int, interpolation: str, crop_mode: str):
    """The resize step of evaluation: the shorter side to `resize` ("center"), or both sides ("squash", as
    timm's crop_mode and Keras' `load_img(target_size=...)` do). A no-op on images already that size."""
    size = (resize, resize) if crop_mode == "squash" else resize
    if interpolation == "nearest":
        return NearestResize(size)
    return v2.Resize(size, interpolation=_INTERP[interpolation], antialias=True)


def eval_transform(
    *, resize: int, crop: int, interpolation: str = "bilinear", crop_mode: str = "center"
) -> v2.Transform:
    """Resize the shorter side (or, with crop_mode "squash", both sides) to `resize`, centre-crop `crop`.
    Images already at that size (the 28/32-pixel nets) pass unchanged."""
    return v2.Compose([_resize(resize, interpolation, crop_mode), v2.CenterCrop(crop)])


class _StackedTenCrop:
    """The paper's 10-crop testing: four corners and centre, and their mirror images -> (10, C, crop, crop)."""

    def __init__(self, resize, crop: int):
        self.resize, self.ten = resize, v2.TenCrop(crop)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.ten(self.resize(img)))


def ten_crop_transform(
    *, resize: int, crop: int, interpolation: str = "bilinear", crop_mode: str = "center"
) -> _StackedTenCrop:
    return _StackedTenCrop(_resize(resize, interpolation, crop_mode), crop)


def batch_mix(num_classes: int, mixup: float, cutmix: float) -> v2.Transform | None:
    """MixUp / CutMix on a whole batch (one of them per batch when both are on, as torchvision's recipe does)."""
    ops = []
    if mixup > 0:
        ops.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        ops.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not ops:
        return None
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)
