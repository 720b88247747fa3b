"""The loop: `fit` trains a built run from where it stands to its end, one `train_one_epoch` and `end_epoch` at a
time, then `finish` evaluates and saves it; `validate` on the run's loader. One loop for every task: the run's task
(tasks/) turns each loader batch into the step's inputs, and brings the losses, the scores and how they are shown."""

from __future__ import annotations

import json
import logging
import signal
import time

import torch
from torch import nn

from .. import distributed, safe_io
from ..data.batching import Loader, mix_seed
from ..errors import Stopped
from ..weights.files import load_checkpoint, save, save_checkpoint
from . import steps
from .checkpoint import save_state, stopped
from .estimate import epoch_passes, final_passes, reuses_last
from .outputs import best_epoch, close_outputs, evaluated, open_outputs, say, write_csv
from .state import Run

log = logging.getLogger("resnets")


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


def validate(run: Run, model: nn.Module | None = None, loader: Loader | None = None, tta: str = "none") -> dict:
    """The task's scores of `model` (default: the core) on `loader` (default: the validation set), at the run's
    precision and memory format (a classifier's: top-1, top-5, loss, per-class accuracy, the confusion matrix; with
    `tta`, those scores too)."""
    model = run.core if model is None else model
    distributed.average_norm_statistics(model, run.ctx)  # every rank scores, and rank 0 saves, the same model
    ev = run.task.evaluate(run, model, loader, tta)
    for f in ev["bad_files"]:  # each named once in a run, not at every evaluation
        if f["path"] not in run.warned_paths:
            run.warned_paths.add(f["path"])
            log.warning("skipped unreadable image %s (validation): %s", f["path"], f["error"])
    return ev


def _seed_step(run: Run, epoch: int, b: int) -> None:
    """Drop-path, mixing and a detector's box sampling draw from generators seeded by the step: the CPU one
    (MixUp/CutMix, drop-path on a CPU) always, the GPU's only when the step draws there (stochastic depth, a task
    that samples on the device: seeding every accelerator costs far more)."""
    seed = mix_seed(run.cfg.seed, epoch, b, run.ctx.rank)
    torch.default_generator.manual_seed(seed)
    if (run.cfg.drop_path_rate or run.task.seeds_device) and run.ctx.device.type == "cuda":
        torch.cuda.manual_seed(seed)


def _after_step(run: Run, epoch: int, b: int, window: torch.Tensor) -> None:
    """An optimizer step was taken: the schedule, the step count, the EMA and (every curve_steps) a curve point
    from the `window` of sums since the last one."""
    cfg = run.cfg
    run.sched.step()
    run.step += 1
    if run.ema is not None and run.step % cfg.ema_every == 0:
        run.ema.update_parameters(run.core)
    if cfg.curve_steps and run.step % cfg.curve_steps == 0 and run.task.accuracy:  # (an error curve: top-1's)
        w = distributed.all_reduce_sum(window.clone(), run.ctx)
        run.curve.append(
            {
                "step": run.step,
                "epoch": epoch + (b + 1) / run.batches_per_epoch,
                "train_loss": w[0].item() / max(w[2].item(), 1),
                "train_err": 100 - 100 * w[1].item() / max(w[2].item(), 1),
                **run.task.curve_point(validate(run)),
            }
        )
        window.zero_()


