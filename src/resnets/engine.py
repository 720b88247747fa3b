"""The training loop: `train(cfg)` builds everything from a config, trains, evaluates and returns the metrics.

Split as torchvision's reference script and timm's train.py are: a `Run` built once from the config
(`build_run`: data, model, optimizer, schedule, loaders), `train_one_epoch`, `validate`, and `save_state` /
`restore`. Batches come through one seam (`data.loader.make_train_loader` / `make_eval_loader`): the loop does not
know whether they were made by CPU workers or on the device. The step itself is in `steps` (eager, or one CUDA
graph).

Run directory: config.json (resolved), metrics.jsonl and metrics.csv (one line per epoch), last.pt / best.pt (full
checkpoints), model.safetensors (self-describing final model), eval.json, confusion.json/png, curves.png.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import config as C
from . import data as D
from . import distributed, finetune, rundir, safe_io, steps
from .data.batching import Loader, check_batch_split, mix_seed
from .data.loader import make_eval_loader, make_train_loader
from .data.preprocessing import Preprocessing
from .data.transforms import batch_mix, normalizer
from .devices import native_bf16, resolve_amp
from .errors import ResnetsError
from .evaluate import evaluate, reports_top5, write_evaluation
from .factory import create_from_weights, create_model
from .state import Run  # noqa: F401  (resnets.engine.Run, as before)
from .weights.files import load_checkpoint, save, save_checkpoint

log = logging.getLogger("resnets")


class TrainingError(Exception):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


def _model_options(cfg: C.TrainConfig) -> dict[str, Any]:
    keys = [k for k in C.MODEL_OPTIONS if k != "in_chans"]  # the channels follow the data or the weights
    return {k: getattr(cfg, k) for k in keys if getattr(cfg, k) is not None}


def make_scheduler(opt: torch.optim.Optimizer, cfg: C.TrainConfig, total_steps: int, steps_per_epoch: int, peak_lr: float):
    """Per-step schedule: optional linear warmup, then cosine / step / one-cycle / constant. The plateau schedule
    (the paper's ImageNet rule) is stepped per epoch on the validation loss and returned separately."""
    from torch.optim import lr_scheduler as L

    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    if cfg.schedule == "onecycle":  # each group peaks at its own lr (layer-wise learning rates)
        max_lr = [g["lr"] for g in opt.param_groups]
        # a quarter of the steps rising, and at least two (OneCycleLR divides by the length of each phase: a run
        # of 4 steps had a rise of one step, then a division by zero)
        total = max(total_steps, 4)
        return L.OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=max(0.25, 2 / total)), None
    rest = max(total_steps - warmup, 1)
    plateau = None
    if cfg.schedule == "cosine":
        main = L.CosineAnnealingLR(opt, T_max=rest)
    elif cfg.schedule == "step":
        main = L.MultiStepLR(opt, milestones=[max(m - warmup, 0) for m in cfg.milestones], gamma=cfg.gamma)
    else:  # constant, plateau
        main = L.ConstantLR(opt, factor=1.0, total_iters=0)
        if cfg.schedule == "plateau":
            plateau = L.ReduceLROnPlateau(opt, mode="min", factor=cfg.gamma, patience=cfg.plateau_patience)
    if warmup == 0:
        return main, plateau
    warm = L.LinearLR(opt, start_factor=cfg.warmup_start, end_factor=1.0, total_iters=warmup)
    return L.SequentialLR(opt, [warm, main], milestones=[warmup]), plateau


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _data_and_model(cfg: C.TrainConfig) -> tuple[D.DataBundle, nn.Module]:
    """The data and the model to train on it. Pretrained weights bring their architecture (when --model is not
    given), input channels and preprocessing for image files; their head is replaced when the classes differ."""
    options = _model_options(cfg)
    fixed_chans = D.get_dataset(cfg.dataset).channels or cfg.in_chans or None  # in-memory data has its own
    if fixed_chans:
        options["in_chans"] = fixed_chans
    if not cfg.weights:
        bundle = D.build(cfg)
        options.pop("in_chans", None)  # the data's
        return bundle, create_model(cfg.model, num_classes=len(bundle.classes), in_chans=bundle.in_chans, **options)
    model = create_from_weights(cfg.weights, cfg.model or None, **options)
    bundle = D.build(cfg, in_chans=model.meta.in_chans, preprocessing=model.meta.preprocessing)
    if model.num_classes != len(bundle.classes) or (model.meta.class_names and model.meta.class_names != bundle.classes):
        log.warning("new head: %d classes (%s%s); the weights' classifier is dropped", len(bundle.classes),
                    ", ".join(bundle.classes[:5]), ", ..." if len(bundle.classes) > 5 else "")  # fmt: skip
        model.reset_classifier(len(bundle.classes))
        model.meta.options["num_classes"] = len(bundle.classes)
    return bundle, model


