"""Augmentation of whole batches on the device that trains: the batched counterpart of `transforms.train_transform`.

The per-image v2 pipelines run one image at a time in CPU workers; on a GPU that leaves the card waiting, and
even on a CPU the per-image calls cost more than the arithmetic. Here a batch of uint8 images (one tensor, or a
list of images of different sizes, as decoded from files) is cropped, resized, flipped, colour-jittered and
erased with a few batched tensor operations on whatever device it lives on, CPU or GPU.

Every random number is a hash of (seed, epoch, sample index, which draw): no generator state, so a run resumed
mid-epoch, a run on N processes and a run with another batch split all see the same augmentation of every
image, and the CPU computes exactly what a GPU computes.

What is equal to the per-image pipeline, given the same drawn parameters: the padded random crop and the flip
(pixel for pixel), random erasing (the same rectangle rule). What is close but not equal: resizing (an
area-averaging bilinear sampler, `torchvision.ops.roi_align`, in place of the antialiased resize; bilinear
whatever `interpolation` says) and colour jitter (brightness, contrast, saturation always in that order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..choices import AUGMENTS
from ..errors import ResnetsError
from .batching import mix_seed, seeded_cpu_rng, to_device
from .transforms import auto_augment_of, auto_augment_transform

_M32 = 0xFFFFFFFF
# the batched path implements these augments; auto_augment (TrivialAugment, RandAugment) runs per image after it
BATCHED_AUGMENTS = AUGMENTS  # every one of them


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2^32 for int64 tensors holding 32-bit values, without overflowing int64."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (the 'lowbias32' mixer) of int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform(seed: int, epoch: int, index: torch.Tensor, stream: int, count: int = 0) -> torch.Tensor:
    """Uniform floats in [0, 1), a pure function of (seed, epoch, index, stream): shape (B,), or (B, count)."""
    key = mix_seed(seed, epoch, stream)
    k1, k2 = key & _M32, (key >> 32) & _M32
    i = index.to(torch.int64) & _M32
    if count:
        i = (i[:, None] * count + torch.arange(count, device=index.device)) & _M32
    u = _hash32((_hash32(i ^ k1) + k2) & _M32)
    return (u >> 8).to(torch.float32) * (1.0 / (1 << 24))  # 24 bits: exact in float32, never 1.0


class _Draws:
    """The uniform numbers of one batch, handed out in order: one block of `width` per image is hashed at once
    (a handful of kernels for the whole batch, not a handful per draw: on a GPU the launches would cost more than
    the arithmetic), another block when one runs out."""

    width = 64

    def __init__(self, seed: int, epoch: int, index: torch.Tensor):
        self.seed, self.epoch, self.index = seed, epoch, index
        self.blocks, self.used = 0, self.width
        self.block = None

    def __call__(self, count: int = 0) -> torch.Tensor:
        k = max(count, 1)
        if k > self.width:
            raise ValueError(f"at most {self.width} numbers per draw")
        if self.used + k > self.width:
            self.blocks += 1
            self.block, self.used = uniform(self.seed, self.epoch, self.index, self.blocks, self.width), 0
        out = self.block[:, self.used : self.used + k]
        self.used += k
        return out if count else out[:, 0]


def _randint(u: torch.Tensor, high: torch.Tensor | int) -> torch.Tensor:
    """Integers in [0, high) from uniforms in [0, 1) (high >= 1: a number, or a tensor of them)."""
    k = (u * high).long()
    return torch.minimum(k, high - 1) if isinstance(high, torch.Tensor) else k.clamp_(max=high - 1)


def _first_valid(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the first True in each row, whether there is one)."""
    found = valid.any(1)
    return valid.float().argmax(1), found