def _show_progress(
    run: Run, epoch: int, b: int, sums: torch.Tensor, seen: int, t0: float, reported: float, now: bool = False
) -> float:
    """The bar's postfix every 10 batches; the progress callback every 0.5 s, at the end of each epoch (so a short
    run reports too, and the last report is the last step) and when `now` (a checkpoint was written). Returns when
    the callback was last called."""
    if run.bar is not None:
        run.bar.update(1)
        if b % 10 == 0 or b + 1 == run.batches_per_epoch:
            n = max(sums[2].item(), 1)
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            acc = {"acc": f"{100 * sums[1].item() / n:.1f}"} if run.task.accuracy else {}
            run.bar.set_postfix(
                loss=f"{sums[0].item() / n:.3f}", **acc, lr=f"{float(run.opt.param_groups[-1]['lr']):.3g}",
                img_s=f"{rate:.0f}" if rate >= 100 else f"{rate:.1f}",
            )  # fmt: skip
    last = b + 1 == run.batches_per_epoch or run.done or now
    if run.on_progress is not None and (last or time.perf_counter() - reported >= 0.5):
        reported = time.perf_counter()
        n = max(sums[2].item(), 1)
        report = {"step": run.step, "total_steps": run.total_steps, "epoch": epoch + 1, "loss": sums[0].item() / n}
        if run.task.accuracy:
            report["acc"] = 100 * sums[1].item() / n
        run.on_progress(report | {"img_s": seen / max(reported - t0, 1e-9)})
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
    if run.preemption is not None:  # from here a signal is a checkpoint at the next optimizer step, not a stop
        run.preemption.eager = False
    if run.bar is not None:
        run.bar.set_description(f"epoch {epoch + 1}/{run.epochs}")
    for b, raw in enumerate(run.train_loader, start=first):
        _seed_step(run, epoch, b)
        batch = run.task.batch(run, raw)
        run.skipped += len(batch.bad)
        for path, reason in batch.bad:
            if path not in run.warned_paths:  # once in a run, not every epoch
                run.warned_paths.add(path)
                log.warning("skipped unreadable image %s: %s", path, reason)
        if batch.n == 0:
            continue
        sync = (b + 1) % cfg.accum_steps == 0 or b + 1 == run.batches_per_epoch
        batch_sums = step_fn(batch.inputs, batch.targets, batch.labels, sync)
        finite &= torch.isfinite(batch_sums[0])
        sums += batch_sums
        window += batch_sums
        seen += batch.n * ctx.world
        if sync:
            _after_step(run, epoch, b, window)
        if b % 10 == 0 and not bool(finite):
            break
        # a mid-epoch checkpoint: every checkpoint_steps, and where a stop is asked for (at the epoch's last step
        # too: its evaluation, which can take long, is then the resumed run's first work)
        signum = _stop_asked(run) if sync and not run.done else None
        saved = signum or (
            sync and cfg.checkpoint_steps and run.step % cfg.checkpoint_steps == 0 and b + 1 < run.batches_per_epoch
        )
        if saved:
            if not bool(finite):
                break
            both = distributed.all_reduce_sum(torch.cat([sums, window]), ctx).tolist()
            run.partial = {"epoch": both[:3], "window": both[3:]}
            save_state(run, run.run_dir / "last.pt", epoch, b + 1)
        # reported after the checkpoint (a caller that stops the run on a report loses no step) and at each one
        reported = _show_progress(run, epoch, b, sums, seen, t0, reported, bool(saved))
        if signum:
            raise _stopped(run, signum, f"in epoch {epoch + 1}")
        if run.done:
            break
    if not bool(finite):
        raise stopped(run, f"the loss became non-finite in epoch {epoch + 1} (step {run.step})")
    elapsed = time.perf_counter() - t0
    train_sums = distributed.all_reduce_sum(sums.clone(), ctx)
    n = max(train_sums[2].item(), 1)
    record = {"epoch": epoch + 1, "step": run.step, "lr": float(run.opt.param_groups[-1]["lr"])}
    record["train_loss"] = train_sums[0].item() / n
    if run.task.accuracy:
        record["train_acc"] = 100 * train_sums[1].item() / n
    return record | {"images_per_s": seen / max(elapsed, 1e-9), "time_s": elapsed}


def end_epoch(run: Run, epoch: int, record: dict) -> bool:
    """Evaluate when due, keep the history and the best weights, checkpoint and report. True: stop early."""
    cfg, score = run.cfg, run.task.score
    if (epoch + 1) % cfg.eval_every == 0 or run.done or epoch + 1 == run.epochs:
        last = (run.done or epoch + 1 == run.epochs) and reuses_last(run)  # the final evaluation too
        ev = validate(run, tta=cfg.tta if last else "none")
        run.last_eval = ev if last else None
        record.update(run.task.record(ev))
        if run.ema is not None:
            record[f"ema_val_{score}"] = validate(run, run.ema.module)[score]
        evaluated(run, epoch_passes(run, last))
        if run.plateau is not None and "loss" in ev:  # (a task without a validation loss has no plateau to see)
            run.plateau.step(ev["loss"])
    record["skipped_images"] = run.skipped
    run.history.append(record)
    improved = record.get(f"val_{score}", -1) > run.best
    run.best = max(run.best, record.get(f"val_{score}", -1))
    if f"val_{score}" in record:
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
            write_csv(tmp, run.history)
        if run.curve:
            with safe_io.atomic_path(run.run_dir / "curve.jsonl") as tmp:
                tmp.write_text("".join(json.dumps(c) + "\n" for c in run.curve))
        if run.writer is not None:
            for k, v in record.items():
                if k != "epoch":
                    run.writer.add_scalar(k, v, epoch + 1)
        say(run, run.task.epoch_line(run, record))
    stop = bool(cfg.early_stop) and run.since_best >= cfg.early_stop
    if stop:
        say(
            run,
            f"early stop: no better {run.task.score_title} in {cfg.early_stop} evaluations; keeping epoch "
            f"{best_epoch(run.history, f'val_{score}')}'s weights",
        )
    return stop


