"""Segmenters used: mIoU and pixel accuracy of a model on a mask folder (torchmetrics' MulticlassJaccardIndex and
MulticlassAccuracy: a library's, not ours), masks predicted for image files, and those masks coloured and laid over
the photos. Training (tasks/segmentation.py), `resnets eval` and `resnets segment` use these."""

from __future__ import annotations

import sys
import types
from typing import Iterable

import torch
from torch import nn

from .data import coco, masks
from .data.datasets import BadSample, decode_sized, read_image_file
from .data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from .detect import counted, image_files, shrunk
from .devices import autocast
from .meta import meta_of, traits_of


def is_segmenter(model: nn.Module) -> bool:
    return traits_of(model).name == "segmentation"


def class_names(model: nn.Module) -> list[str]:
    meta = meta_of(model)
    n = meta.options.get("num_classes", 21)
    names = list(meta.class_names or [])
    return names if len(names) == n else [f"class {k}" for k in range(n)]


def predict_masks(model: nn.Module, images: list[torch.Tensor], amp: str = "none") -> list[torch.Tensor]:
    """Normalised images (3, H, W) of any sizes -> each one's class map (H, W), int64 on the CPU (images of one
    size share a forward pass)."""
    device = next(model.parameters()).device
    out: list[torch.Tensor | None] = [None] * len(images)
    by_shape: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        by_shape.setdefault(tuple(im.shape), []).append(i)
    with torch.no_grad(), autocast(device, amp):
        for idx in by_shape.values():
            logits = model(torch.stack([images[i] for i in idx]).to(device))["out"]
            for i, m in zip(idx, logits.argmax(1).cpu()):
                out[i] = m
    return out