def rrc_boxes(
    d: _Draws,
    heights: torch.Tensor,
    widths: torch.Tensor,
    scale: Sequence[float],
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """RandomResizedCrop's rule (10 tries, else the central crop of the clamped ratio), for every image at once:
    boxes (B, 4) as (top, left, height, width) in pixels."""
    h_img, w_img = heights.double(), widths.double()
    area = h_img * w_img
    target = area[:, None] * (scale[0] + (scale[1] - scale[0]) * d(10).double())
    lr = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(lr[0] + (lr[1] - lr[0]) * d(10).double())
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= w_img[:, None]) & (h > 0) & (h <= h_img[:, None])
    k, found = _first_valid(ok)
    h, w = h.gather(1, k[:, None])[:, 0], w.gather(1, k[:, None])[:, 0]
    top = _randint(d(), (h_img - h + 1).long()).double()
    left = _randint(d(), (w_img - w + 1).long()).double()
    # fallback: the whole image, its aspect ratio clamped to `ratio`, centred
    in_ratio = w_img / h_img
    fw = torch.where(in_ratio < ratio[0], w_img, torch.where(in_ratio > ratio[1], torch.round(h_img * ratio[1]), w_img))
    fh = torch.where(in_ratio < ratio[0], torch.round(w_img / ratio[0]), h_img)
    ftop, fleft = torch.div(h_img - fh, 2, rounding_mode="floor"), torch.div(w_img - fw, 2, rounding_mode="floor")
    return torch.stack(
        [
            torch.where(found, top, ftop),
            torch.where(found, left, fleft),
            torch.where(found, h, fh),
            torch.where(found, w, fw),
        ],
        1,
    )


def resize_boxes(
    heights: torch.Tensor,
    widths: torch.Tensor,
    short: torch.Tensor,
    crop: int,
    top_u: torch.Tensor | None = None,
    left_u: torch.Tensor | None = None,
) -> torch.Tensor:
    """The crop of `crop` pixels from the image resized so its shorter side is `short` (v2.Resize's sizes), as a box
    (top, left, height, width) in the original image's pixels. Centred, or at the random offsets `top_u`/`left_u`."""
    h_img, w_img, s = heights.double(), widths.double(), short.double()
    r = s / torch.minimum(h_img, w_img)
    new_h = torch.where(h_img <= w_img, s, torch.floor(h_img * r))
    new_w = torch.where(w_img <= h_img, s, torch.floor(w_img * r))
    if top_u is None:
        top, left = torch.round((new_h - crop) / 2), torch.round((new_w - crop) / 2)
    else:
        top = _randint(top_u, (new_h - crop + 1).clamp_min(1).long()).double()
        left = _randint(left_u, (new_w - crop + 1).clamp_min(1).long()).double()
    fy, fx = new_h / h_img, new_w / w_img
    return torch.stack([top / fy, left / fx, crop / fy, crop / fx], 1)