def train(cfg: C.TrainConfig | None = None, *, resume: str | Path | None = None, overrides: dict[str, Any] | None = None,
          on_progress: Callable[[dict], None] | None = None) -> dict:  # fmt: skip
    """Train as `cfg` says (or continue the run in `resume`) and return the final metrics.

    on_progress: called about twice a second (rank 0) with {"step", "total_steps", "epoch", "loss", "acc", "img_s"}.
    Returns {"run_dir", "model_path", "top1", "top5", "history", ...}.
    """
    overrides = dict(overrides or {})
    state, changed = None, {}
    if resume is not None:
        resume = Path(resume)
        cfg, state, changed = rundir.load_resume(resume, overrides)
    elif cfg is None:
        cfg = C.resolve(overrides=overrides)
    ctx = distributed.setup(cfg.device)
    run = None
    # process-wide switches build_run sets for the run, given back after it (train() is also called from Python)
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark)  # fmt: skip
    try:
        run = build_run(cfg, ctx, resume, changed)
        run.on_progress = on_progress if ctx.is_main else None
        if state is not None:
            restore(run, state)
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


def _claim_run_dir(cfg: C.TrainConfig, ctx: distributed.Context, resume: Path | None) -> tuple[Path, Any, bool]:
    """Rank 0 claims the run directory (its lock, a unique name); all ranks follow. (path, lock, fresh)."""
    decision: tuple[str, str | None, bool] = ("", None, False)
    lock = None
    if ctx.is_main:
        try:
            path, lock, fresh = rundir.claim(cfg, resume)
            decision = (str(path), None, fresh)
        except ResnetsError as err:
            decision = ("", str(err), False)
    decision = distributed.broadcast_object(decision, ctx)
    if decision[1] is not None:
        raise ResnetsError(decision[1])
    return Path(decision[0]), lock, decision[2]


