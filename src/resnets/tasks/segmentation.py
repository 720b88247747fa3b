"""Segmentation (FCN, DeepLabV3): trained on a mask folder, the model made for the data's classes (the background
one of them: new, from a segmenter's weights with a new classifier when the classes differ, or with its backbone
from classification weights), torchvision's reference loss by name (cross-entropy on "out", half of it on "aux",
pixels marked 255 left out), and mIoU and pixel accuracy (segment.mask_scores) as the scores."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data import masks
from ..errors import ResnetsError
from ..factory import create_from_weights, create_model
from ..meta import traits_of
from ..models import get_entry
from ..models.registry import TASK_TRAITS, check_options
from ..segment import class_names, mask_scores
from .base import Dense, Sets, model_options, register

log = logging.getLogger("resnets")
AUX_WEIGHT = 0.5  # torchvision's segmentation reference


def data(cfg: TrainConfig) -> tuple[masks.MaskFolder, masks.MaskFolder]:
    """The training and validation mask folders, limited and augmented as the config says."""
    train = masks.load(cfg.data, "train", strict=cfg.strict_data)
    if train is None:
        raise ResnetsError(f"no train/ (or images/ and masks/) in {cfg.data}")
    val = masks.load(cfg.val_data or cfg.data, "val", strict=cfg.strict_data, classes=train.classes)
    if val is None:
        raise ResnetsError(f"no validation set: {cfg.data}/val (images/ and masks/) is missing")
    if cfg.limit_train:
        train.pairs = train.pairs[: cfg.limit_train]
    if cfg.limit_val:
        val.pairs = val.pairs[: cfg.limit_val]
    return train.with_augment(cfg.augment, cfg.train_crop or 480, cfg.seed), val


def model(cfg: TrainConfig, classes: list[str], options: dict[str, Any]) -> nn.Module:
    """The segmenter for `classes`: new, from a segmenter's weights (a new classifier when the classes differ),
    or with its backbone from classification weights."""
    n = len(classes)
    if not cfg.weights:
        net = create_model(cfg.model, num_classes=n, **options)
    else:
        source = create_from_weights(cfg.weights)
        if traits_of(source) is TASK_TRAITS["segmentation"]:
            net = create_from_weights(cfg.weights, cfg.model or None, **options)
            if net.meta.options.get("num_classes", 21) != n or (net.meta.class_names or []) != classes:
                log.warning("new classifier: %d classes (%s)", n, ", ".join(classes[:5]))
                reset_classes(net, n)
        else:
            arch = source.meta.architecture
            if options.setdefault("backbone", arch) != arch:
                raise ResnetsError(f"--weights are a {arch}'s; --backbone says {options['backbone']}")
            net = create_model(cfg.model, num_classes=n, **options)
            missing, _ = net.backbone.load_state_dict(source.state_dict(), strict=False)
            missing = [k for k in missing if not k.endswith("num_batches_tracked")]
            if missing:
                raise ResnetsError(f"--weights lack the backbone's {missing[0]} ({len(missing)} tensors)")
    net.meta = net.meta.replace(class_names=list(classes))
    net.meta.options["num_classes"] = n
    return net


def reset_classes(net: nn.Module, n: int) -> None:
    """New last 1x1 convolutions (the main and auxiliary heads) for `n` classes; the rest keeps its weights."""
    for head in (net.classifier, net.aux_classifier):
        if head is not None:
            old = head[-1]
            head[-1] = nn.Conv2d(old.in_channels, n, 1).to(old.weight.device)


def losses(net: nn.Module, images: list[torch.Tensor], targets: list[torch.Tensor], device) -> dict[str, torch.Tensor]:
    """torchvision's reference loss by name: cross-entropy of "out" and AUX_WEIGHT x that of "aux" (pixels 255
    ignored)."""
    if len({tuple(im.shape) for im in images}) > 1:
        raise ResnetsError(
            "the images of a batch differ in size; train with --augment scale (random scale, a --train-crop crop)"
        )
    x = torch.stack(images).to(device, non_blocking=True)
    y = torch.stack(targets).to(device, non_blocking=True)
    out = net(x)
    named = {"out": F.cross_entropy(out["out"].float(), y, ignore_index=masks.IGNORE)}
    if "aux" in out:
        named["aux"] = AUX_WEIGHT * F.cross_entropy(out["aux"].float(), y, ignore_index=masks.IGNORE)
    return named


class Segmentation(Dense):
    traits = TASK_TRAITS["segmentation"]
    score = "miou"
    score_title = "val mIoU"
    background = False  # the background is one of the classes
    scores = staticmethod(mask_scores)
    collate = staticmethod(masks.collate)
    eval_data = "mask folder"

    def eval_set(self, model: nn.Module, data: str, limit: int) -> tuple[masks.MaskFolder, dict]:
        """The mask folder's val/ split, or its own images/ and masks/."""
        classes = class_names(model)
        ds = masks.load(data, "val", classes=classes) or masks.load(data, "train", classes=classes)
        if ds is None:
            raise ResnetsError(f"no val/ (or images/ and masks/) in {data}")
        if limit:
            ds.pairs = ds.pairs[:limit]
        return ds, {"dataset": "masks", "data": str(Path(data)), "classes": classes}

    def data_and_model(self, cfg: TrainConfig, ctx) -> tuple[Sets, nn.Module]:
        options = model_options(cfg)
        check_options(get_entry(cfg.model), options)  # before any file is read
        train, val = data(cfg)
        return Sets.checked(cfg, train, val), model(cfg, train.classes, options)

    def forward(self, run, net, inputs, targets, labels) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return losses(net, inputs, targets, run.ctx.device), torch.zeros((), device=run.ctx.device)

    def probe(self, run, n: int) -> tuple[Any, Any, Any]:
        """Crops of the size the run trains at, each a random class map."""
        size, k = run.cfg.train_crop or 480, len(run.classes)
        images = [torch.rand(3, size, size) for _ in range(n)]
        return images, [torch.randint(0, k, (size, size)) for _ in range(n)], None

    def record(self, ev: dict) -> dict:
        return {"val_miou": ev["miou"], "val_pixel_acc": ev["pixel_acc"]}

    def scores_line(self, record: dict) -> str:
        return f"val mIoU {record['val_miou']:.2f} (pixel accuracy {record['val_pixel_acc']:.2f})"

    per_class_score = "IoU"

    def score_line(self, res: dict) -> str:
        return f"mIoU {res['miou']:.2f}  pixel accuracy {res['pixel_acc']:.2f} on {res['n']} validation images"


register(Segmentation())
