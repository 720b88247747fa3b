"""`build(cfg)` turns a training config into the train and validation datasets and everything the engine needs to
know about them (classes, channels, crop sizes, normalisation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import ResnetsError
from .datasets import synthetic
from .preprocessing import Preprocessing
from .registry import get_dataset

log = logging.getLogger("resnets")


@dataclass
class DataBundle:
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    classes: list[str]
    in_chans: int
    train_crop: int
    eval_resize: int
    eval_crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    held_out: float = 0.0  # the fraction of each class held out to validate on, where the data had no validation set


def _by_class(targets: list[int]) -> list[list[int]]:
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t, []).append(i)
    return [idx for _, idx in sorted(by_class.items())]


def stratified_split(targets: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): `fraction` of every class held out, chosen by a seeded shuffle."""
    g = torch.Generator().manual_seed(seed)
    train, held = [], []
    for idx in _by_class(targets):
        perm = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        k = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
        held += perm[:k]
        train += perm[k:]
    return sorted(train), sorted(held)


def select_classes(ds, wanted: list[str]):
    """Only the images of the `wanted` classes (names or indices), relabelled 0..k-1 in the order given."""
    index = {c: i for i, c in enumerate(ds.classes)}
    picked = []
    for w in wanted:
        w = str(w).strip()
        if w in index:
            picked.append(index[w])
        elif w.isdigit() and int(w) < len(ds.classes):
            picked.append(int(w))
        else:
            raise ResnetsError(f"class {w!r} is not in the data (classes: {', '.join(ds.classes[:12])})")
    if len(set(picked)) != len(picked):
        raise ResnetsError("--classes names a class twice")
    remap = {old: new for new, old in enumerate(picked)}
    keep = [i for i, t in enumerate(ds.targets) if t in remap]
    sub = ds.subset(keep)
    return sub.relabel(remap, [ds.classes[i] for i in picked])


def per_class_subset(targets: list[int], n: int, seed: int) -> list[int]:
    """At most `n` indices of every class, chosen by a seeded shuffle."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for idx in _by_class(targets):
        out += [idx[j] for j in torch.randperm(len(idx), generator=g)[:n].tolist()]
    return sorted(out)


def build(cfg, in_chans: int | None = None, preprocessing=None) -> DataBundle:
    """`in_chans` (files are decoded to it) and `preprocessing` (normalisation and sizes) come from pretrained
    weights when fine-tuning image files; built-in datasets keep their own."""
    spec = get_dataset(cfg.dataset)
    channels = cfg.in_chans or in_chans or 3
    mean, std, native = spec.mean, spec.std, spec.native
    if spec.kind == "synthetic":
        native = size = cfg.train_crop or 224
        tr = synthetic(cfg.synthetic_samples, cfg.synthetic_classes, size, seed=cfg.seed)
        va = synthetic(max(cfg.synthetic_samples // 8, 1), cfg.synthetic_classes, size, seed=cfg.seed + 1)
    elif spec.name == "csv" or (spec.name == "wds" and cfg.val_data):  # the validation images: a second manifest
        tr = spec.load("train", cfg.data, channels=channels)  # (or a second set of shards)
        va = spec.load("train", cfg.val_data, channels=channels, classes=tr.classes) if cfg.val_data else None
    else:
        tr = spec.load("train", cfg.data, cfg.download, channels=channels)
        va = spec.load("test", cfg.data, cfg.download, channels=channels, classes=tr.classes)
    if cfg.classes:
        tr = select_classes(tr, cfg.classes)
        va = select_classes(va, cfg.classes) if va is not None else None
    if len(tr.classes) < 2:
        raise ResnetsError(
            f"the training data has {len(tr.classes)} class ({', '.join(tr.classes)}); at least 2 are needed"
        )
    if cfg.per_class:
        tr = tr.subset(per_class_subset(tr.targets, cfg.per_class, cfg.seed))
    held_out = 0.0
    if va is None or cfg.val_split > 0:
        frac = cfg.val_split or 0.1
        held_out = frac if not cfg.val_split else 0.0
        counts = torch.bincount(torch.tensor(tr.targets), minlength=len(tr.classes)).tolist()
        few = [c for c, k in zip(tr.classes, counts) if k < 2]
        if few:
            raise ResnetsError(
                f"{len(tr.classes)} classes but only {len(tr)} images: class {few[0]!r} has 1 image, and each "
                "class needs at least 2 to hold one out for validation (or give a val/ folder)"
            )
        keep, held = stratified_split(tr.targets, frac, cfg.seed)
        tr, va = tr.subset(keep), tr.subset(held)
        if not cfg.val_split:  # said, not silent: where the validation images come from
            log.warning(
                "%s has no validation split: validating on %d training images held out (%g%% of each class, "
                "seeded; --val-split sets the fraction, --val-data names a validation set)",
                cfg.data or cfg.dataset, len(va), 100 * frac,
            )  # fmt: skip
    if cfg.limit_train:
        tr = tr.subset(
            torch.randperm(len(tr), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.limit_train].tolist()
        )
    if cfg.limit_val:
        va = va.subset(list(range(min(cfg.limit_val, len(va)))))
    in_chans = spec.channels or (3 if spec.kind == "synthetic" else channels)
    pre = preprocessing if not native else None
    if pre is not None:  # the weights' statistics, made as many as the channels (averaged) if they differ
        mean, std = pre.mean, pre.std
    stats = Preprocessing(1, 1, mean=tuple(mean), std=tuple(std)).for_channels(in_chans)
    mean, std = stats.mean, stats.std
    crop = cfg.train_crop or native or (pre.crop if pre else 224)
    eval_crop = cfg.eval_crop or native or (pre.crop if pre else 224)
    eval_resize = cfg.eval_resize or (
        eval_crop if native else pre.resize if pre and pre.crop == eval_crop else round(eval_crop * 256 / 224)
    )
    return DataBundle(
        tr, va, list(tr.classes), in_chans, crop, eval_resize, eval_crop, tuple(mean), tuple(std), held_out
    )
