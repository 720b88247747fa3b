"""What training a segmenter (FCN, DeepLabV3) adds to the detectors' trainer (engine/detection.py, which runs
both: run folder, checkpoints, exact resume, AMP, DDP, progress): its data (a mask folder), its model (the
backbone from classification weights, or a segmenter's weights with a new classifier for other classes), its loss
(torchvision's reference: cross-entropy on "out" plus half of it on "aux", pixels marked 255 left out) and its
scores (segment.mask_scores: mIoU, pixel accuracy)."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import SEGMENTATION_AUGMENTS
from ..config import TrainConfig
from ..data import masks
from ..errors import ResnetsError
from ..factory import create_from_weights, create_model
from ..models import get_entry

log = logging.getLogger("resnets")
AUX_WEIGHT = 0.5  # torchvision's segmentation reference


def data(cfg: TrainConfig) -> tuple[masks.MaskFolder, masks.MaskFolder]:
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
    augment = cfg.augment if cfg.augment in SEGMENTATION_AUGMENTS else "hflip"  # the config's default: flips
    return train.with_augment(augment, cfg.train_crop or 480, cfg.seed), val


def model(cfg: TrainConfig, classes: list[str], options: dict[str, Any]) -> nn.Module:
    """The segmenter for `classes`: new, from a segmenter's weights (a new classifier when the classes differ),
    or with its backbone from classification weights."""
    n = len(classes)
    if not cfg.weights:
        net = create_model(cfg.model, num_classes=n, **options)
    else:
        source = create_from_weights(cfg.weights)
        if get_entry(source.meta.architecture).family == "segmentation":
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


def loss(net: nn.Module, images: list[torch.Tensor], targets: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """torchvision's reference loss: cross-entropy of "out" plus AUX_WEIGHT x that of "aux" (pixels 255 ignored)."""
    if len({tuple(im.shape) for im in images}) > 1:
        raise ResnetsError(
            "the images of a batch differ in size; train with --augment scale (random scale, a --train-crop crop)"
        )
    x = torch.stack(images).to(device, non_blocking=True)
    y = torch.stack(targets).to(device, non_blocking=True)
    out = net(x)
    total = F.cross_entropy(out["out"].float(), y, ignore_index=masks.IGNORE)
    if "aux" in out:
        total = total + AUX_WEIGHT * F.cross_entropy(out["aux"].float(), y, ignore_index=masks.IGNORE)
    return total
