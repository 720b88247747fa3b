"""How a model is fed: `Preprocessing` (the eval resize, crop, interpolation and statistics, checked when read
from a file) and its transforms. Standard library at import (torch and torchvision when a transform is made), and
below everything that reads it: the datasets and loaders, the model metadata, the weights tables."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

from ..choices import CROP_MODES, INTERPOLATIONS
from ..errors import WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the largest crop a model is fed (resize: twice that): above any published eval size (BiT's 480, timm's 640),
# below what makes one forward pass take gigabytes (a crop of 5000 took 23.6 GB)
MAX_INPUT_SIZE = 1024  # the shorter side to `resize`, or both sides


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation preprocessing: resize the shorter side to `resize` (crop_mode "squash": both sides, ignoring the
    aspect ratio, as timm's squash mode and Keras' `load_img(target_size=...)` do), centre-crop `crop`, scale to
    [0, 1], normalise with mean/std (per channel, in that [0, 1] scale). "nearest" is Pillow's nearest."""

    resize: int
    crop: int
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_mode: str = "center"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """From a saved dict, checked (raises WeightsError saying what is wrong)."""

        def size(key: str) -> int:
            v, high = d.get(key), MAX_INPUT_SIZE * (2 if key == "resize" else 1)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
                or v != int(v)
                or not 1 <= v <= high
            ):
                raise WeightsError(f"{key} must be a whole number of pixels from 1 to {high}; got {v!r}")
            return int(v)

        def stats(key: str, default: tuple[float, ...]) -> tuple[float, ...]:
            v = d.get(key, default)
            if (
                not isinstance(v, (list, tuple))
                or not 1 <= len(v) <= 64
                or any(
                    isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or abs(x) > 1e4
                    for x in v
                )
            ):
                raise WeightsError(f"{key} must be a list of finite numbers, one per channel; got {str(v)[:80]}")
            return tuple(float(x) for x in v)

        if not isinstance(d, dict):
            raise WeightsError(f"preprocessing must be a table; got {type(d).__name__}")
        interp = d.get("interpolation", "bilinear")
        if interp not in INTERPOLATIONS:
            raise WeightsError(f"interpolation must be bilinear, bicubic or nearest; got {interp!r}")
        crop_mode = d.get("crop_mode", "center")
        if crop_mode not in CROP_MODES:
            raise WeightsError(f"crop_mode must be {' or '.join(CROP_MODES)}; got {crop_mode!r}")
        mean, std = stats("mean", IMAGENET_MEAN), stats("std", IMAGENET_STD)
        if len(mean) != len(std):
            raise WeightsError(f"mean and std must have one value per channel; got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise WeightsError(f"std must be positive; got {list(std)}")
        return cls(
            resize=size("resize"), crop=size("crop"), interpolation=interp, mean=mean, std=std, crop_mode=crop_mode
        )

    @classmethod
    def default(cls, crop: int, in_chans: int = 3) -> "Preprocessing":
        """What a net trained at `crop` is fed when its weights record nothing: the ImageNet statistics, and the
        shorter side resized to crop / 0.875 (256 for 224) as torchvision and timm evaluate, or to the crop itself
        for the 32-pixel CIFAR nets."""
        resize = crop if crop <= 32 else round(crop / 0.875)
        return cls(resize, crop).for_channels(in_chans)

    def for_channels(self, n: int) -> "Preprocessing":
        """The same preprocessing for `n` input channels. Grey images fed to a net whose statistics are RGB's (or
        the other way round): every channel gets the average of the channel statistics."""
        if n == len(self.mean):
            return self
        m, s = sum(self.mean) / len(self.mean), sum(self.std) / len(self.std)
        return dataclasses.replace(self, mean=(m,) * n, std=(s,) * n)

    def transform(self):
        """The eval transform, on uint8 images (C, H, W) or batches: shorter side to `resize`, centre `crop`
        (torchvision.transforms.v2; normalisation is `normalizer()`, kept apart so it can run on the device)."""
        from .transforms import eval_transform

        return eval_transform(
            resize=self.resize, crop=self.crop, interpolation=self.interpolation, crop_mode=self.crop_mode
        )

    def normalizer(self):
        """uint8 images -> float, scaled to [0, 1] and normalised (on the images' device)."""
        from .transforms import normalizer

        return normalizer(self.mean, self.std)

    def transforms(self, train: bool = False, augment: str = "rrc"):
        """One callable from an image (a PIL image, or a uint8 / [0, 1] float tensor (C, H, W)) to the model's
        normalised input (C, crop, crop), as torchvision's `weights.transforms()`: `model(pre.transforms()(im)[None])`.
        train: the training transform instead, as timm's `create_transform(is_training=True)`: `augment` (rrc:
        RandomResizedCrop and flips; strong, paper-imagenet, crop-flip, none: resnets train's) to the crop, then
        the same normalisation."""
        return _Pipeline(self, augment if train else None)

    def describe(self) -> str:
        size = f"resize {self.resize}x{self.resize} (squash)" if self.crop_mode == "squash" else f"resize {self.resize}"
        return f"{size}, crop {self.crop}, {self.interpolation}, mean {list(self.mean)}, std {list(self.std)}"


class _Pipeline:
    """Preprocessing.transforms(): decode-free, on the CPU."""

    def __init__(self, pre: Preprocessing, augment: str | None = None):
        from .transforms import train_transform

        self.pre, self.normalize, self.augment = pre, pre.normalizer(), augment
        self.resize_crop = (
            pre.transform()
            if augment is None
            else train_transform(augment, crop=pre.crop, mean=pre.mean, interpolation=pre.interpolation)
        )

    def __call__(self, image):
        from .datasets import image_tensor

        return self.normalize(self.resize_crop(image_tensor(image, len(self.pre.mean))))

    def __repr__(self) -> str:
        train = f", train: {self.augment}" if self.augment else ""
        return f"transforms({self.pre.describe()}{train})"
