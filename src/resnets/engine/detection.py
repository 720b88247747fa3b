"""Training a detector (Faster R-CNN, RetinaNet, Mask R-CNN on our backbones) on a COCO folder, or a segmenter (FCN,
DeepLabV3) on a mask folder, with the run folder, lock, config, checkpoints, exact resume (`--resume RUN` or
`auto`), AMP, DDP under torchrun, progress and metrics files of classification (`train` hands their configs here).
The losses are torchvision's; the scores COCO's mAP (detect.coco_map) or mIoU (segment.mask_scores). The backbone
starts from any classification weights `--weights` takes (its architecture becomes the backbone), or the whole
model from a file of its kind (new class layers when the classes differ). What segmenters add: segmentation.py."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import distributed, safe_io
from ..choices import DETECTION_AUGMENTS
from ..config import MODEL_OPTIONS, TrainConfig
from ..data import coco, masks, voc
from ..data.batching import mix_seed
from ..data.loader import TrainBatches
from ..detect import coco_map
from ..devices import autocast, resolve_amp
from ..errors import ResnetsError
from ..factory import create_from_weights, create_model
from ..models import get_entry
from ..models.registry import check_options
from ..segment import mask_scores
from ..weights.files import load_checkpoint, save, save_checkpoint
from . import rundir, segmentation, steps
from .checkpoint import rng_state, set_rng_state
from .optim import make_scheduler
from .outputs import write_csv
from .state import TrainingError

log = logging.getLogger("resnets")
LOSS_SUMS = 2  # the running sums of an epoch: loss x images, images


@dataclass
class DetectionRun:
    cfg: TrainConfig
    ctx: distributed.Context
    run_dir: Path
    core: nn.Module
    net: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler
    train: Any  # coco.CocoDetection, or masks.MaskFolder for a segmenter
    val: Any
    sampler: TrainBatches
    loader: Any
    lock: Any
    fresh: bool
    amp: str
    batches_per_epoch: int
    epochs: int
    total_steps: int
    epoch: int = 0
    batch: int = 0
    step: int = 0
    best: float = -1.0
    skipped: int = 0
    history: list = field(default_factory=list)
    warned: set = field(default_factory=set)
    last_eval: dict | None = None  # the scores of the weights as they are now (None: trained since)
    bar: Any = None
    on_progress: Callable[[dict], None] | None = None

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def segmenter(self) -> bool:
        return get_entry(self.cfg.model).family == "segmentation"

    @property
    def score(self) -> str:
        """The score that picks best.pt: box mAP, or mIoU."""
        return "miou" if self.segmenter else "map"


def _split(ds: coco.CocoDetection, fraction: float, seed: int) -> tuple[coco.CocoDetection, coco.CocoDetection]:
    """A seeded share of the images held out for validation (a folder without val/)."""
    g = torch.Generator().manual_seed(mix_seed(seed, 0x5EED))
    order = torch.randperm(len(ds.records), generator=g).tolist()
    k = max(1, round(len(order) * fraction))

    def pick(idx: list[int]) -> coco.CocoDetection:
        return coco.CocoDetection([ds.records[i] for i in sorted(idx)], ds.classes, ds.source, ds.masks)

    return pick(order[k:]), pick(order[:k])


def _data(cfg: TrainConfig, masks: bool) -> tuple[coco.CocoDetection, coco.CocoDetection]:
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
    augment = cfg.augment if cfg.augment in DETECTION_AUGMENTS else "hflip"  # the config's default: flips
    return train.with_augment(augment, cfg.seed), val


def _options(cfg: TrainConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in MODEL_OPTIONS if k != "in_chans" and getattr(cfg, k) is not None}


def _model(cfg: TrainConfig, classes: list[str]) -> nn.Module:
    """The detector for `classes` (+ background): new, from a detector's weights (its class layers replaced when
    the classes differ), or with its backbone from classification weights."""
    from ..models.detection import reset_classes

    options = _options(cfg)
    n = len(classes) + 1
    if not cfg.weights:  # nothing pretrained: the whole backbone trains, with BatchNorm (torchvision's choice)
        options.setdefault("norm", "batch")
        options.setdefault("trainable_layers", 5)
        model = create_model(cfg.model, num_classes=n, **options)
    else:
        source = create_from_weights(cfg.weights)
        if get_entry(source.meta.architecture).family == "detection":
            model = create_from_weights(cfg.weights, cfg.model or None, **options)
            if model.meta.options.get("num_classes") != n or (model.meta.class_names or [])[1:] != classes:
                log.warning("new class layers: %d classes (%s)", len(classes), ", ".join(classes[:5]))
                reset_classes(model, n)
        else:  # classification weights: the backbone's
            arch = source.meta.architecture
            if options.setdefault("backbone", arch) != arch:
                raise ResnetsError(f"--weights are a {arch}'s; --backbone says {options['backbone']}")
            model = create_model(cfg.model, num_classes=n, **options)
            missing, unexpected = model.backbone.body.load_state_dict(source.state_dict(), strict=False)
            missing = [k for k in missing if not k.endswith("num_batches_tracked")]
            if missing:
                raise ResnetsError(f"--weights lack the backbone's {missing[0]} ({len(missing)} tensors)")
            log.info("backbone from %s (%d classifier tensors left out)", cfg.weights, len(unexpected))
    model.meta = model.meta.replace(class_names=["__background__", *classes])
    model.meta.options["num_classes"] = n
    return model


def _loader(run_cfg: TrainConfig, ds, ctx: distributed.Context, collate) -> tuple[TrainBatches, Any]:
    from torch.utils.data import DataLoader

    sampler = TrainBatches(len(ds), run_cfg.batch_size, seed=run_cfg.seed, rank=ctx.rank, world=ctx.world)
    loader = DataLoader(
        coco.Safe(ds), batch_sampler=sampler, num_workers=run_cfg.workers, collate_fn=collate, persistent_workers=False
    )
    return sampler, loader


def build(cfg: TrainConfig, ctx: distributed.Context, resume: Path | None, changed: dict) -> DetectionRun:
    """Everything that can fail on bad input first (data, model, optimizer); then the run folder is claimed."""
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(cfg.seed)
    check_options(get_entry(cfg.model), _options(cfg))  # before any file is read
    if get_entry(cfg.model).family == "segmentation":
        train, val = segmentation.data(cfg)
        model, collate = segmentation.model(cfg, train.classes, _options(cfg)), masks.collate
    else:
        train, val = _data(cfg, "maskrcnn" in cfg.model)
        model, collate = _model(cfg, train.classes), coco.collate
    if len(train) < cfg.batch_size:
        raise ResnetsError(f"the training set ({len(train)} images) is smaller than one batch ({cfg.batch_size})")
    model = model.to(ctx.device)
    amp = resolve_amp(cfg.amp, ctx.device)
    sampler, loader = _loader(cfg, train, ctx, collate)
    batches = len(train) // cfg.batch_size
    total = cfg.run_steps(batches)
    epochs = math.ceil(total / batches)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = steps.make_optimizer([{"params": params, "lr": cfg.lr, "weight_decay": cfg.weight_decay}], cfg, ctx.device)
    sched, _ = make_scheduler(opt, cfg, total, batches, cfg.lr)
    net = model
    if ctx.distributed:
        dev = ctx.device
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    run_dir, lock, fresh = rundir.claim_and_record(cfg, ctx, resume, changed)
    distributed.barrier(ctx)
    return DetectionRun(
        cfg, ctx, run_dir, model, net, opt, sched, torch.amp.GradScaler(ctx.device.type, enabled=amp == "fp16"),
        train, val, sampler, loader, lock, fresh, amp, batches, epochs, total,
    )  # fmt: skip


def state_dict(run: DetectionRun, epoch: int, batch: int, partial: list | None = None) -> dict:
    core = run.core
    return {
        "resnets": {
            "architecture": core.meta.architecture,
            "options": core.meta.options,
            "class_names": core.meta.class_names,
        },
        "model": core.state_dict(),
        "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
        "epoch": epoch,
        "batch": batch,
        "step": run.step,
        "best_score": run.best,
        "history": run.history,
        "skipped": run.skipped,
        "partial": partial,
        "config": run.cfg.to_dict(),
        "rng": rng_state(),
    }


def restore(run: DetectionRun, state: dict) -> list | None:
    """Continue from a checkpoint; returns the running sums of a mid-epoch one."""
    run.core.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.epoch, run.batch, run.step = state["epoch"], state["batch"], state["step"]
    run.best, run.history, run.skipped = state.get("best_score", -1.0), list(state["history"]), state.get("skipped", 0)
    set_rng_state(state["rng"])
    if run.ctx.is_main:
        log.warning("resuming %s at epoch %d, batch %d (step %d)", run.run_dir, run.epoch + 1, run.batch, run.step)
    return state.get("partial") if run.batch else None


def _checkpoint(run: DetectionRun, epoch: int, batch: int, partial: list | None = None) -> None:
    finite = all(torch.isfinite(t).all() for t in run.core.state_dict().values() if t.is_floating_point())
    if not finite:
        raise TrainingError(
            f"the weights became non-finite at step {run.step}; stopped (try a lower --lr or --clip-grad)"
        )
    if run.ctx.is_main:
        save_checkpoint(state_dict(run, epoch, batch, partial), run.run_dir / "last.pt")


def _step(run: DetectionRun, images: list, targets: list) -> torch.Tensor:
    """One optimizer step on a batch: torchvision's losses summed. Returns [loss x images, images]."""
    cfg, dev = run.cfg, run.ctx.device
    with autocast(dev, run.amp):
        if run.segmenter:
            loss = segmentation.loss(run.net, images, targets, dev)
        else:
            images = [im.to(dev, non_blocking=True) for im in images]
            targets = [{k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
            loss = sum(run.net(images, targets).values())
    run.scaler.scale(loss).backward()
    if cfg.clip_grad > 0:
        run.scaler.unscale_(run.opt)
        nn.utils.clip_grad_norm_(run.core.parameters(), cfg.clip_grad)
    run.scaler.step(run.opt)
    run.scaler.update()
    run.opt.zero_grad(set_to_none=True)
    run.sched.step()
    run.step += 1
    return torch.stack(
        [loss.detach().double().cpu() * len(images), torch.tensor(float(len(images)), dtype=torch.float64)]
    )


def _progress(run: DetectionRun, epoch: int, sums: torch.Tensor, seen: int, t0: float) -> None:
    n = max(sums[1].item(), 1)
    rate = seen / max(time.perf_counter() - t0, 1e-9)
    if run.bar is not None:
        run.bar.update(1)
        run.bar.set_postfix(
            loss=f"{sums[0].item() / n:.3f}", lr=f"{float(run.opt.param_groups[0]['lr']):.3g}", img_s=f"{rate:.1f}"
        )
    if run.on_progress is not None:
        run.on_progress(
            {
                "step": run.step,
                "total_steps": run.total_steps,
                "epoch": epoch + 1,
                "loss": sums[0].item() / n,
                "img_s": rate,
            }
        )


def train_one_epoch(run: DetectionRun, epoch: int, partial: list | None) -> dict:
    cfg, ctx = run.cfg, run.ctx
    first = run.batch if epoch == run.epoch else 0
    run.sampler.set_epoch(epoch, first)
    sums = torch.tensor(partial if partial else [0.0] * LOSS_SUMS, dtype=torch.float64)
    seen, t0 = 0, time.perf_counter()
    if run.bar is not None:
        run.bar.set_description(f"epoch {epoch + 1}/{run.epochs}")
    for b, (images, targets, bad) in enumerate(run.loader, start=first):
        run.skipped += len(bad)
        for path, reason in bad:
            if path not in run.warned:
                run.warned.add(path)
                log.warning("skipped unreadable image %s: %s", path, reason)
        if bad and cfg.strict_data:
            raise ResnetsError(f"unreadable image {bad[0][0]}: {bad[0][1]} (strict data is on)")
        if images:
            seed = mix_seed(cfg.seed, epoch, b, ctx.rank)  # the RPN's and ROI heads' box sampling, per step
            torch.default_generator.manual_seed(seed)
            if ctx.device.type == "cuda":
                torch.cuda.manual_seed(seed)
            sums += _step(run, images, targets)
            run.last_eval = None
            seen += len(images) * ctx.world
            if not math.isfinite(sums[0].item()):
                raise TrainingError(
                    f"the loss became non-finite in epoch {epoch + 1} (step {run.step}); stopped (try a lower --lr)"
                )
        if cfg.checkpoint_steps and run.step % cfg.checkpoint_steps == 0 and b + 1 < run.batches_per_epoch:
            _checkpoint(run, epoch, b + 1, distributed.all_reduce_sum(sums.clone(), ctx).tolist())
        _progress(run, epoch, sums, seen, t0)
        if run.step >= run.total_steps:
            break
    total = distributed.all_reduce_sum(sums.clone(), ctx)
    elapsed = time.perf_counter() - t0
    return {
        "epoch": epoch + 1,
        "step": run.step,
        "lr": float(run.opt.param_groups[0]["lr"]),
        "train_loss": total[0].item() / max(total[1].item(), 1),
        "images_per_s": seen / max(elapsed, 1e-9),
        "time_s": elapsed,
    }


def evaluate(run: DetectionRun) -> dict:
    cfg, ctx = run.cfg, run.ctx
    score = mask_scores if run.segmenter else coco_map
    distributed.average_norm_statistics(run.core, ctx)  # every rank scores, and rank 0 saves, the same model
    return score(
        run.core, run.val, ctx.device, amp=run.amp, batch_size=max(cfg.batch_size // ctx.world, 1), rank=ctx.rank,
        world=ctx.world, workers=min(cfg.workers, 2),
    )  # fmt: skip


def end_epoch(run: DetectionRun, epoch: int, record: dict) -> None:
    cfg = run.cfg
    if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == run.epochs or run.step >= run.total_steps:
        ev = run.last_eval = evaluate(run)
        if run.segmenter:
            record.update(val_miou=ev["miou"], val_pixel_acc=ev["pixel_acc"])
        else:
            record.update(val_map=ev["map"], val_map_50=ev["map_50"], val_map_75=ev["map_75"])
        if "segm" in ev:
            record["val_mask_map"] = ev["segm"]["map"]
    record["skipped_images"] = run.skipped
    run.history.append(record)
    improved = record.get(f"val_{run.score}", -1) > run.best
    run.best = max(run.best, record.get(f"val_{run.score}", -1))
    _checkpoint(run, epoch + 1, 0)
    if run.ctx.is_main:
        if improved:
            save_checkpoint(load_checkpoint(run.run_dir / "last.pt"), run.run_dir / "best.pt")
        with safe_io.atomic_path(run.run_dir / "metrics.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(h) + "\n" for h in run.history))
        with safe_io.atomic_path(run.run_dir / "metrics.csv") as tmp:
            write_csv(tmp, run.history)
        msg = f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}"
        if "val_map" in record:
            msg += f", val mAP {record['val_map']:.2f} (AP50 {record['val_map_50']:.2f})"
        if "val_miou" in record:
            msg += f", val mIoU {record['val_miou']:.2f} (pixel accuracy {record['val_pixel_acc']:.2f})"
        say(run, msg + f", {record['images_per_s']:.1f} img/s")


def say(run: DetectionRun, msg: str) -> None:
    if run.bar is not None:
        run.bar.write(msg)
    else:
        print(msg, flush=True)


def finish(run: DetectionRun) -> dict:
    """The final scores (eval.json), the model file, a picture of its boxes on validation images."""
    ev = run.last_eval or evaluate(run)
    result = {
        "run_dir": str(run.run_dir),
        "model_path": str(run.run_dir / "model.safetensors"),
        "classes": run.classes,
        "skipped_images": run.skipped,
        "val_skipped_images": ev["bad_samples"],
        "amp": run.amp,
        "history": run.history,
        **{k: v for k, v in ev.items() if k not in ("bad_samples", "bad_files")},
    }
    if run.ctx.is_main:
        save(
            run.core,
            run.run_dir / "model.safetensors",
            extra={f"val_{run.score}": ev[run.score], "dataset": run.cfg.dataset},
        )
        with safe_io.atomic_path(run.run_dir / "eval.json") as tmp:
            tmp.write_text(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    return result


def fit(run: DetectionRun, partial: list | None) -> dict:
    from tqdm import tqdm

    if run.cfg.progress and run.ctx.is_main:
        done = run.epoch * run.batches_per_epoch + run.batch
        run.bar = tqdm(total=run.total_steps, initial=done, unit="batch", dynamic_ncols=True, smoothing=0.05)
    try:
        run.net.train()
        for epoch in range(run.epoch, run.epochs):
            if run.step >= run.total_steps:
                break
            record = train_one_epoch(run, epoch, partial)
            partial = None
            end_epoch(run, epoch, record)
            run.epoch, run.batch = epoch + 1, 0
        return finish(run)
    finally:
        if run.bar is not None:
            run.bar.close()
            run.bar = None


def train(
    cfg: TrainConfig, ctx: distributed.Context, resume: Path | None, state: dict | None, changed: dict, on_progress
) -> dict:
    run = None
    try:
        run = build(cfg, ctx, resume, changed)
        run.on_progress = on_progress if ctx.is_main else None
        partial = restore(run, state) if state is not None else None
        if ctx.is_main and cfg.progress:
            print(
                f"{cfg.model} on {len(run.train)} images ({len(run.classes)} classes, {len(run.val)} to validate): "
                f"{run.total_steps} steps of {cfg.batch_size}, {run.amp if run.amp != 'none' else 'fp32'}",
                flush=True,
            )
        return fit(run, partial)
    except BaseException as e:
        if run is not None and run.fresh and ctx.is_main:
            rundir.discard(run.run_dir, e)
        raise
    finally:
        if run is not None and run.lock is not None:
            run.lock.release()
