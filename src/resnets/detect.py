"""Detectors used: COCO's box and mask mAP of a model on a COCO folder (torchmetrics' MeanAveragePrecision over
pycocotools: the reference implementation, not ours), boxes found in image files, and those boxes drawn (by
torchvision.utils). Training (tasks/detection.py), `resnets eval`, `resnets detect` and the server use these."""

from __future__ import annotations

import logging
import math
import os
import sys
import types
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .data import coco
from .data.datasets import IMAGE_SUFFIXES, BadSample, decode_sized, read_image_file
from .devices import autocast
from .distributed import gather_objects
from .errors import ResnetsError
from .meta import meta_of, traits_of

log = logging.getLogger("resnets")

# the scores eval.json and the command line report, as torchmetrics names them (mAP@[.5:.95], AP50, AP75, per size)
SCORES = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")


def is_detector(model: nn.Module) -> bool:
    return traits_of(model).name == "detection"


def has_masks(model: nn.Module) -> bool:
    from torchvision.models.detection import MaskRCNN

    return isinstance(model, MaskRCNN)


def class_names(model: nn.Module) -> list[str]:
    """The model's label names, index = label (0 the background); "class N" where the model has no names."""
    try:
        meta = meta_of(model)
    except ResnetsError:  # a detector built by torchvision itself: COCO's 91 outputs, unnamed
        meta = None
    names = list(meta.class_names or []) if meta is not None else []
    n = meta.options.get("num_classes", 91) if meta is not None else 91
    return names if len(names) == n else ["__background__"] + [f"class {k}" for k in range(1, n)]


def _for_metric(out: dict, masks: bool) -> dict:
    d = {"boxes": out["boxes"].float().cpu(), "scores": out["scores"].float().cpu(), "labels": out["labels"].cpu()}
    if masks:
        d["masks"] = (out["masks"][:, 0] > 0.5).cpu()
    return d


def _truth(t: dict, masks: bool, areas: dict[int, list[float]]) -> dict:
    """A sample's target as torchmetrics takes it, with COCO's "area" of each object where the file gives it (the
    size ranges of map_small/medium/large go by it, as COCOeval's do; without it torchmetrics takes the box's)."""
    d = {"boxes": t["boxes"], "labels": t["labels"], "iscrowd": t["iscrowd"]}
    area = areas.get(t.get("image_id"))
    if area is not None and len(area) == len(t["boxes"]):
        d["area"] = torch.tensor(area, dtype=torch.float32)
    if masks:
        d["masks"] = t["masks"].bool()
    return d


def _areas(dataset) -> dict[int, list[float]]:
    """COCO's area of each object of each image (image id -> one per box, in the record's order), read from the
    annotation file of a COCO set (a VOC set has none: {}). An annotation is found by its box as the loader clips
    it; one without an area gets its box's, as pycocotools gives a detection."""
    if not dataset.source.is_file():
        return {}
    by_box: dict[tuple, list[float]] = {}
    records = {rec.image_id: rec for rec in dataset.records}
    for ann in coco.read_json(dataset.source).get("annotations", []):
        rec, box = records.get(ann.get("image_id")), ann.get("bbox")
        if rec is None or not isinstance(box, list) or len(box) != 4:
            continue
        x, y, w, h = box
        clipped = (rec.image_id, max(x, 0.0), max(y, 0.0), min(x + w, rec.width), min(y + h, rec.height))
        area = ann.get("area")
        by_box.setdefault(clipped, []).append(float(area) if isinstance(area, (int, float)) else float(w * h))
    out = {}
    for rec in dataset.records:
        found = [by_box.get((rec.image_id, *b), []) for b in rec.boxes]
        out[rec.image_id] = [
            f.pop(0) if f else (b[2] - b[0]) * (b[3] - b[1]) for f, b in zip(found, rec.boxes)
        ]  # (a box met twice in one image takes the file's areas in order)
    return out


