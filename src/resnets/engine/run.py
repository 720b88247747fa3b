"""`train(cfg)`: a run built from its config (`build_run`: data, model, optimizer, schedule, loaders, the run
folder), restored when resumed, fitted."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import distributed
from ..config import TrainConfig, resolve
from ..data.batching import check_batch_split
from ..devices import native_bf16, resolve_amp
from ..errors import ResnetsError
from ..factory import architecture_of
from ..tasks import task_of
from . import estimate, finetune, rundir, steps
from .checkpoint import restore
from .loop import fit
from .optim import make_scheduler
from .preemption import Preemption
from .state import Run

log = logging.getLogger("resnets")


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
    decoding = _decoding(cfg)
    preemption = Preemption().install()  # SIGTERM and SIGUSR1: before the first step a stop, then a checkpoint
    try:
        run = build_run(cfg, ctx, resume, changed)
        run.on_progress = on_progress if ctx.is_main else None
        run.preemption = preemption
        if state is not None:
            restore(run, state)
            done = _finished(run)
            if done is not None:  # `--resume auto` again after the end (a requeue, a rerun): nothing to do
                return done
        if ctx.is_main and cfg.progress:  # what trains, and the wait, said before it starts
            for line in estimate.describe(run):
                print(line, flush=True)
        return fit(run)
    except BaseException as e:
        if run is not None and run.fresh and ctx.is_main:
            rundir.discard(run.run_dir, e)  # stopped before its first checkpoint: nothing to resume or reuse
        raise
    finally:
        preemption.restore()
        decoding()
        if run is not None and run.lock is not None:
            run.lock.release()
        distributed.cleanup(ctx)
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.benchmark = flags[2]


def _finished(run: Run) -> dict | None:
    """The result of a run found at its end with its model and scores written (eval.json), as written: nothing is
    trained, evaluated or rewritten. None: there is work left (more steps, or the final evaluation and model)."""
    scores = run.run_dir / "eval.json"
    if not (run.done and scores.is_file() and (run.run_dir / "model.safetensors").is_file()):
        return None
    try:
        saved = json.loads(scores.read_text())
    except (ValueError, UnicodeDecodeError):
        saved = None
    if not isinstance(saved, dict) or not {"classes", "n", run.task.score} <= saved.keys():
        return None  # damaged: the final evaluation is made and written again
    if run.ctx.is_main:
        print(
            f"{run.run_dir} is finished (step {run.step} of {run.total_steps}): nothing to train; its model is "
            f"{run.run_dir / 'model.safetensors'} (more --epochs continue it)",
            flush=True,
        )
    return saved | {"task": run.task.name, "history": run.history, "curve": run.curve}


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


def _lengths(cfg: TrainConfig, batches_per_epoch: int) -> tuple[int, int, int, int]:
    """Batches and optimizer steps per epoch, epochs and total steps (from --iterations or --epochs), for
    `batches_per_epoch` global batches an epoch."""
    # the loop steps after every accum_steps batches and after an epoch's last one (a shorter window): 7 batches
    # accumulated by 2 are 4 steps (counting 3 left the last epoch one step)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.accum_steps)
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


def _decoding(cfg: TrainConfig) -> Callable[[], None]:
    """The run's decoding settings (max_pixels, exact_decode: in its config.json, so a resume decodes as the run
    did) set for this process and the loader workers it starts, through the environment that data/images.py
    reads; returns what gives the process its own settings back."""
    wanted = {
        "RESNETS_MAX_PIXELS": str(cfg.max_pixels) if cfg.max_pixels else None,
        "RESNETS_EXACT_DECODE": "1" if cfg.exact_decode else None,
    }
    before = {k: os.environ.get(k) for k in wanted}
    for k, v in wanted.items():
        if v is not None:
            os.environ[k] = v

    def restore() -> None:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    return restore


def build_run(
    cfg: TrainConfig, ctx: distributed.Context, resume: Path | None = None, changed: dict[str, Any] | None = None
) -> Run:
    """Data, model, optimizer, schedule and loaders from the config. Everything that can fail on bad input
    happens before anything is written; then the run directory is claimed and its config.json written (on a
    resume, again when the resume `changed` keys). The task (tasks/: by the config's model) brings the data, the
    model for its classes, the loaders and the step's loss."""
    rundir.check_name_free(cfg, resume)
    if resume is None:  # recorded as absolute paths: a resume from another folder reads the same files
        cfg = replace(cfg, **rundir.absolute_paths(cfg))
    named = cfg.model or architecture_of(cfg.weights)  # --model "": the weights say which, and so which task
    if not cfg.model:
        cfg.check_task(named)  # the config's own check could not: one line before anything is read or written
        cfg = replace(cfg, model=named)  # what every task builds, config.json records and a resume checks
    task = task_of(named)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:  # (images of many sizes would have every new size timed)
        torch.backends.cudnn.benchmark = task.fixed_shapes
    torch.manual_seed(cfg.seed)
    bundle, model = task.data_and_model(cfg, ctx)
    if getattr(bundle, "held_out", 0) and not cfg.val_split:  # config.json says where validation images come from
        cfg = replace(cfg, val_split=bundle.held_out)
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
    graph = task.fixed_shapes and steps.use_graph(cfg, dev, world, amp)
    channels_last = cfg.channels_last if cfg.channels_last is not None else dev.type in ("cuda", "cpu")
    channels_last = channels_last and task.channels_last
    train_loader, val_loader = task.loaders(cfg, bundle, ctx)
    # the batches an epoch deals (streamed shards deal whole shards to each rank: fewer than the set holds)
    batches_per_epoch, steps_per_epoch, epochs, total_steps = _lengths(cfg, len(train_loader))
    plan = finetune.plan_for(model, cfg, task.stages)  # what trains when, and BatchNorm's policy
    model, ema = _place(model, cfg, ctx, channels_last)
    effective_batch = cfg.batch_size * cfg.accum_steps
    peak_lr = cfg.lr * effective_batch / cfg.lr_reference_batch if cfg.lr_reference_batch else cfg.lr
    opt = steps.make_optimizer(
        plan.param_groups(peak_lr, cfg.weight_decay, cfg.norm_weight_decay), cfg, dev, capturable=graph
    )
    sched, plateau = make_scheduler(opt, cfg, total_steps, steps_per_epoch, peak_lr)
    criterion, mix, normalize = task.parts(cfg, bundle)
    run_dir, lock, fresh = rundir.claim_and_record(cfg, ctx, resume, changed)
    return Run(
        cfg=cfg,
        ctx=ctx,
        task=task,
        run_dir=run_dir,
        bundle=bundle,
        core=model,
        preprocessing=model.meta.preprocessing,
        plan=plan,
        opt=opt,
        sched=sched,
        plateau=plateau,
        scaler=torch.amp.GradScaler(dev.type, enabled=amp == "fp16"),
        criterion=criterion,
        mix=mix,
        normalize=normalize,
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
