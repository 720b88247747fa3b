"""The training loop: `train(cfg)` builds everything from a config, trains, evaluates and returns the metrics.

Run directory: config.json (resolved), metrics.jsonl (one line per epoch), last.pt / best.pt (full checkpoints),
model.safetensors (self-describing final model), eval.json, confusion.json/png, curves.png.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import artifacts, config as C, data as D, distributed, finetune
from .data.loader import Augmented, EvalBatches, TrainBatches, make_loader, mix_seed
from .data.transforms import batch_mix, eval_transform, normalizer, ten_crop_transform, train_transform
from .errors import ResnetsError
from .evaluate import autocast, evaluate
from .factory import create_from_weights, create_model
from .weights import Preprocessing

log = logging.getLogger("resnets")


class TrainingError(Exception):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


def _model_options(cfg: C.TrainConfig) -> dict[str, Any]:
    keys = ("norm", "shortcut", "stride_in_1x1", "zero_init_residual", "drop_path_rate")
    return {k: getattr(cfg, k) for k in keys if getattr(cfg, k) is not None}


def make_scheduler(opt: torch.optim.Optimizer, cfg: C.TrainConfig, total_steps: int, steps_per_epoch: int, peak_lr: float):
    """Per-step schedule: optional linear warmup, then cosine / step / one-cycle / constant. The plateau schedule
    (the paper's ImageNet rule) is stepped per epoch on the validation loss and returned separately."""
    from torch.optim import lr_scheduler as L

    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    if cfg.schedule == "onecycle":  # each group peaks at its own lr (layer-wise learning rates)
        max_lr = [g["lr"] for g in opt.param_groups]
        return L.OneCycleLR(opt, max_lr=max_lr, total_steps=max(total_steps, 2), pct_start=0.25), None
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
    fixed_chans = {"fashion-mnist": 1, "cifar10": 3, "cifar100": 3}.get(cfg.dataset) or cfg.in_chans or None
    if fixed_chans:
        options["in_chans"] = fixed_chans
    if not cfg.weights:
        bundle = D.build(cfg)
        options.pop("in_chans", None)  # the data's
        return bundle, create_model(cfg.model, num_classes=len(bundle.classes), in_chans=bundle.in_chans, **options)
    model = create_from_weights(cfg.weights, cfg.model or None, **options)
    in_chans = model.arch_options.get("in_chans", 3)
    bundle = D.build(cfg, in_chans=in_chans, preprocessing=model.preprocessing)
    if model.num_classes != len(bundle.classes) or (model.class_names and model.class_names != bundle.classes):
        log.warning("new head: %d classes (%s%s); the weights' classifier is dropped", len(bundle.classes),
                    ", ".join(bundle.classes[:5]), ", ..." if len(bundle.classes) > 5 else "")  # fmt: skip
        model.reset_classifier(len(bundle.classes))
        model.arch_options = {**model.arch_options, "num_classes": len(bundle.classes)}
    return bundle, model


def _prepare_run_dir(cfg: C.TrainConfig, resume: Path | None) -> Path:
    if resume is not None:
        return resume
    name = cfg.name or f"{cfg.model}-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.out) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ResnetsError(f"run directory {run_dir} already holds a run; resume it with --resume {run_dir} or pick another --name")
    return run_dir


def _load_resume(resume: Path, overrides: dict[str, Any]) -> tuple[C.TrainConfig, dict]:
    if not (resume / "config.json").is_file():
        raise ResnetsError(f"{resume} is not a run directory (no config.json)")
    saved = json.loads((resume / "config.json").read_text())
    cfg = C.from_dict(saved)
    state = artifacts.load_checkpoint(resume / "last.pt")
    arch = state.get("resnets", {}).get("architecture")
    wanted = overrides.get("model", cfg.model)
    if arch != wanted:
        raise ResnetsError(f"the checkpoint in {resume} is a {arch} model, not {wanted}; it cannot be resumed as {wanted}")
    cfg = C.apply(cfg, {k: v for k, v in overrides.items()}, "the command line").validate()
    return cfg, state


def train(cfg: C.TrainConfig | None = None, *, resume: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict:
    """Train as `cfg` says (or continue the run in `resume`) and return the final metrics.

    Returns {"run_dir", "model_path", "top1", "top5", "history", ...}.
    """
    overrides = dict(overrides or {})
    state = None
    if resume is not None:
        resume = Path(resume)
        cfg, state = _load_resume(resume, overrides)
    elif cfg is None:
        cfg = C.resolve(overrides=overrides)
    ctx = distributed.setup(cfg.device)
    try:
        return _train(cfg, ctx, resume, state)
    finally:
        distributed.cleanup(ctx)


def _train(cfg: C.TrainConfig, ctx: distributed.Context, resume: Path | None, state: dict | None) -> dict:
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    # ---- everything that can fail on bad input happens before anything is written
    bundle, model = _data_and_model(cfg)
    classes = bundle.classes
    # rank 0 decides the run directory (its name has a timestamp) and whether it may be used; all ranks follow
    decision: tuple[str, str | None] = ("", None)
    if ctx.is_main:
        try:
            decision = (str(_prepare_run_dir(cfg, resume)), None)
        except ResnetsError as err:
            decision = ("", str(err))
    decision = distributed.broadcast_object(decision, ctx)
    if decision[1] is not None:
        raise ResnetsError(decision[1])
    run_dir = Path(decision[0])
    world = ctx.world
    if cfg.batch_size % world:
        raise ResnetsError(f"batch size {cfg.batch_size} does not split evenly over {world} processes")
    if cfg.weights and len(bundle.train) < cfg.batch_size:  # fine-tuning a small folder: one batch per step
        small = max(len(bundle.train) // world * world, world)
        log.warning("batch size %d is more than the %d training images; using %d", cfg.batch_size, len(bundle.train), small)
        cfg = replace(cfg, batch_size=small)
    train_sampler = TrainBatches(len(bundle.train), cfg.batch_size, seed=cfg.seed, rank=ctx.rank, world=world,
                                 targets=bundle.train.targets if cfg.balanced else None)  # fmt: skip
    batches_per_epoch = len(bundle.train) // cfg.batch_size
    steps_per_epoch = max(batches_per_epoch // cfg.accum_steps, 1)
    if cfg.iterations:
        total_steps = cfg.iterations
        epochs = math.ceil(total_steps / steps_per_epoch)
    else:
        epochs, total_steps = cfg.epochs, cfg.epochs * steps_per_epoch
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume is None:
            with artifacts.atomic_path(run_dir / "config.json") as tmp:
                tmp.write_text(json.dumps(cfg.to_dict(), indent=2))
    distributed.barrier(ctx)

    # ---- model, optimizer, schedule
    preprocessing = Preprocessing(bundle.eval_resize, bundle.eval_crop, cfg.interpolation, bundle.mean, bundle.std)
    model.class_names, model.preprocessing = classes, preprocessing
    plan = finetune.from_config(model, cfg)  # what trains when, and BatchNorm's policy
    dev = ctx.device
    model.to(dev)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and ctx.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    core = model  # the plain module: what is saved and evaluated
    ema = None
    if cfg.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(core, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)

    def wrap() -> nn.Module:  # again whenever the trainable parameters change (DDP registers them once)
        net: nn.Module = core
        if ctx.distributed:
            net = nn.parallel.DistributedDataParallel(core, device_ids=[dev.index] if dev.type == "cuda" else None)
        return torch.compile(net) if cfg.compile else net

    effective_batch = cfg.batch_size * cfg.accum_steps
    peak_lr = cfg.lr * effective_batch / cfg.lr_reference_batch if cfg.lr_reference_batch else cfg.lr
    groups = plan.param_groups(peak_lr, cfg.weight_decay, cfg.norm_weight_decay)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=peak_lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    else:
        opt = torch.optim.AdamW(groups, lr=peak_lr)
    sched, plateau = make_scheduler(opt, cfg, total_steps, steps_per_epoch, peak_lr)
    scaler = torch.amp.GradScaler(dev.type, enabled=cfg.amp == "fp16")
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    mix = batch_mix(len(classes), cfg.mixup, cfg.cutmix)
    normalize = normalizer(bundle.mean, bundle.std)

    # ---- data
    train_tf = train_transform(cfg.augment, crop=bundle.train_crop, mean=bundle.mean, auto_augment=cfg.auto_augment,
                               random_erasing=cfg.random_erasing, interpolation=cfg.interpolation, pad=cfg.pad)  # fmt: skip
    eval_tf = eval_transform(resize=bundle.eval_resize, crop=bundle.eval_crop, interpolation=cfg.interpolation)
    train_loader = make_loader(Augmented(bundle.train, train_tf, cfg.seed), train_sampler, workers=cfg.workers, strict=cfg.strict_data)
    val_batch = max(cfg.batch_size // world, 1) * 2
    val_loader = make_loader(Augmented(bundle.val, eval_tf, cfg.seed), EvalBatches(len(bundle.val), val_batch, ctx.rank, world),
                             workers=min(cfg.workers, 1), strict=cfg.strict_data)  # fmt: skip

    # ---- resume
    start_epoch, start_batch, step, best, history = 0, 0, 0, -1.0, []
    best_state, since_best = None, 0  # early stopping keeps the best weights
    curve: list[dict] = []  # every curve_steps steps: the paper's Figure 6 (training error over the window, val error)
    if state is not None:
        core.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if plateau is not None and state.get("plateau"):
            plateau.load_state_dict(state["plateau"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        start_epoch, start_batch, step = state["epoch"], state["batch"], state["step"]
        best, history = state.get("best_top1", -1.0), list(state.get("history", []))
        since_best = state.get("since_best", 0)
        curve = list(state.get("curve", []))
        if cfg.early_stop and (run_dir / "best.pt").is_file():
            best_state = artifacts.load_checkpoint(run_dir / "best.pt")["model"]
        _set_rng_state(state["rng"])
        if ctx.is_main:
            log.warning("resuming %s at epoch %d, batch %d (step %d)", run_dir, start_epoch + 1, start_batch, step)

    def checkpoint(path: Path, epoch: int, batch: int) -> None:
        if not ctx.is_main:
            return
        artifacts.save_checkpoint({
            "resnets": {"architecture": core.arch_name, "options": core.arch_options, "class_names": classes,
                        "preprocessing": preprocessing.to_dict()},
            "model": core.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "plateau": plateau.state_dict() if plateau is not None else None,
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "ema": ema.state_dict() if ema is not None else None,
            "epoch": epoch, "batch": batch, "step": step, "best_top1": best, "history": history, "since_best": since_best, "curve": curve,
            "config": cfg.to_dict(), "rng": _rng_state(),
        }, path)  # fmt: skip

    writer = None
    if cfg.tensorboard and ctx.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ResnetsError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        writer = SummaryWriter(str(run_dir / "tensorboard"))

    bar = None
    if cfg.progress and ctx.is_main:
        from tqdm import tqdm

        total_batches = min(epochs * batches_per_epoch, total_steps * cfg.accum_steps)
        bar = tqdm(total=total_batches, initial=start_epoch * batches_per_epoch + start_batch, unit="batch",
                   dynamic_ncols=True, smoothing=0.05)  # fmt: skip

    skipped_total = 0
    plan.apply(start_epoch)
    net = wrap()
    net.train()
    done = step >= total_steps
    for epoch in range(start_epoch, epochs):
        if done:
            break
        if plan.apply(epoch):  # gradual unfreezing
            net = wrap()
            net.train()
        first = start_batch if epoch == start_epoch else 0
        train_sampler.set_epoch(epoch, first)
        sums = torch.zeros(3, dtype=torch.float64, device=dev)  # loss * n, hits, n
        window = torch.zeros(3, dtype=torch.float64, device=dev)  # the same since the last curve point
        finite = torch.ones((), dtype=torch.bool, device=dev)
        seen, t0 = 0, time.perf_counter()
        if bar is not None:
            bar.set_description(f"epoch {epoch + 1}/{epochs}")
        for b, batch in enumerate(train_loader, start=first):
            torch.manual_seed(mix_seed(cfg.seed, epoch, b, ctx.rank))  # drop-path and mixing: a function of the step
            skipped_total += len(batch.bad)
            for path, reason in batch.bad:
                log.warning("skipped unreadable image %s: %s", path, reason)
            x = batch.images.to(dev, non_blocking=True)
            y = batch.labels.to(dev, non_blocking=True)
            if x.numel() == 0:
                continue
            x = normalize(x)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            target = y
            if mix is not None:
                x, target = mix(x, y)
            sync = (b + 1) % cfg.accum_steps == 0 or b + 1 == batches_per_epoch
            no_sync = net.no_sync() if ctx.distributed and not sync and hasattr(net, "no_sync") else nullcontext()
            with no_sync:
                with autocast(dev, cfg.amp):
                    logits = net(x)
                    loss = criterion(logits.float(), target)
                scaler.scale(loss / cfg.accum_steps).backward()
            finite &= torch.isfinite(loss.detach())
            with torch.no_grad():
                batch_sums = torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                                          torch.tensor(float(len(y)), device=dev, dtype=torch.float64)])  # fmt: skip
                sums += batch_sums
                window += batch_sums
            seen += len(y) * world
            if sync:
                if cfg.clip_grad > 0:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(core.parameters(), cfg.clip_grad)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()
                step += 1
                if ema is not None and step % cfg.ema_every == 0:
                    ema.update_parameters(core)
                if cfg.curve_steps and step % cfg.curve_steps == 0:
                    w = distributed.all_reduce_sum(window.clone(), ctx)
                    ev = evaluate(core, val_loader, normalize, len(classes), ctx, amp=cfg.amp, channels_last=cfg.channels_last)
                    curve.append({"step": step, "epoch": epoch + (b + 1) / batches_per_epoch,
                                  "train_loss": w[0].item() / max(w[2].item(), 1),
                                  "train_err": 100 - 100 * w[1].item() / max(w[2].item(), 1),
                                  "val_err": 100 - ev["top1"], "val_loss": ev["loss"]})  # fmt: skip
                    window.zero_()
            if bar is not None:
                bar.update(1)
                if b % 10 == 0 or b + 1 == batches_per_epoch:
                    n = max(sums[2].item(), 1)
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{sums[0].item() / n:.3f}", acc=f"{100 * sums[1].item() / n:.1f}",
                                    lr=f"{opt.param_groups[-1]['lr']:.3g}", img_s=f"{rate:.0f}")  # fmt: skip
            if b % 10 == 0 and not bool(finite):
                break
            if sync and cfg.checkpoint_steps and step % cfg.checkpoint_steps == 0 and b + 1 < batches_per_epoch:
                if not bool(finite):
                    break
                checkpoint(run_dir / "last.pt", epoch, b + 1)
            if step >= total_steps:
                done = True
                break
        if not bool(finite):
            if bar is not None:
                bar.close()
            raise TrainingError(
                f"the loss became non-finite in epoch {epoch + 1} (step {step}); stopped. The last good checkpoint is "
                f"{run_dir / 'last.pt'} (try a lower --lr, --clip-grad, or --amp none)"
            )
        elapsed = time.perf_counter() - t0
        train_sums = distributed.all_reduce_sum(sums.clone(), ctx)
        n = max(train_sums[2].item(), 1)
        record = {"epoch": epoch + 1, "step": step, "lr": opt.param_groups[-1]["lr"],
                  "train_loss": train_sums[0].item() / n, "train_acc": 100 * train_sums[1].item() / n,
                  "images_per_s": seen / max(elapsed, 1e-9), "time_s": elapsed}  # fmt: skip
        last_epoch = done or epoch + 1 == epochs
        if (epoch + 1) % cfg.eval_every == 0 or last_epoch:
            ev = evaluate(core, val_loader, normalize, len(classes), ctx, amp=cfg.amp, channels_last=cfg.channels_last)
            record.update(val_loss=ev["loss"], val_top1=ev["top1"], val_top5=ev["top5"])
            if ema is not None:
                record["ema_val_top1"] = evaluate(ema.module, val_loader, normalize, len(classes), ctx, amp=cfg.amp,
                                                  channels_last=cfg.channels_last)["top1"]  # fmt: skip
            if plateau is not None:
                plateau.step(ev["loss"])
        record["skipped_images"] = skipped_total
        history.append(record)
        improved = record.get("val_top1", -1) > best
        best = max(best, record.get("val_top1", -1))
        if "val_top1" in record:
            since_best = 0 if improved else since_best + 1
        if cfg.early_stop and improved:
            best_state = {k: v.detach().clone() for k, v in core.state_dict().items()}
        stop = bool(cfg.early_stop) and since_best >= cfg.early_stop
        if ctx.is_main:
            checkpoint(run_dir / "last.pt", epoch + 1, 0)
            if improved:
                artifacts.save_checkpoint(artifacts.load_checkpoint(run_dir / "last.pt"), run_dir / "best.pt")
            with artifacts.atomic_path(run_dir / "metrics.jsonl") as tmp:
                tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
            if curve:
                with artifacts.atomic_path(run_dir / "curve.jsonl") as tmp:
                    tmp.write_text("".join(json.dumps(c) + "\n" for c in curve))
            if writer is not None:
                for k, v in record.items():
                    if k not in ("epoch",):
                        writer.add_scalar(k, v, epoch + 1)
            msg = f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.2f}%"
            if "val_top1" in record:
                msg += f", val top-1 {record['val_top1']:.2f}% top-5 {record['val_top5']:.2f}%"
            if bar is not None:
                bar.write(msg + f", {record['images_per_s']:.0f} img/s")
            else:
                print(msg + f", {record['images_per_s']:.0f} img/s", flush=True)
        start_batch = 0
        if stop:
            msg = f"early stop: no better val top-1 in {cfg.early_stop} evaluations; keeping epoch {_best_epoch(history)}'s weights"
            bar.write(msg) if bar is not None else print(msg, flush=True)
            break
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    if best_state is not None:
        core.load_state_dict(best_state)
    result = _finish(cfg, ctx, run_dir, core, ema, bundle, history, val_loader, normalize, skipped_total)
    result["curve"] = curve
    return result


def _best_epoch(history: list[dict]) -> int:
    scored = [h for h in history if "val_top1" in h]
    return max(scored, key=lambda h: h["val_top1"])["epoch"] if scored else 0


def _finish(cfg, ctx, run_dir, core, ema, bundle, history, val_loader, normalize, skipped) -> dict:
    """Final evaluation, the self-describing model file, plots and eval.json."""
    classes = bundle.classes
    ev = evaluate(core, val_loader, normalize, len(classes), ctx, amp=cfg.amp, channels_last=cfg.channels_last)
    final, which = core, "model"
    if ema is not None:
        ev_ema = evaluate(ema.module, val_loader, normalize, len(classes), ctx, amp=cfg.amp, channels_last=cfg.channels_last)
        if ev_ema["top1"] > ev["top1"]:
            final, which, ev = ema.module, "ema", ev_ema
    if cfg.ten_crop:
        tc_tf = ten_crop_transform(resize=bundle.eval_resize, crop=bundle.eval_crop, interpolation=cfg.interpolation)
        tc_loader = make_loader(Augmented(bundle.val, tc_tf, cfg.seed), EvalBatches(len(bundle.val), 32, ctx.rank, ctx.world), workers=min(cfg.workers, 1))
        ev["ten_crop"] = {k: v for k, v in evaluate(final, tc_loader, normalize, len(classes), ctx, amp=cfg.amp).items() if k in ("top1", "top5", "n")}
    result = {"run_dir": str(run_dir), "model_path": str(run_dir / "model.safetensors"), "weights": which,
              "top1": ev["top1"], "top5": ev["top5"], "loss": ev["loss"], "n": ev["n"], "per_class": ev["per_class"],
              "classes": classes, "skipped_images": skipped, "val_skipped_images": ev["bad_samples"],
              "history": history}  # fmt: skip
    if "ten_crop" in ev:
        result["ten_crop"] = ev["ten_crop"]
    if ctx.is_main:
        from . import artifacts as A
        from .reports import plot_confusion, plot_curves

        if final is not core:
            core.load_state_dict(final.state_dict())
        A.save(core, run_dir / "model.safetensors", extra={"val_top1": ev["top1"], "dataset": cfg.dataset})
        with A.atomic_path(run_dir / "confusion.json") as tmp:
            tmp.write_text(json.dumps({"classes": classes, "matrix": ev["confusion"]}))
        with A.atomic_path(run_dir / "eval.json") as tmp:
            tmp.write_text(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
        plot_confusion(ev["confusion"], classes, run_dir / "confusion.png", f"{core.arch_name} on {cfg.dataset}: top-1 {ev['top1']:.2f}%")
        if history:
            plot_curves(history, run_dir / "curves.png", f"{core.arch_name} on {cfg.dataset}")
    return result