def resample(images: torch.Tensor | list[torch.Tensor], boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image to its box (top, left, height, width; fractional pixels allowed) and resize to size x size:
    bilinear, averaging ceil(box / size) samples per output pixel when shrinking (`roi_align`). Float out."""
    from torchvision.ops import roi_align

    boxes = boxes.to(torch.float32)
    xyxy = torch.stack([boxes[:, 1], boxes[:, 0], boxes[:, 1] + boxes[:, 3], boxes[:, 0] + boxes[:, 2]], 1)
    if isinstance(images, torch.Tensor):
        rois = torch.cat([torch.arange(len(images), device=boxes.device, dtype=torch.float32)[:, None], xyxy], 1)
        return roi_align(images.float(), rois, (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    out = [
        roi_align(img[None].float(), [xyxy[i : i + 1]], (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
        for i, img in enumerate(images)
    ]
    return torch.cat(out)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _sizes(images: torch.Tensor | list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(images, torch.Tensor):
        n = len(images)
        return torch.full((n,), images.shape[-2], device=device), torch.full((n,), images.shape[-1], device=device)
    sizes = to_device([tuple(im.shape[-2:]) for im in images], device)  # (B, 2)
    return sizes[:, 0], sizes[:, 1]


def pad_crop_flip(
    images: torch.Tensor, crop: int, pad: int, top_u: torch.Tensor, left_u: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """v2.RandomCrop(crop, padding=pad, pad_if_needed=True) then a horizontal flip where `flip`, for a uint8
    batch in one gather: pixel for pixel what the per-image transforms give with the same offsets."""
    b, c, h, w = images.shape
    extra_h, extra_w = max(crop - (h + 2 * pad), 0), max(crop - (w + 2 * pad), 0)
    xp = (
        F.pad(images, (pad + extra_w, pad + extra_w, pad + extra_h, pad + extra_h))
        if pad or extra_h or extra_w
        else images
    )
    hp, wp = xp.shape[-2:]
    top, left = _randint(top_u, hp - crop + 1), _randint(left_u, wp - crop + 1)
    ar = torch.arange(crop, device=images.device)
    rows = top[:, None] + ar
    cols = left[:, None] + torch.where(flip[:, None], crop - 1 - ar, ar)
    idx = (rows[:, :, None] * wp + cols[:, None, :]).flatten(1)  # (B, crop*crop)
    return xp.flatten(2).gather(2, idx[:, None, :].expand(b, c, -1)).view(b, c, crop, crop)


def erase(
    images: torch.Tensor, d: _Draws, p: float, value: Sequence[int], scale=(0.02, 0.33), ratio=(0.3, 3.3)
) -> torch.Tensor:
    """v2.RandomErasing's rule (with probability p, up to 10 tries for a rectangle of `scale` of the area and
    log-uniform `ratio` that fits) on every image at once; erased pixels take `value` (per channel)."""
    b, c, h, w = images.shape
    apply = d() < p
    area = float(h * w)
    lr = (math.log(ratio[0]), math.log(ratio[1]))
    target = area * (scale[0] + (scale[1] - scale[0]) * d(10).double())
    aspect = torch.exp(lr[0] + (lr[1] - lr[0]) * d(10).double())
    eh, ew = torch.round(torch.sqrt(target * aspect)), torch.round(torch.sqrt(target / aspect))
    k, found = _first_valid((eh < h) & (ew < w))
    eh, ew = eh.gather(1, k[:, None])[:, 0].long(), ew.gather(1, k[:, None])[:, 0].long()
    top, left = _randint(d(), (h - eh + 1).clamp_min(1)), _randint(d(), (w - ew + 1).clamp_min(1))
    rows = torch.arange(h, device=images.device)[None, :]
    cols = torch.arange(w, device=images.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    mask = (in_rows[:, :, None] & in_cols[:, None, :]) & (apply & found)[:, None, None]  # (B, H, W)
    fill = to_device(list(value), images.device, images.dtype).view(1, c, 1, 1)
    return torch.where(mask[:, None], fill, images)


def color_jitter(x: torch.Tensor, d: _Draws, strength: float) -> torch.Tensor:
    """Brightness, contrast and saturation, each by a factor uniform in [1 - strength, 1 + strength] per image,
    on a float batch in [0, 255] (the paper's colour augmentation stand-in)."""
    lo, span = 1 - strength, 2 * strength
    b = (lo + span * d()).view(-1, 1, 1, 1)
    c = (lo + span * d()).view(-1, 1, 1, 1)
    s = (lo + span * d()).view(-1, 1, 1, 1)
    x = (x * b).clamp_(0, 255)
    if x.shape[1] == 3:
        grey = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x * c + grey.mean((2, 3), keepdim=True) * (1 - c)).clamp_(0, 255)
        grey = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x * s + grey * (1 - s)).clamp_(0, 255)
    else:
        x = (x * c + x.mean((2, 3), keepdim=True) * (1 - c)).clamp_(0, 255)
    return x