@torch.no_grad()
def coco_map(
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
    """COCO's scores of `model` on `dataset` (a data.coco.CocoDetection; under torchrun each rank scores its
    share and torchmetrics gathers them): {"map", "map_50", ..., "per_class": {name: AP}, "segm": {...} for a
    mask model, "n", "bad_samples", "bad_files"}. Scores are percentages."""
    from torchmetrics.detection import MeanAveragePrecision

    masks = has_masks(model) and dataset.masks
    areas = _areas(dataset)
    kinds = ["bbox", "segm"] if masks else ["bbox"]
    metric = MeanAveragePrecision(iou_type=kinds, class_metrics=True, backend="pycocotools")
    # COCO scores the 100 best boxes of an image, as COCOeval's maxDets does; RetinaNet gives up to 300: not news
    metric.warn_on_many_detections = False
    was = model.training
    model.eval()
    n, bad = 0, []
    try:
        for images, targets, skipped in coco.eval_loader(dataset, batch_size, workers, rank, world):
            bad += skipped
            if images:
                with autocast(device, amp):
                    outs = model([im.to(device) for im in images])
                metric.update([_for_metric(o, masks) for o in outs], [_truth(t, masks, areas) for t in targets])
                n += len(images)
            if bar is not None:
                bar.update(1)
    finally:
        model.train(was)
    return _scores(metric.compute(), dataset.classes, kinds) | counted(n, bad, world)


def counted(n: int, bad: list, world: int) -> dict:
    """{"n", "bad_samples", "bad_files"} of an evaluation over every rank's share (one process: its own)."""
    shares = gather_objects((n, bad), world)
    bad = [b for _, share in shares for b in share]
    return {
        "n": sum(k for k, _ in shares),
        "bad_samples": len(bad),
        "bad_files": [{"path": p, "error": e} for p, e in bad],
    }


def _scores(raw: dict, classes: list[str], kinds: list[str]) -> dict:
    """torchmetrics' dict as plain percentages (-1: no such objects, as pycocotools says), per kind."""

    def pct(v: torch.Tensor) -> float:
        v = float(v)
        return round(100 * v, 3) if v >= 0 else -1.0

    out: dict[str, Any] = {}
    for kind in kinds:
        prefix = f"{kind}_" if len(kinds) > 1 else ""
        scores = {k: pct(raw[prefix + k]) for k in SCORES}
        ids = raw.get(prefix + "classes", raw.get("classes"))
        per = raw.get(prefix + "map_per_class")
        if ids is not None and per is not None:
            ids, per = ids.flatten().tolist(), per.flatten().tolist()
            scores["per_class"] = {classes[i - 1]: pct(v) for i, v in zip(ids, per) if 0 < i <= len(classes)}
        if kind == "bbox":
            out.update(scores)
        else:
            out[kind] = scores
    return out


def image_files(paths: Iterable[str]) -> list[str]:
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += sorted(str(f) for f in Path(p).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(p)
    if not files:
        raise ResnetsError("no image files found in " + ", ".join(map(str, paths)))
    return files


# a detector's (min_size, max_size) when none is known: torchvision's defaults
DEFAULT_INPUT = (800, 1333)


def input_size(model: nn.Module) -> tuple[int, int]:
    """(min_size, max_size) a detector resizes each image to at evaluation (its GeneralizedRCNNTransform's)."""
    t = model.transform
    return int(t.min_size[-1]), int(t.max_size)


def scaled_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(height, width) torchvision's detector transform resizes an image of `width` x `height` to: the shorter side
    to `min_size` unless the longer would pass `max_size`, each side rounded down (interpolate's sizes)."""
    scale = min(min_size / min(width, height), max_size / max(width, height))
    return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))


def shrunk(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`img` (uint8 (C, H, W)) resized down to `size` (height, width) in uint8 with antialiasing, when it is larger;
    an image already within `size` unchanged (the model's own transform enlarges it, as before)."""
    from torchvision.transforms.v2.functional import resize

    if img.shape[1] <= size[0] and img.shape[2] <= size[1]:
        return img
    return resize(img, list(size), antialias=True)


def model_input(
    data: bytes, name: str, min_size: int, max_size: int, *, max_pixels: int | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """An image file's bytes as what a detector of (`min_size`, `max_size`) is fed, and its full (width, height):
    decoded no larger than twice what the model needs (datasets.decode_sized; `max_pixels` its pixel limit),
    brought in uint8 to the size the model's transform would resize it to, so no float copy of a large photo is
    ever made. BadSample if unreadable."""
    img, (w, h) = decode_sized(data, name, 3, max_pixels=max_pixels, size=(min_size, max_size))
    return shrunk(img, scaled_size(w, h, min_size, max_size)), (w, h)


def to_full(out: dict, fed: tuple[int, int], full: tuple[int, int]) -> dict:
    """A detector's output on an image fed at `fed` (height, width) with its boxes in the coordinates of the full
    image (`full`: width, height); masks stay at the size fed."""
    sx, sy = full[0] / fed[1], full[1] / fed[0]
    if (sx, sy) == (1.0, 1.0):
        return out
    scale = torch.tensor([sx, sy, sx, sy], dtype=out["boxes"].dtype, device=out["boxes"].device)
    return {**out, "boxes": out["boxes"] * scale}


@torch.no_grad()
def detect(
    model: nn.Module, paths: Iterable[str], *, score: float = 0.5, batch_size: int = 4, precision: str = "fp32"
) -> list[dict]:
    """Boxes in each image file: [{"path", "width", "height", "boxes": [{"box": [x0, y0, x1, y1], "label",
    "class", "score"}], "below_score": how many more scored under `score`}] (or {"path", "error"} for a file that
    cannot be read), best first, score >= `score`.
    Each image is decoded and resized in uint8 to the size the model sees (`model_input`); boxes, width and height
    are the full image's. Mask R-CNN's "masks" (N, h, w) are at the size the model saw (`draw` scales them)."""
    names, device = class_names(model), next(model.parameters()).device
    amp = {"fp32": "none"}.get(precision, precision)
    files, results = image_files(paths), []
    size = input_size(model)
    model.eval()
    for start in range(0, len(files), batch_size):
        images, fulls, where = [], [], []
        for path in files[start : start + batch_size]:
            try:
                img, full = model_input(read_image_file(path), path, *size)
            except BadSample as e:
                results.append({"path": path, "error": e.reason})
                continue
            images.append(img)
            fulls.append(full)
            where.append(len(results))
            results.append({"path": path})
        if not images:
            continue
        with autocast(device, amp):
            outs = model([im.to(device).float() / 255 for im in images])
        for k, im, full, out in zip(where, images, fulls, outs):
            out = to_full(out, tuple(im.shape[1:]), full)
            keep = out["scores"] >= score
            results[k].update(width=full[0], height=full[1], boxes=_boxes(out, keep, names))
            results[k]["below_score"] = int((~keep).sum())  # found, but scoring under `score`
            if "masks" in out:
                results[k]["masks"] = out["masks"][keep, 0].float().cpu()
    return results


def boxes_of(out: dict, score: float, names: list[str]) -> list[dict]:
    """A detector's output for one image as rows {"box", "label", "class", "score"}, those scoring >= `score`."""
    return _boxes(out, out["scores"] >= score, names)


def _boxes(out: dict, keep: torch.Tensor, names: list[str]) -> list[dict]:
    rows = []
    for box, label, s in zip(out["boxes"][keep].tolist(), out["labels"][keep].tolist(), out["scores"][keep].tolist()):
        name = names[label] if 0 <= label < len(names) else f"class {label}"
        rows.append({"box": [round(v, 2) for v in box], "label": label, "class": name, "score": round(s, 4)})
    return rows


def drawn(path: str, result: dict, size: tuple[int, int] = DEFAULT_INPUT) -> torch.Tensor:
    """The image file as a detector of `size` (min_size, max_size: `input_size(model)`) sees it, with the boxes
    (and masks) of `result` (detect's, in the full image's coordinates) drawn and labelled: uint8 (3, h, w). A
    large photo is drawn at the model's size, never decoded whole."""
    return draw(model_input(read_image_file(path), path, *size)[0], result)


def draw(img: torch.Tensor, result: dict) -> torch.Tensor:
    """`img` (uint8 (3, h, w)) with the boxes (and masks) of `result` drawn and labelled. Boxes are scaled from the
    result's "width" x "height" (the full image) to `img`, masks (nearest) to its size."""
    import torch.nn.functional as F
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    h, w = img.shape[1:]
    boxes = result.get("boxes", [])
    if "masks" in result and len(boxes):
        masks = result["masks"]
        if tuple(masks.shape[1:]) != (h, w):
            masks = F.interpolate(masks[None].float(), size=(h, w), mode="nearest-exact")[0]
        img = draw_segmentation_masks(img, masks > 0.5, alpha=0.4)
    if boxes:
        xy = torch.tensor([b["box"] for b in boxes], dtype=torch.float64)
        sx, sy = w / result.get("width", w), h / result.get("height", h)
        img = draw_bounding_boxes(
            img,
            xy * torch.tensor([sx, sy, sx, sy], dtype=torch.float64),
            labels=[f"{b['class']} {b['score']:.2f}" for b in boxes],
            width=max(2, min(img.shape[1:]) // 200),
            colors="yellow",
        )
    return img


class _Callable(types.ModuleType):
    """This module, callable as its detect(): `resnets.detect(model, paths)`, as the package's other functions."""

    def __call__(self, *args, **kwargs):
        return detect(*args, **kwargs)


sys.modules[__name__].__class__ = _Callable
