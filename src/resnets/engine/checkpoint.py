"""A run saved and restored whole: weights, optimizer, schedules, counters and every random state (so a resumed run
is bit-identical), and never a checkpoint of non-finite weights."""

from __future__ import annotations

import logging
import random
import warnings
from pathlib import Path

import torch

from ..weights.files import load_checkpoint, save_checkpoint
from . import steps
from .state import Run, TrainingError

log = logging.getLogger("resnets")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def state_dict(run: Run, epoch: int, batch: int) -> dict:
    """The whole run at the start of (epoch, batch): a checkpoint from which `restore` continues exactly."""
    core = run.core
    record = {"architecture": core.meta.architecture, "options": core.meta.options}
    record["class_names"] = core.meta.class_names  # a detector's with its background
    if run.preprocessing is not None:  # (a detector's transform is its own)
        record["preprocessing"] = run.preprocessing.to_dict()
    return {
        "resnets": record,
        "model": core.state_dict(),
        "optimizer": steps.lr_as_float(run.opt.state_dict()),
        "scheduler": run.sched.state_dict(),
        "plateau": run.plateau.state_dict() if run.plateau is not None else None,
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "epoch": epoch,
        "batch": batch,
        "step": run.step,
        run.task.best_key: run.best,
        "history": run.history,
        "since_best": run.since_best,
        "curve": run.curve,
        "skipped": run.skipped,
        "config": run.cfg.to_dict(),
        "rng": rng_state(),
        "partial": run.partial if batch else None,
    }


def stopped(run: Run, what: str) -> TrainingError:
    """The error that stops a run whose loss or weights stopped being finite, naming the checkpoint it leaves."""
    last = run.run_dir / "last.pt"
    kept = f"The last good checkpoint is {last}" if last.is_file() else "No checkpoint had been written yet"
    return TrainingError(f"{what}; stopped. {kept} (try a lower --lr, --clip-grad, or --amp none)")


def save_state(run: Run, path: Path, epoch: int, batch: int) -> None:
    """A checkpoint of the run, never of non-finite weights or BatchNorm statistics: a step whose loss was finite
    can still leave them inf (a huge lr), and a checkpoint of them would replace the last good one."""
    finite = torch.stack(
        [torch.isfinite(t).all() for t in run.core.state_dict().values() if t.is_floating_point()]
    ).all()
    if not bool(finite):
        raise stopped(run, f"the weights became non-finite at step {run.step}")
    if run.ctx.is_main:
        save_checkpoint(state_dict(run, epoch, batch), path)


def restore(run: Run, state: dict) -> None:
    """Continue from a checkpoint of `state_dict`: weights, optimizer, schedules, counters and random state. A
    resume that changed the run's length (--epochs, --iterations: the checkpoint's config says another) takes the
    new length's schedule at the checkpoint's step (the saved one ends where the old run ended: one-cycle failed
    past it, cosine rose again)."""
    run.core.load_state_dict(state["model"])
    saved = state.get("config", {})
    if any(k in saved and saved[k] != getattr(run.cfg, k) for k in ("epochs", "iterations")):
        with warnings.catch_warnings():  # ("lr_scheduler.step() before optimizer.step()": none is due here)
            warnings.simplefilter("ignore")
            for _ in range(state["step"]):  # from the fresh schedule's start (cosine's steps are relative)
                run.sched.step()
        scheduled = [{k: g[k] for k in ("lr", "momentum", "betas") if k in g} for g in run.opt.param_groups]
        run.opt.load_state_dict(state["optimizer"])
        for group, values in zip(run.opt.param_groups, scheduled):
            group.update(values)  # the new schedule's, not the saved run's last
    else:
        run.opt.load_state_dict(state["optimizer"])
        run.sched.load_state_dict(state["scheduler"])
    if run.graph:
        steps.lr_on_device(run.opt, run.ctx.device)
    if run.plateau is not None and state.get("plateau"):
        run.plateau.load_state_dict(state["plateau"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None and state.get("ema"):
        run.ema.load_state_dict(state["ema"])
    run.epoch, run.batch, run.step = state["epoch"], state["batch"], state["step"]
    run.best = state.get("best_top1", state.get("best_score", -1.0))  # a classifier's key, a dense run's
    run.history = list(state.get("history", []))
    run.since_best = state.get("since_best", 0)
    run.curve = list(state.get("curve", []))
    run.skipped = state.get("skipped", 0)  # unreadable training images met before the checkpoint
    run.partial = _partial(state.get("partial")) if run.batch else None
    if run.cfg.early_stop and (run.run_dir / "best.pt").is_file():
        run.best_state = load_checkpoint(run.run_dir / "best.pt")["model"]
    set_rng_state(state["rng"])
    if run.ctx.is_main:
        log.warning("resuming %s at epoch %d, batch %d (step %d)", run.run_dir, run.epoch + 1, run.batch, run.step)


def _partial(sums: dict | list | None) -> dict | None:
    """A mid-epoch checkpoint's running sums as the loop keeps them: {"epoch": [loss x n, hits, n], "window": the
    same since the last curve point}; a dense run's checkpoint from before one engine held [loss x n, n]."""
    if isinstance(sums, list):
        loss_n, n = sums
        return {"epoch": [loss_n, 0.0, n], "window": [0.0, 0.0, 0.0]}
    return sums
