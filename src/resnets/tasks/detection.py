"""Detection (Faster R-CNN, RetinaNet, Mask R-CNN on our backbones): trained on a COCO folder or a Pascal VOC one
(a seeded share held out when there is no validation split), the model made for the data's classes + background
(new, from a detector's weights with new class layers when the classes differ, or with its backbone from
classification weights), torchvision's losses by name, and COCO's mAP (detect.coco_map) as the score."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..data import coco, voc
from ..data.batching import mix_seed
from ..detect import class_names, coco_map, has_masks
from ..errors import ResnetsError
from ..factory import create_from_weights, create_model
from ..meta import traits_of
from ..models import get_entry
from ..models.detection import reset_classes
from ..models.registry import TASK_TRAITS, check_options
from .base import Batch, Dense, Sets, model_options, register

log = logging.getLogger("resnets")


def _score(v: float, digits: int) -> str:
    """A COCO score as printed: COCO's -1 (no objects of that kind in the set) as "n/a", not a negative score."""
    return "n/a" if v < 0 else f"{v:.{digits}f}"


def map_line(res: dict) -> str:
    """COCO's scores in one line (box, and mask for a mask model)."""
    line = (
        f"box mAP {_score(res['map'], 2)}  AP50 {_score(res['map_50'], 2)}  AP75 {_score(res['map_75'], 2)}  "
        f"(small {_score(res['map_small'], 1)}, medium {_score(res['map_medium'], 1)}, "
        f"large {_score(res['map_large'], 1)})"
    )
    if "segm" in res:
        line += f"; mask mAP {_score(res['segm']['map'], 2)}  AP50 {_score(res['segm']['map_50'], 2)}"
    return line + f" on {res['n']} validation images"


def _split(ds: coco.CocoDetection, fraction: float, seed: int) -> tuple[coco.CocoDetection, coco.CocoDetection]:
    """A seeded share of the images held out for validation (a folder without val/)."""
    g = torch.Generator().manual_seed(mix_seed(seed, 0x5EED))
    order = torch.randperm(len(ds.records), generator=g).tolist()
    k = max(1, round(len(order) * fraction))

    def pick(idx: list[int]) -> coco.CocoDetection:
        return coco.CocoDetection([ds.records[i] for i in sorted(idx)], ds.classes, ds.source, ds.masks)

    return pick(order[k:]), pick(order[:k])


def data(cfg: TrainConfig, masks: bool) -> tuple[coco.CocoDetection, coco.CocoDetection]:
    """The training and validation sets of a COCO folder (or a VOC one), limited and augmented as the config says."""
    if cfg.dataset == "voc":
        return _voc(cfg, masks)
    train_file = coco.find(cfg.data, "train")
    if train_file is None:
        raise ResnetsError(
            f"no {coco.INSTANCES} in {cfg.data}/train or {cfg.data} (a COCO folder: images and instances.json)"
        )
    train = coco.load(train_file, masks=masks, strict=cfg.strict_data)
    val_file = coco.find(cfg.val_data, "val") if cfg.val_data else coco.find(cfg.data, "val")
    if val_file is not None and val_file != train_file:
        val = coco.load(val_file, masks=masks, strict=cfg.strict_data, classes=train.classes)
    elif cfg.val_split:
        train, val = _split(train, cfg.val_split, cfg.seed)
    else:
        raise ResnetsError(
            f"no validation set: {cfg.data}/val/{coco.INSTANCES} is missing (or hold some training images out with --val-split 0.1)"
        )
    return _limited(cfg, train, val)


def _voc(cfg: TrainConfig, masks: bool) -> tuple[coco.CocoDetection, coco.CocoDetection]:
    """A Pascal VOC folder's train and val splits (val: ImageSets/Main/val.txt, or --val-split of train)."""
    if masks:
        raise ResnetsError("Pascal VOC's XML holds boxes, not instance masks: train Mask R-CNN on a COCO folder")
    train = voc.load(cfg.data, "train", strict=cfg.strict_data)
    val = voc.load(cfg.val_data or cfg.data, "val", strict=cfg.strict_data, classes=train.classes)
    if val is None:
        if not cfg.val_split:
            raise ResnetsError(
                f"no {cfg.data}/ImageSets/Main/val.txt (or hold some training images out with --val-split 0.1)"
            )
        train, val = _split(train, cfg.val_split, cfg.seed)
    return _limited(cfg, train, val)


def _limited(cfg: TrainConfig, train: coco.CocoDetection, val: coco.CocoDetection):
    if cfg.limit_train:
        train.records = train.records[: cfg.limit_train]
    if cfg.limit_val:
        val.records = val.records[: cfg.limit_val]
    return train.with_augment(cfg.augment, cfg.seed), val


