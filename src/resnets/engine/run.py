"""`train(cfg)`: a run built from its config (`build_run`: data, model, optimizer, schedule, loaders, the run
folder), restored when resumed, fitted."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import distributed
from ..config import MODEL_OPTIONS, TrainConfig, resolve
from ..data import DataBundle, build, get_dataset
from ..data.batching import check_batch_split
from ..data.loader import make_eval_loader, make_train_loader
from ..data.preprocessing import Preprocessing
from ..data.transforms import batch_mix, normalizer
from ..devices import native_bf16, resolve_amp
from ..errors import ResnetsError
from ..factory import create_from_weights, create_model
from ..models import get_entry, list_models
from . import estimate, finetune, rundir, steps
from .checkpoint import restore
from .loop import fit
from .optim import make_scheduler
from .state import Run

log = logging.getLogger("resnets")


def _model_options(cfg: TrainConfig) -> dict[str, Any]:
    keys = [k for k in MODEL_OPTIONS if k != "in_chans"]  # the channels follow the data or the weights
    return {k: getattr(cfg, k) for k in keys if getattr(cfg, k) is not None}


def _data_and_model(cfg: TrainConfig) -> tuple[DataBundle, nn.Module]:
    """The data and the model to train on it. Pretrained weights bring their architecture (when --model is not
    given), input channels and preprocessing for image files; their head is replaced when the classes differ."""
    options = _model_options(cfg)
    fixed_chans = get_dataset(cfg.dataset).channels or cfg.in_chans or None  # in-memory data has its own
    if fixed_chans:
        options["in_chans"] = fixed_chans
    if not cfg.weights:
        bundle = build(cfg)
        options.pop("in_chans", None)  # the data's
        return bundle, create_model(cfg.model, num_classes=len(bundle.classes), in_chans=bundle.in_chans, **options)
    model = create_from_weights(cfg.weights, cfg.model or None, **options)
    bundle = build(cfg, in_chans=model.meta.in_chans, preprocessing=model.meta.preprocessing)
    if model.num_classes != len(bundle.classes) or (
        model.meta.class_names and model.meta.class_names != bundle.classes
    ):
        log.warning(
            "new head: %d classes (%s%s); the weights' classifier is dropped",
            len(bundle.classes),
            ", ".join(bundle.classes[:5]),
            ", ..." if len(bundle.classes) > 5 else "",
        )
        model.reset_classifier(len(bundle.classes))
        model.meta.options["num_classes"] = len(bundle.classes)
    return bundle, model


def train(
    cfg: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    on_progress: Callable[[dict], None] | None = None,
) -> dict:
    """Train as `cfg` says (or continue the run in `resume`) and return the final metrics.

    resume: a run folder to continue, or "auto": continue the run in cfg.out/cfg.name if it is there, else start it
    (one command for the first start and every restart; the config must be the run's but for RESUMABLE keys).
    on_progress: called about twice a second and at the end of each epoch (rank 0) with {"step", "total_steps",
    "epoch", "loss", "acc", "img_s"}.
    Returns {"run_dir", "model_path", "top1", "top5", "history", ...}.
    """
    overrides = dict(overrides or {})
    state, changed, auto = None, {}, resume == "auto"
    if auto:  # every process looks before joining the group, so before any of them writes
        cfg = cfg if cfg is not None else resolve(overrides=overrides)
        resume, overrides = rundir.existing(cfg), cfg.to_dict()
    if resume is not None:
        resume = Path(resume)
        cfg, state, changed = rundir.load_resume(resume, overrides)
    elif cfg is None:
        cfg = resolve(overrides=overrides)
    ctx = distributed.setup(cfg.device)
    if auto:
        _agree(resume is not None, cfg, ctx)
    run = None
    # process-wide switches build_run sets for the run, given back after it (train() is also called from Python)
    flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    try:
        if cfg.model in list_models() and get_entry(cfg.model).family in ("detection", "segmentation"):
            from . import detection  # boxes or class maps, not classes: torchvision's losses, COCO's mAP or mIoU

            return detection.train(cfg, ctx, resume, state, changed, on_progress)
        run = build_run(cfg, ctx, resume, changed)
        run.on_progress = on_progress if ctx.is_main else None
        if state is not None:
            restore(run, state)
        if ctx.is_main and cfg.progress:  # the wait, said before it starts
            for line in estimate.describe(run):
                print(line, flush=True)
        return fit(run)
    except BaseException as e:
        if run is not None and run.fresh and ctx.is_main:
            rundir.discard(run.run_dir, e)  # stopped before its first checkpoint: nothing to resume or reuse
        raise
    finally:
        if run is not None and run.lock is not None:
            run.lock.release()
        distributed.cleanup(ctx)
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.benchmark = flags[2]


def _agree(found: bool, cfg: TrainConfig, ctx: distributed.Context) -> None:
    """`--resume auto` under torchrun: every process must have found the run, or none (a folder one node sees and
    another does not is not on storage they share); all of them stop together if not."""
    if ctx.distributed:
        seen = distributed.all_reduce_sum(torch.tensor([float(found)], device=ctx.device), ctx).item()
        if seen not in (0, ctx.world):
            raise ResnetsError(
                f"{int(seen)} of {ctx.world} processes found the run in {Path(cfg.out) / cfg.name}: with --resume "
                "auto, --out must be a folder every node shares"
            )


def _loaders(cfg: TrainConfig, bundle: Any, ctx: distributed.Context) -> tuple[Any, Any]:
    """The training loader (this rank's share, augmented) and the evaluation loader."""
    world = ctx.world
    loader_args = dict(
        kind=cfg.loader, device=ctx.device, rank=ctx.rank, world=world, workers=cfg.workers, strict=cfg.strict_data
    )
    train_loader = make_train_loader(
        bundle.train,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        augment=cfg.augment,
        crop=bundle.train_crop,
        mean=bundle.mean,
        pad=cfg.pad,
        auto_augment=cfg.auto_augment,
        random_erasing=cfg.random_erasing,
        interpolation=cfg.interpolation,
        balanced=cfg.balanced,
        **loader_args,
    )
    val_loader = make_eval_loader(
        bundle.val,
        batch_size=max(cfg.batch_size // world, 1) * 2,
        resize=bundle.eval_resize,
        crop=bundle.eval_crop,
        interpolation=cfg.interpolation,
        **loader_args,
    )
    return train_loader, val_loader


def _lengths(cfg: TrainConfig, batches_per_epoch: int) -> tuple[int, int, int, int]:
    """Batches and optimizer steps per epoch, epochs and total steps (from --iterations or --epochs), for
    `batches_per_epoch` global batches an epoch."""
    steps_per_epoch = max(batches_per_epoch // cfg.accum_steps, 1)
    total_steps = cfg.run_steps(steps_per_epoch)
    return batches_per_epoch, steps_per_epoch, math.ceil(total_steps / steps_per_epoch), total_steps


def _place(model: nn.Module, cfg: TrainConfig, ctx: distributed.Context, channels_last: bool) -> tuple[Any, Any]:
    """The model on its device and memory format, SyncBatchNorm across ranks if asked, and its EMA copy."""
    model.to(ctx.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and ctx.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ema = None
    if cfg.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    return model, ema


def build_run(
    cfg: TrainConfig, ctx: distributed.Context, resume: Path | None = None, changed: dict[str, Any] | None = None
) -> Run:
    """Data, model, optimizer, schedule and loaders from the config. Everything that can fail on bad input
    happens before anything is written; then the run directory is claimed and its config.json written (on a
    resume, again when the resume `changed` keys)."""
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    bundle, model = _data_and_model(cfg)
    world, dev = ctx.world, ctx.device
    check_batch_split(cfg.batch_size, world)
    if cfg.weights and len(bundle.train) < cfg.batch_size:  # fine-tuning a small folder: one batch per step
        small = max(len(bundle.train) // world * world, world)
        log.warning(
            "batch size %d is more than the %d training images; using %d", cfg.batch_size, len(bundle.train), small
        )
        cfg = replace(cfg, batch_size=small)
    amp = resolve_amp(cfg.amp, dev)
    if amp == "bf16" and not native_bf16(dev):
        log.warning("bf16 on this %s is emulated and may be far slower than fp32 (--amp auto picks for you)", dev.type)
    graph = steps.use_graph(cfg, dev, world, amp)
    channels_last = cfg.channels_last if cfg.channels_last is not None else dev.type in ("cuda", "cpu")
    train_loader, val_loader = _loaders(cfg, bundle, ctx)
    # the batches an epoch deals (streamed shards deal whole shards to each rank: fewer than the set holds)
    batches_per_epoch, steps_per_epoch, epochs, total_steps = _lengths(cfg, len(train_loader))
    preprocessing = Preprocessing(bundle.eval_resize, bundle.eval_crop, cfg.interpolation, bundle.mean, bundle.std)
    model.meta = model.meta.replace(class_names=list(bundle.classes), preprocessing=preprocessing)
    plan = finetune.from_config(model, cfg)  # what trains when, and BatchNorm's policy
    model, ema = _place(model, cfg, ctx, channels_last)
    effective_batch = cfg.batch_size * cfg.accum_steps
    peak_lr = cfg.lr * effective_batch / cfg.lr_reference_batch if cfg.lr_reference_batch else cfg.lr
    opt = steps.make_optimizer(
        plan.param_groups(peak_lr, cfg.weight_decay, cfg.norm_weight_decay), cfg, dev, capturable=graph
    )
    sched, plateau = make_scheduler(opt, cfg, total_steps, steps_per_epoch, peak_lr)
    run_dir, lock, fresh = rundir.claim_and_record(cfg, ctx, resume, changed)
    distributed.barrier(ctx)
    return Run(
        cfg=cfg,
        ctx=ctx,
        run_dir=run_dir,
        bundle=bundle,
        core=model,
        preprocessing=preprocessing,
        plan=plan,
        opt=opt,
        sched=sched,
        plateau=plateau,
        scaler=torch.amp.GradScaler(dev.type, enabled=amp == "fp16"),
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        mix=batch_mix(len(bundle.classes), cfg.mixup, cfg.cutmix),
        normalize=normalizer(bundle.mean, bundle.std),
        train_loader=train_loader,
        val_loader=val_loader,
        ema=ema,
        lock=lock,
        fresh=fresh,
        amp=amp,
        channels_last=channels_last,
        graph=graph,
        batches_per_epoch=batches_per_epoch,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        total_steps=total_steps,
    )