@dataclass
class BatchAugment:
    """`train_transform`'s augment on whole batches: images (B, C, H, W) uint8, or a list of (C, H, W) uint8 of
    any sizes, all on one device, with their dataset indices -> (B, C, crop, crop) uint8 on that device."""

    augment: str
    crop: int
    mean: Sequence[float]
    seed: int = 0
    pad: int = 4
    auto_augment: str = "none"
    random_erasing: float = 0.0
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.augment not in BATCHED_AUGMENTS:
            raise ResnetsError(f"unknown augment {self.augment!r} (choose from {', '.join(BATCHED_AUGMENTS)})")
        self.auto_augment = auto_augment_of(self.augment, self.auto_augment)
        self._per_image = None
        if self.auto_augment != "none":
            self._per_image = auto_augment_transform(self.auto_augment, self.interpolation)

    def __call__(self, images: torch.Tensor | list[torch.Tensor], index: torch.Tensor, epoch: int) -> torch.Tensor:
        dev = images.device if isinstance(images, torch.Tensor) else images[0].device
        index = to_device(index, dev)
        d = _Draws(self.seed, epoch, index)
        crop, aug = self.crop, self.augment
        if aug in ("paper-cifar", "crop-flip") and isinstance(images, torch.Tensor):
            out = pad_crop_flip(images, crop, self.pad, d(), d(), d() < 0.5)
        else:
            heights, widths = _sizes(images, dev)
            if aug in ("paper-cifar", "crop-flip"):  # images of several sizes: pad each, then one batch
                padded = [F.pad(im, (self.pad,) * 4) for im in images]
                out = pad_crop_flip_list(padded, crop, d(), d(), d() < 0.5)
            else:
                if aug == "paper-imagenet":
                    short = 256 + _randint(d(), 225)  # the shorter side uniform in [256, 480]
                    boxes = resize_boxes(heights, widths, short, crop, d(), d())
                elif aug in ("rrc", "strong"):
                    boxes = rrc_boxes(d, heights, widths, (0.08, 1.0) if aug == "rrc" else (0.25, 1.0))
                else:  # none: resize the shorter side to crop, centre crop
                    boxes = resize_boxes(heights, widths, torch.full_like(heights, crop), crop)
                x = resample(images, boxes, crop)
                flip = (d() < 0.5) if aug != "none" else None
                if flip is not None:
                    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                if aug == "paper-imagenet":
                    x = color_jitter(x, d, 0.4)
                out = _to_uint8(x)
        if self._per_image is not None:
            out = self._auto(out, index, epoch)
        if self.random_erasing > 0:  # erased pixels take the mean colour, i.e. 0 after normalisation
            value = [round(m * 255) for m in self.mean]
            out = erase(out, d, self.random_erasing, value if len(value) == out.shape[1] else value[:1] * out.shape[1])
        return out

    def _auto(self, images: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """TrivialAugment / RandAugment, one image at a time, each with the CPU generator seeded by (seed, epoch,
        index) as the per-image loader does."""
        out = []
        for img, i in zip(images, index.tolist()):
            with seeded_cpu_rng(mix_seed(self.seed, epoch, i, 0xA07A)):
                out.append(self._per_image(img))
        return torch.stack(out)


def pad_crop_flip_list(
    images: list[torch.Tensor], crop: int, top_u: torch.Tensor, left_u: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """pad_crop_flip for already padded images of different sizes (smaller ones padded up to `crop`)."""
    out = []
    for i, im in enumerate(images):
        h, w = im.shape[-2:]
        if h < crop or w < crop:
            dh, dw = max(crop - h, 0), max(crop - w, 0)
            im = F.pad(im, (dw, dw, dh, dh))
            h, w = im.shape[-2:]
        t = int(_randint(top_u[i : i + 1], h - crop + 1))
        left = int(_randint(left_u[i : i + 1], w - crop + 1))
        c = im[:, t : t + crop, left : left + crop]
        out.append(c.flip(-1) if bool(flip[i]) else c)
    return torch.stack(out)


@dataclass
class BatchResizeCrop:
    """`eval_transform` on batches: the shorter side (`squash`: both sides) resized to `resize`, the centre `crop`
    kept; uint8 in and out. Identity where the images already have the crop's size and resize == crop (the
    28/32-pixel nets)."""

    resize: int
    crop: int
    squash: bool = False

    def __call__(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        if (
            isinstance(images, torch.Tensor)
            and self.resize == self.crop
            and images.shape[-2:] == (self.crop, self.crop)
        ):
            return images
        dev = images.device if isinstance(images, torch.Tensor) else images[0].device
        heights, widths = _sizes(images, dev)
        if self.squash:  # the centre crop of the image resized to resize x resize, in the image's own pixels
            h, w, r = heights.double(), widths.double(), float(self.resize)
            top = left = round((self.resize - self.crop) / 2)
            boxes = torch.stack([top * h / r, left * w / r, self.crop * h / r, self.crop * w / r], 1)
        else:
            boxes = resize_boxes(heights, widths, torch.full_like(heights, self.resize), self.crop)
        return _to_uint8(resample(images, boxes, self.crop))