@torch.no_grad()
def mask_scores(
    model: nn.Module,
    dataset,
    device: torch.device,
    *,
    amp: str = "none",
    batch_size: int = 8,
    workers: int = 0,
    rank: int = 0,
    world: int = 1,
    bar=None,
) -> dict:
    """{"miou", "pixel_acc", "per_class": {name: IoU}, "n", "bad_samples", "bad_files"} of `model` on `dataset` (a
    data.masks.MaskFolder; pixels marked 255 left out; under torchrun each rank scores its share and torchmetrics
    gathers them). Percentages. A class absent from both the masks and the predictions does not count in the mean."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

    k = len(dataset.classes)
    confusion = MulticlassConfusionMatrix(k, ignore_index=masks.IGNORE)
    accuracy = MulticlassAccuracy(k, average="micro", ignore_index=masks.IGNORE)
    loader = coco.eval_loader(dataset, batch_size, workers, rank, world, masks.collate)
    was = model.training
    model.eval()
    n, bad = 0, []
    try:
        for images, targets, skipped in loader:
            bad += skipped
            for pred, truth in zip(predict_masks(model, images, amp), targets):
                confusion.update(pred.flatten(), truth.flatten())
                accuracy.update(pred.flatten(), truth.flatten())
            n += len(images)
            if bar is not None:
                bar.update(1)
    finally:
        model.train(was)
    cm = confusion.compute().double()
    union = cm.sum(0) + cm.sum(1) - cm.diag()
    iou = torch.where(union > 0, cm.diag() / union.clamp(min=1), torch.full_like(union, float("nan")))
    present = ~iou.isnan()
    return {
        "miou": round(100 * iou[present].mean().item(), 3) if present.any() else 0.0,
        "pixel_acc": round(100 * accuracy.compute().item(), 3),
        "per_class": {c: round(100 * v, 3) for c, v, p in zip(dataset.classes, iou.tolist(), present.tolist()) if p},
        **counted(n, bad, world),
    }


def palette(k: int) -> torch.Tensor:
    """k distinct colours (uint8 (k, 3)), the background black, as Pascal VOC colours its masks."""
    colours = torch.zeros(k, 3, dtype=torch.uint8)
    for i in range(k):
        c, j = i, 0
        while c:
            for ch in range(3):
                colours[i, ch] |= ((c >> ch) & 1) << (7 - j)
            c, j = c >> 3, j + 1
    return colours


def coloured(mask: torch.Tensor, k: int) -> torch.Tensor:
    """A class map (H, W) as an RGB picture uint8 (3, H, W)."""
    return palette(max(k, 1))[mask.clamp(0, k - 1)].permute(2, 0, 1).contiguous()


def overlay(image: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """The photo (uint8 (3, H, W)) with the non-background classes of `mask` laid over it (the mask brought to the
    photo's size, nearest, when it is another: a large photo's map is kept at the model's size)."""
    from torchvision.utils import draw_segmentation_masks

    mask = at_size(mask, tuple(image.shape[1:]))
    present = [c for c in range(1, k) if (mask == c).any()]
    if not present:
        return image
    stack = torch.stack([mask == c for c in present])
    colours = [tuple(int(v) for v in palette(k)[c]) for c in present]
    return draw_segmentation_masks(image, stack, alpha=0.5, colors=colours)


def at_size(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A class map (H, W) at `size` (height, width), nearest: for drawing it over a picture of another size."""
    import torch.nn.functional as F

    if tuple(mask.shape) == tuple(size):
        return mask
    return F.interpolate(mask[None, None].to(torch.uint8), size=size, mode="nearest-exact")[0, 0].to(mask.dtype)


def input_size(width: int, height: int, size: int = 520) -> tuple[int, int]:
    """(height, width) a photo of `width` x `height` is fed to a segmenter at: the shorter side at `size`
    (torchvision's evaluation of these models: 520), the longer at most twice that (a panorama is not fed
    520 x 10,000)."""
    scale = min(size / min(width, height), 2 * size / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def model_input(
    data: bytes, name: str, size: int = 520, *, max_pixels: int | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """An image file's bytes as what `class_map` takes, and the image's full (width, height): decoded no larger
    than twice what the model needs (datasets.decode_sized; `max_pixels` its pixel limit) and, when larger than the
    model's input (`input_size`), resized down to it in uint8; a smaller image as it is. BadSample if unreadable."""
    img, (w, h) = decode_sized(data, name, 3, max_pixels=max_pixels, size=(size, 2 * size))
    return shrunk(img, input_size(w, h, size)), (w, h)


def segment(model: nn.Module, paths: Iterable[str], *, size: int = 520, precision: str = "fp32") -> list[dict]:
    """Each image file's class map: [{"path", "width", "height", "mask" (h, w) int64, "classes": {name: share of
    pixels}}] or {"path", "error"}. Each image is fed to the model at `input_size` (the shorter side at `size`,
    torchvision's evaluation of these models); the map is at the image's own size (width x height) when it is no
    larger than that, else at the size the model saw (`overlay` and `at_size` bring it to a picture's size): a large
    photo never becomes a float tensor, or a map, of its full size."""
    names = class_names(model)
    amp = {"fp32": "none"}.get(precision, precision)
    model.eval()
    results = []
    for path in image_files(paths):
        try:
            img, (w, h) = model_input(read_image_file(path), path, size)
        except BadSample as e:
            results.append({"path": path, "error": e.reason})
            continue
        mask = class_map(model, img, size, amp)
        results.append({"path": path, "width": w, "height": h, "mask": mask, **shares(mask, names)})
    return results


def overlaid(path: str, result: dict, k: int) -> torch.Tensor:
    """The image file at the size of its map in `result` (segment's), the map laid over it: what `resnets segment
    --out` writes, without decoding a large photo whole."""
    mask = result["mask"]
    short, long = sorted(mask.shape)
    img, _ = decode_sized(read_image_file(path), path, 3, size=(short, long))
    img = shrunk(img, tuple(mask.shape))
    return overlay(img, mask, k)


def class_map(model: nn.Module, img: torch.Tensor, size: int = 520, amp: str = "none") -> torch.Tensor:
    """One photo (uint8 (3, H, W)) -> its class map (H, W) int64: resized to `input_size` (a photo already that size,
    as `model_input` gives, is not resized), normalised with ImageNet's statistics, the logits brought back to
    (H, W)."""
    import torch.nn.functional as F

    device = next(model.parameters()).device
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    h, w = img.shape[1:]
    fed = input_size(w, h, size)
    x = img[None].float() / 255
    if fed != (h, w):
        x = F.interpolate(x, size=fed, mode="bilinear")
    with torch.no_grad(), autocast(device, amp):
        logits = model(((x[0] - mean) / std)[None].to(device))["out"].float()
    if fed != (h, w):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear")
    return logits.argmax(1)[0].cpu()


def shares(mask: torch.Tensor, names: list[str]) -> dict:
    """{"classes": {name: share of the pixels}} of a class map (the classes present)."""
    counts = torch.bincount(mask.flatten(), minlength=len(names)).double() / max(mask.numel(), 1)
    return {"classes": {names[c]: round(float(v), 4) for c, v in enumerate(counts.tolist()) if v > 0}}


class _Callable(types.ModuleType):
    """This module, callable as its segment(): `resnets.segment(model, paths)`, as the package's other functions."""

    def __call__(self, *args, **kwargs):
        return segment(*args, **kwargs)


sys.modules[__name__].__class__ = _Callable