def _kept(run: Run, said: bool) -> int:
    """The epoch whose weights early stopping keeps, said when it is not the last (and the stop did not say it):
    with few validation images, epochs tie and the first of them is kept."""
    score = run.task.score
    kept = best_epoch(run.history, f"val_{score}")
    if kept != len(run.history) and not said and run.ctx.is_main:
        few = len(run.bundle.val)
        hint = (
            f" ({few} validation images: ties are likely; a val/ folder or --val-split gives more)" if few < 20 else ""
        )
        say(run, f"keeping epoch {kept}'s weights: later epochs did not beat its {run.task.score_title}{hint}")
    return kept


def _stop_asked(run: Run) -> int | None:
    """The signal the run stops for (every rank agreeing), or None."""
    return run.preemption.asked(run.ctx) if run.preemption is not None else None


def _stopped(run: Run, signum: int, where: str) -> Stopped:
    """The stop after the checkpoint a signal asked for: one line naming it and how the run continues."""
    return Stopped(
        signum,
        f"stopped by {signal.Signals(signum).name} at step {run.step} of {run.total_steps} ({where}): "
        f"checkpoint {run.run_dir / 'last.pt'}; the same command with --resume auto (or --resume {run.run_dir}) "
        "continues it",
    )


def fit(run: Run) -> dict:
    """Train the run from where it stands to its end (or an early stop), then evaluate and save it."""
    open_outputs(run)
    try:
        run.plan.apply(run.epoch)
        wrap(run)
        step_fn = steps.make_step(run)
        stop = False
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
            signum = _stop_asked(run) if not run.done and epoch + 1 < run.epochs else None
            if signum:  # (the epoch's checkpoint is written)
                raise _stopped(run, signum, f"after epoch {epoch + 1}")
        kept = len(run.history)
        if run.best_state is not None:
            run.core.load_state_dict(run.best_state)
            kept = _kept(run, said=stop)
        result = finish(run, kept)
    finally:
        close_outputs(run)
    result["curve"] = run.curve
    return result


def finish(run: Run, kept: int | None = None) -> dict:
    """Final evaluation (the EMA weights when they score better; the task's extras: a classifier's 10 crops), the
    self-describing model file and the task's report (eval.json; a classifier's confusion matrix and curves)."""
    cfg, core, score = run.cfg, run.core, run.task.score
    # without EMA weights to choose from, one pass gives the plain scores and the test-time-augmented ones; the last
    # epoch's evaluation was that pass when the weights are still the last epoch's
    reused = run.last_eval is not None
    ev = run.last_eval if reused else validate(run, tta=cfg.tta if run.ema is None else "none")
    final, which = core, "model"
    if run.ema is not None:
        ev_ema = validate(run, run.ema.module)
        if ev_ema[score] > ev[score]:
            final, which, ev = run.ema.module, "ema", ev_ema
    ev = run.task.final_scores(run, validate, final, ev)
    evaluated(run, final_passes(run, reused))
    result = {
        "run_dir": str(run.run_dir),
        "model_path": str(run.run_dir / "model.safetensors"),
        "task": run.task.name,
        "weights": which,
        "kept_epoch": kept if kept is not None else len(run.history),  # early stopping's choice, or the last
        **run.task.result(run, ev),
        "classes": run.classes,
        "skipped_images": run.skipped,
        "val_skipped_images": ev["bad_samples"],
        "amp": run.amp,
        "history": run.history,
    }
    if run.ctx.is_main:
        if final is not core:
            core.load_state_dict(final.state_dict())
        save(core, run.run_dir / "model.safetensors", extra={f"val_{score}": ev[score], "dataset": cfg.dataset})
        run.task.write(run, result, ev)
    return result