def build_run(cfg: C.TrainConfig, ctx: distributed.Context, resume: Path | None = None,
              changed: dict[str, Any] | None = None) -> Run:  # fmt: skip
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
        log.warning("batch size %d is more than the %d training images; using %d", cfg.batch_size, len(bundle.train), small)
        cfg = replace(cfg, batch_size=small)
    amp = resolve_amp(cfg.amp, dev)
    if amp == "bf16" and not native_bf16(dev):
        log.warning("bf16 on this %s is emulated and may be far slower than fp32 (--amp auto picks for you)", dev.type)
    graph = steps.use_graph(cfg, dev, world, amp)
    channels_last = cfg.channels_last if cfg.channels_last is not None else dev.type in ("cuda", "cpu")
    loader_args = dict(kind=cfg.loader, device=dev, rank=ctx.rank, world=world, workers=cfg.workers, strict=cfg.strict_data)
    train_loader = make_train_loader(bundle.train, batch_size=cfg.batch_size, seed=cfg.seed, augment=cfg.augment,
                                     crop=bundle.train_crop, mean=bundle.mean, pad=cfg.pad, auto_augment=cfg.auto_augment,
                                     random_erasing=cfg.random_erasing, interpolation=cfg.interpolation,
                                     balanced=cfg.balanced, **loader_args)  # fmt: skip
    val_loader = make_eval_loader(bundle.val, batch_size=max(cfg.batch_size // world, 1) * 2, resize=bundle.eval_resize,
                                  crop=bundle.eval_crop, interpolation=cfg.interpolation, **loader_args)  # fmt: skip
    batches_per_epoch = len(bundle.train) // cfg.batch_size
    steps_per_epoch = max(batches_per_epoch // cfg.accum_steps, 1)
    if cfg.iterations:
        total_steps = cfg.iterations
        epochs = math.ceil(total_steps / steps_per_epoch)
    else:
        epochs, total_steps = cfg.epochs, cfg.epochs * steps_per_epoch
    preprocessing = Preprocessing(bundle.eval_resize, bundle.eval_crop, cfg.interpolation, bundle.mean, bundle.std)
    model.meta = model.meta.replace(class_names=list(bundle.classes), preprocessing=preprocessing)
    plan = finetune.from_config(model, cfg)  # what trains when, and BatchNorm's policy
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and ctx.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ema = None
    if cfg.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    effective_batch = cfg.batch_size * cfg.accum_steps
    peak_lr = cfg.lr * effective_batch / cfg.lr_reference_batch if cfg.lr_reference_batch else cfg.lr
    opt = steps.make_optimizer(plan.param_groups(peak_lr, cfg.weight_decay, cfg.norm_weight_decay), cfg, dev, capturable=graph)
    sched, plateau = make_scheduler(opt, cfg, total_steps, steps_per_epoch, peak_lr)
    # the first write: the run directory, claimed with its lock, and config.json
    run_dir, lock, fresh = _claim_run_dir(cfg, ctx, resume)
    try:
        if ctx.is_main and (resume is None or changed):
            rundir.record(run_dir, cfg)
    except BaseException as e:
        if lock is not None:
            lock.release()
        if fresh and ctx.is_main:
            rundir.discard(run_dir, e)
        raise
    distributed.barrier(ctx)
    return Run(cfg=cfg, ctx=ctx, run_dir=run_dir, bundle=bundle, core=model, preprocessing=preprocessing, plan=plan,
               opt=opt, sched=sched, plateau=plateau, scaler=torch.amp.GradScaler(dev.type, enabled=amp == "fp16"),
               criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
               mix=batch_mix(len(bundle.classes), cfg.mixup, cfg.cutmix), normalize=normalizer(bundle.mean, bundle.std),
               train_loader=train_loader, val_loader=val_loader, ema=ema, lock=lock, fresh=fresh, amp=amp,
               channels_last=channels_last, graph=graph,
               batches_per_epoch=batches_per_epoch, steps_per_epoch=steps_per_epoch, epochs=epochs,
               total_steps=total_steps)  # fmt: skip


def state_dict(run: Run, epoch: int, batch: int) -> dict:
    """The whole run at the start of (epoch, batch): a checkpoint from which `restore` continues exactly."""
    core = run.core
    return {
        "resnets": {"architecture": core.meta.architecture, "options": core.meta.options, "class_names": run.classes,
                    "preprocessing": run.preprocessing.to_dict()},
        "model": core.state_dict(), "optimizer": steps.lr_as_float(run.opt.state_dict()),
        "scheduler": run.sched.state_dict(), "plateau": run.plateau.state_dict() if run.plateau is not None else None,
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "epoch": epoch, "batch": batch, "step": run.step, "best_top1": run.best, "history": run.history,
        "since_best": run.since_best, "curve": run.curve, "config": run.cfg.to_dict(), "rng": _rng_state(),
        "partial": run.partial if batch else None,
    }  # fmt: skip


def save_state(run: Run, path: Path, epoch: int, batch: int) -> None:
    """A checkpoint of the run, never of non-finite weights or BatchNorm statistics: a step whose loss was finite
    can still leave them inf (a huge lr), and a checkpoint of them would replace the last good one."""
    finite = torch.stack([torch.isfinite(t).all() for t in run.core.state_dict().values() if t.is_floating_point()]).all()
    if not bool(finite):
        last = run.run_dir / "last.pt"
        kept = f"The last good checkpoint is {last}" if last.is_file() else "No checkpoint had been written yet"
        raise TrainingError(f"the weights became non-finite at step {run.step}; stopped. {kept} (try a lower --lr, "
                            "--clip-grad, or --amp none)")  # fmt: skip
    if run.ctx.is_main:
        save_checkpoint(state_dict(run, epoch, batch), path)


def restore(run: Run, state: dict) -> None:
    """Continue from a checkpoint of `state_dict`: weights, optimizer, schedules, counters and random state."""
    run.core.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    if run.graph:
        steps.lr_on_device(run.opt, run.ctx.device)
    run.sched.load_state_dict(state["scheduler"])
    if run.plateau is not None and state.get("plateau"):
        run.plateau.load_state_dict(state["plateau"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None and state.get("ema"):
        run.ema.load_state_dict(state["ema"])
    run.epoch, run.batch, run.step = state["epoch"], state["batch"], state["step"]
    run.best, run.history = state.get("best_top1", -1.0), list(state.get("history", []))
    run.since_best = state.get("since_best", 0)
    run.curve = list(state.get("curve", []))
    run.partial = state.get("partial") if run.batch else None
    if run.cfg.early_stop and (run.run_dir / "best.pt").is_file():
        run.best_state = load_checkpoint(run.run_dir / "best.pt")["model"]
    _set_rng_state(state["rng"])
    if run.ctx.is_main:
        log.warning("resuming %s at epoch %d, batch %d (step %d)", run.run_dir, run.epoch + 1, run.batch, run.step)


def wrap(run: Run) -> nn.Module:
    """What trains: the core in DDP (which registers the trainable parameters once, so again whenever they
    change) and/or torch.compile."""
    net: nn.Module = run.core
    if run.ctx.distributed:
        dev = run.ctx.device
        net = nn.parallel.DistributedDataParallel(run.core, device_ids=[dev.index] if dev.type == "cuda" else None)
    run.net = torch.compile(net) if run.cfg.compile else net
    run.net.train()
    return run.net


def validate(run: Run, model: nn.Module | None = None, loader: Loader | None = None) -> dict:
    """top-1, top-5, loss, per-class accuracy and the confusion matrix of `model` (default: the core) on `loader`
    (default: the validation set), at the run's precision and memory format."""
    ev = evaluate(run.core if model is None else model, run.val_loader if loader is None else loader, run.normalize,
                  len(run.classes), run.ctx, amp=run.amp, channels_last=run.channels_last)  # fmt: skip
    for f in ev["bad_files"]:  # each named once in a run, not at every evaluation
        if f["path"] not in run.warned_paths:
            run.warned_paths.add(f["path"])
            log.warning("skipped unreadable image %s (validation): %s", f["path"], f["error"])
    return ev


def _seed_step(run: Run, epoch: int, b: int) -> None:
    """Drop-path and mixing draw from generators seeded by the step: the CPU one (MixUp/CutMix, drop-path on a
    CPU) always, the GPU's only when stochastic depth runs there (seeding every accelerator costs far more)."""
    seed = mix_seed(run.cfg.seed, epoch, b, run.ctx.rank)
    torch.default_generator.manual_seed(seed)
    if run.cfg.drop_path_rate and run.ctx.device.type == "cuda":
        torch.cuda.manual_seed(seed)


def _after_step(run: Run, epoch: int, b: int, window: torch.Tensor) -> None:
    """An optimizer step was taken: the schedule, the step count, the EMA and (every curve_steps) a curve point
    from the `window` of sums since the last one."""
    cfg = run.cfg
    run.sched.step()
    run.step += 1
    if run.ema is not None and run.step % cfg.ema_every == 0:
        run.ema.update_parameters(run.core)
    if cfg.curve_steps and run.step % cfg.curve_steps == 0:
        w = distributed.all_reduce_sum(window.clone(), run.ctx)
        ev = validate(run)
        run.curve.append({"step": run.step, "epoch": epoch + (b + 1) / run.batches_per_epoch,
                          "train_loss": w[0].item() / max(w[2].item(), 1),
                          "train_err": 100 - 100 * w[1].item() / max(w[2].item(), 1),
                          "val_err": 100 - ev["top1"], "val_loss": ev["loss"]})  # fmt: skip
        window.zero_()


def _show_progress(run: Run, epoch: int, b: int, sums: torch.Tensor, seen: int, t0: float, reported: float) -> float:
    """The bar's postfix every 10 batches, the progress callback every 0.5 s (the last time it was called)."""
    if run.bar is not None:
        run.bar.update(1)
        if b % 10 == 0 or b + 1 == run.batches_per_epoch:
            n = max(sums[2].item(), 1)
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            run.bar.set_postfix(loss=f"{sums[0].item() / n:.3f}", acc=f"{100 * sums[1].item() / n:.1f}",
                                lr=f"{float(run.opt.param_groups[-1]['lr']):.3g}", img_s=f"{rate:.0f}")  # fmt: skip
    if run.on_progress is not None and time.perf_counter() - reported >= 0.5:
        reported = time.perf_counter()
        n = max(sums[2].item(), 1)
        run.on_progress({"step": run.step, "total_steps": run.total_steps, "epoch": epoch + 1, "loss": sums[0].item() / n,
                         "acc": 100 * sums[1].item() / n, "img_s": seen / max(reported - t0, 1e-9)})  # fmt: skip
    return reported


def train_one_epoch(run: Run, epoch: int, step_fn) -> dict:
    """Train from the run's current batch to the end of `epoch` (or of the schedule); returns the epoch's record.
    Raises TrainingError when the loss stops being finite."""
    cfg, ctx, dev = run.cfg, run.ctx, run.ctx.device
    first = run.batch if epoch == run.epoch else 0
    run.train_loader.set_epoch(epoch, first)
    sums = torch.zeros(3, dtype=torch.float64, device=dev)  # loss * n, hits, n
    window = torch.zeros(3, dtype=torch.float64, device=dev)  # the same since the last curve point
    if first and run.partial is not None and ctx.rank == 0:  # resumed mid-epoch: the batches before the checkpoint
        sums += torch.tensor(run.partial["epoch"], dtype=torch.float64, device=dev)
        window += torch.tensor(run.partial["window"], dtype=torch.float64, device=dev)
    run.partial = None
    finite = torch.ones((), dtype=torch.bool, device=dev)
    seen, t0 = 0, time.perf_counter()
    reported = t0
    if run.bar is not None:
        run.bar.set_description(f"epoch {epoch + 1}/{run.epochs}")
    for b, batch in enumerate(run.train_loader, start=first):
        _seed_step(run, epoch, b)
        run.skipped += len(batch.bad)
        for path, reason in batch.bad:
            if path not in run.warned_paths:  # once in a run, not every epoch
                run.warned_paths.add(path)
                log.warning("skipped unreadable image %s: %s", path, reason)
        x = batch.images.to(dev, non_blocking=True)
        y = batch.labels.to(dev, non_blocking=True)
        if x.numel() == 0:
            continue
        x = run.normalize(x)
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = y
        if run.mix is not None:
            x, target = run.mix(x, y)
        sync = (b + 1) % cfg.accum_steps == 0 or b + 1 == run.batches_per_epoch
        batch_sums = step_fn(x, target, y, sync)
        finite &= torch.isfinite(batch_sums[0])
        sums += batch_sums
        window += batch_sums
        seen += len(y) * ctx.world
        if sync:
            _after_step(run, epoch, b, window)
        reported = _show_progress(run, epoch, b, sums, seen, t0, reported)
        if b % 10 == 0 and not bool(finite):
            break
        if sync and cfg.checkpoint_steps and run.step % cfg.checkpoint_steps == 0 and b + 1 < run.batches_per_epoch:
            if not bool(finite):
                break
            both = distributed.all_reduce_sum(torch.cat([sums, window]), ctx).tolist()
            run.partial = {"epoch": both[:3], "window": both[3:]}
            save_state(run, run.run_dir / "last.pt", epoch, b + 1)
        if run.done:
            break
    if not bool(finite):
        last = run.run_dir / "last.pt"
        kept = f"The last good checkpoint is {last}" if last.is_file() else "No checkpoint had been written yet"
        raise TrainingError(f"the loss became non-finite in epoch {epoch + 1} (step {run.step}); stopped. {kept} "
                            "(try a lower --lr, --clip-grad, or --amp none)")  # fmt: skip
    elapsed = time.perf_counter() - t0
    train_sums = distributed.all_reduce_sum(sums.clone(), ctx)
    n = max(train_sums[2].item(), 1)
    return {"epoch": epoch + 1, "step": run.step, "lr": float(run.opt.param_groups[-1]["lr"]),
            "train_loss": train_sums[0].item() / n, "train_acc": 100 * train_sums[1].item() / n,
            "images_per_s": seen / max(elapsed, 1e-9), "time_s": elapsed}  # fmt: skip


def _write_csv(path: Path, rows: list[dict]) -> None:
    """One row per epoch, a column per key (those of every epoch, in first-seen order; missing cells empty)."""
    import csv

    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def end_epoch(run: Run, epoch: int, record: dict) -> bool:
    """Evaluate when due, keep the history and the best weights, checkpoint and report. True: stop early."""
    cfg = run.cfg
    if (epoch + 1) % cfg.eval_every == 0 or run.done or epoch + 1 == run.epochs:
        ev = validate(run)
        record.update(val_loss=ev["loss"], val_top1=ev["top1"], val_top5=ev["top5"])
        if run.ema is not None:
            record["ema_val_top1"] = validate(run, run.ema.module)["top1"]
        if run.plateau is not None:
            run.plateau.step(ev["loss"])
    record["skipped_images"] = run.skipped
    run.history.append(record)
    improved = record.get("val_top1", -1) > run.best
    run.best = max(run.best, record.get("val_top1", -1))
    if "val_top1" in record:
        run.since_best = 0 if improved else run.since_best + 1
    if cfg.early_stop and improved:
        run.best_state = {k: v.detach().clone() for k, v in run.core.state_dict().items()}
    if run.ctx.is_main:
        save_state(run, run.run_dir / "last.pt", epoch + 1, 0)
        if improved:
            save_checkpoint(load_checkpoint(run.run_dir / "last.pt"), run.run_dir / "best.pt")
        with safe_io.atomic_path(run.run_dir / "metrics.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(h) + "\n" for h in run.history))
        with safe_io.atomic_path(run.run_dir / "metrics.csv") as tmp:  # the same epochs, for a spreadsheet
            _write_csv(tmp, run.history)
        if run.curve:
            with safe_io.atomic_path(run.run_dir / "curve.jsonl") as tmp:
                tmp.write_text("".join(json.dumps(c) + "\n" for c in run.curve))
        if run.writer is not None:
            for k, v in record.items():
                if k != "epoch":
                    run.writer.add_scalar(k, v, epoch + 1)
        msg = f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.2f}%"
        if "val_top1" in record:
            msg += f", val top-1 {record['val_top1']:.2f}%"
            msg += f" top-5 {record['val_top5']:.2f}%" if reports_top5(len(run.classes)) else ""
        _say(run, msg + f", {record['images_per_s']:.0f} img/s")
    stop = bool(cfg.early_stop) and run.since_best >= cfg.early_stop
    if stop:
        _say(run, f"early stop: no better val top-1 in {cfg.early_stop} evaluations; keeping epoch {_best_epoch(run.history)}'s weights")
    return stop


def _say(run: Run, msg: str) -> None:
    if run.bar is not None:
        run.bar.write(msg)
    else:
        print(msg, flush=True)


def _open_outputs(run: Run) -> None:
    """The TensorBoard writer and the progress bar (rank 0)."""
    cfg = run.cfg
    if cfg.tensorboard and run.ctx.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ResnetsError("--tensorboard needs the tensorboard package: pip install 'resnets[tensorboard]'") from None
        run.writer = SummaryWriter(str(run.run_dir / "tensorboard"))
    if cfg.progress and run.ctx.is_main:
        from tqdm import tqdm

        total = min(run.epochs * run.batches_per_epoch, run.total_steps * cfg.accum_steps)
        run.bar = tqdm(total=total, initial=run.epoch * run.batches_per_epoch + run.batch, unit="batch",
                       dynamic_ncols=True, smoothing=0.05)  # fmt: skip


def _close_outputs(run: Run) -> None:
    if run.bar is not None:
        run.bar.close()
        run.bar = None
    if run.writer is not None:
        run.writer.close()
        run.writer = None


def fit(run: Run) -> dict:
    """Train the run from where it stands to its end (or an early stop), then evaluate and save it."""
    _open_outputs(run)
    try:
        run.plan.apply(run.epoch)
        wrap(run)
        step_fn = steps.make_step(run)
        for epoch in range(run.epoch, run.epochs):
            if run.done:
                break
            if run.plan.apply(epoch):  # gradual unfreezing: DDP and any captured graph must see the new set
                wrap(run)
                step_fn = steps.make_step(run)
            record = train_one_epoch(run, epoch, step_fn)
            stop = end_epoch(run, epoch, record)
            run.epoch, run.batch = epoch + 1, 0
            if stop:
                break
    finally:
        _close_outputs(run)
    if run.best_state is not None:
        run.core.load_state_dict(run.best_state)
    result = finish(run)
    result["curve"] = run.curve
    return result


def _best_epoch(history: list[dict]) -> int:
    scored = [h for h in history if "val_top1" in h]
    return max(scored, key=lambda h: h["val_top1"])["epoch"] if scored else 0


def finish(run: Run) -> dict:
    """Final evaluation (the EMA weights when they are better; the paper's 10 crops when asked), the
    self-describing model file, plots and eval.json."""
    cfg, ctx, bundle, core, classes = run.cfg, run.ctx, run.bundle, run.core, run.classes
    ev = validate(run)
    final, which = core, "model"
    if run.ema is not None:
        ev_ema = validate(run, run.ema.module)
        if ev_ema["top1"] > ev["top1"]:
            final, which, ev = run.ema.module, "ema", ev_ema
    if cfg.ten_crop:
        tc_loader = make_eval_loader(bundle.val, kind="host", device=ctx.device, batch_size=32, resize=bundle.eval_resize,
                                     crop=bundle.eval_crop, interpolation=cfg.interpolation, ten_crop=True,
                                     rank=ctx.rank, world=ctx.world, workers=cfg.workers)  # fmt: skip
        ev["ten_crop"] = {k: v for k, v in validate(run, final, tc_loader).items() if k in ("top1", "top5", "n")}
    result = {"run_dir": str(run.run_dir), "model_path": str(run.run_dir / "model.safetensors"), "weights": which,
              "top1": ev["top1"], "top5": ev["top5"], "loss": ev["loss"], "n": ev["n"], "per_class": ev["per_class"],
              "classes": classes, "skipped_images": run.skipped, "val_skipped_images": ev["bad_samples"],
              "amp": run.amp, "channels_last": run.channels_last, "loader": run.train_loader.kind,
              "cuda_graph": run.graph, "history": run.history}  # fmt: skip
    if "ten_crop" in ev:
        result["ten_crop"] = ev["ten_crop"]
    if ctx.is_main:
        from .reports import plot_curves

        if final is not core:
            core.load_state_dict(final.state_dict())
        save(core, run.run_dir / "model.safetensors", extra={"val_top1": ev["top1"], "dataset": cfg.dataset})
        title = f"{core.meta.architecture} on {cfg.dataset}"
        write_evaluation(run.run_dir, {k: v for k, v in result.items() if k != "history"}, classes, ev["confusion"],
                         f"{title}: top-1 {ev['top1']:.2f}%")  # fmt: skip
        if run.history:
            plot_curves(run.history, run.run_dir / "curves.png", title)
    return result