def model(cfg: TrainConfig, classes: list[str]) -> nn.Module:
    """The detector for `classes` (+ background): new, from a detector's weights (its class layers replaced when
    the classes differ), or with its backbone from classification weights."""
    options = model_options(cfg)
    n = len(classes) + 1
    if not cfg.weights:  # nothing pretrained: the whole backbone trains, with BatchNorm (torchvision's choice)
        options.setdefault("norm", "batch")
        options.setdefault("trainable_layers", 5)
        net = create_model(cfg.model, num_classes=n, **options)
    else:
        source = create_from_weights(cfg.weights)
        if traits_of(source) is TASK_TRAITS["detection"]:
            net = create_from_weights(cfg.weights, cfg.model or None, **options)
            if net.meta.options.get("num_classes") != n or (net.meta.class_names or [])[1:] != classes:
                log.warning("new class layers: %d classes (%s)", len(classes), ", ".join(classes[:5]))
                reset_classes(net, n)
        else:  # classification weights: the backbone's
            arch = source.meta.architecture
            if options.setdefault("backbone", arch) != arch:
                raise ResnetsError(f"--weights are a {arch}'s; --backbone says {options['backbone']}")
            net = create_model(cfg.model, num_classes=n, **options)
            missing, unexpected = net.backbone.body.load_state_dict(source.state_dict(), strict=False)
            missing = [k for k in missing if not k.endswith("num_batches_tracked")]
            if missing:
                raise ResnetsError(f"--weights lack the backbone's {missing[0]} ({len(missing)} tensors)")
            log.info("backbone from %s (%d classifier tensors left out)", cfg.weights, len(unexpected))
    net.meta = net.meta.replace(class_names=["__background__", *classes])
    net.meta.options["num_classes"] = n
    return net


class Detection(Dense):
    traits = TASK_TRAITS["detection"]
    score = "map"
    score_title = "val mAP"
    background = True  # label 0 is the background: the model's classes are the data's + 1
    scores = staticmethod(coco_map)
    eval_data = "COCO or VOC folder"
    collate = staticmethod(coco.collate)

    def data_and_model(self, cfg: TrainConfig, ctx) -> tuple[Sets, nn.Module]:
        check_options(get_entry(cfg.model), model_options(cfg))  # before any file is read
        train, val = data(cfg, "maskrcnn" in cfg.model)
        return Sets.checked(cfg, train, val), model(cfg, train.classes)

    def eval_set(self, model: nn.Module, data: str, limit: int) -> tuple[coco.CocoDetection, dict]:
        """COCO's val/ split (or the folder's own instances.json), or Pascal VOC's val.txt."""
        classes = class_names(model)[1:]
        if (Path(data) / "Annotations").is_dir():  # Pascal VOC's layout
            ds, file = voc.load(data, "val", classes=classes), Path(data) / "ImageSets" / "Main" / "val.txt"
            if ds is None:
                raise ResnetsError(f"no {file} listing the images to evaluate on")
        else:
            file = coco.find(data, "val")
            if file is None:
                raise ResnetsError(f"no {coco.INSTANCES} in {data}/val or {data}")
            ds = coco.load(file, masks=has_masks(model), classes=classes)
        if limit:
            ds.records = ds.records[:limit]
        return ds, {"dataset": "coco", "data": str(file), "classes": classes}

    def batch(self, run, raw) -> Batch:
        b = super().batch(run, raw)
        dev = run.ctx.device
        b.inputs = [im.to(dev, non_blocking=True) for im in b.inputs]
        b.targets = [{k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in b.targets]
        return b

    def forward(self, run, net, inputs, targets, labels) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return net(inputs, targets), torch.zeros((), device=run.ctx.device)  # torchvision's losses by name

    def probe(self, run, n: int) -> tuple[Any, Any, Any]:
        """Images of the size the model trains at, each with one box of a random class."""
        size, dev = run.core.transform.min_size[-1], run.ctx.device
        images = [torch.rand(3, size, size, device=dev) for _ in range(n)]
        box = torch.tensor([[size / 4, size / 4, 3 * size / 4, 3 * size / 4]], device=dev)
        k = len(run.classes)
        targets = [{"boxes": box, "labels": torch.tensor([1 + i % k], device=dev)} for i in range(n)]
        if "maskrcnn" in run.cfg.model:
            for t in targets:
                t["masks"] = torch.zeros(1, size, size, dtype=torch.uint8, device=dev)
        return images, targets, None

    def record(self, ev: dict) -> dict:
        out = {"val_map": ev["map"], "val_map_50": ev["map_50"], "val_map_75": ev["map_75"]}
        if "segm" in ev:
            out["val_mask_map"] = ev["segm"]["map"]
        return out

    def scores_line(self, record: dict) -> str:
        return f"val mAP {record['val_map']:.2f} (AP50 {record['val_map_50']:.2f})"

    per_class_score = "AP"

    def score_line(self, res: dict) -> str:
        return map_line(res)


register(Detection())
