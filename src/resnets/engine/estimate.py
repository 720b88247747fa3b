"""What a run will cost before it starts: its training step timed on a copy of the model (a few steps on random
batches of the run's shape; the run's model, optimizer and random streams untouched), the evaluations it will do,
and the accuracy its recipe reached where the run is that recipe unchanged."""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import fields

import torch

from ..config import RECIPE_RESULTS, TrainConfig, resolve
from ..data.loader import Augmented
from ..data.sandbox import usable_cores
from ..devices import autocast
from .state import Run

EVAL_COST = 1 / 3  # an evaluated image costs about a third of a trained one (forward only, no augmentation)
MAX_PROBE_S = 20.0  # time spent timing at most: one step of a large net on a CPU is enough to say hours

# keys that say where a run goes or how it is shown, not what it learns: the recipe's accuracy holds across them
_PRESENTATION = set(
    "out name progress workers device seed data val_data download tensorboard checkpoint_steps eval_every "
    "curve_steps loader channels_last amp compile cuda_graph deterministic strict_data tta".split()
)


def step_rate(run: Run, steps: int = 5, warmup: int = 3) -> tuple[float, int]:
    """(images/s of the training step, steps timed): forward, the task's loss, backward and an SGD step of a copy
    of the model on random batches of the run's shape (the task's `probe`), timed after `warmup` untimed steps (a
    fresh process's first steps run 10-40% slower than its epochs do); only the first step when one is slow."""
    cfg, dev = run.cfg, run.ctx.device
    per_rank = cfg.batch_size // run.ctx.world
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(0)
        model = copy.deepcopy(run.core).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
        x, target, y = run.task.probe(run, per_rank)

        def step() -> float:
            t0 = time.perf_counter()
            with autocast(dev, run.amp):
                loss = sum(run.task.forward(run, model, x, target, y)[0].values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return time.perf_counter() - t0

        first = step()
        if first * (warmup + steps) > MAX_PROBE_S:
            return per_rank / first, 1
        for _ in range(warmup - 1):
            step()
        spent = sum(step() for _ in range(steps))
    return per_rank * steps / spent, steps


def loader_seconds(run: Run, samples: int = 4) -> float:
    """Seconds the loader's work on one training image takes (read, decode, augment: the host loader's item, which
    its worker processes make), the median of a few of the run's own images after one untimed (the decoder's start);
    items are seeded by their index, so nothing the run draws moves. 0: a loader that does not make images one at
    a time (data held in memory or augmented on the device, a dense task's lists)."""
    items = getattr(getattr(run.train_loader, "loader", None), "dataset", None)
    if not isinstance(items, Augmented) or len(items) == 0:
        return 0.0
    picks = [i * len(items) // (samples + 1) for i in range(samples + 1)]
    items[picks[0]]
    times = []
    for i in picks[1:]:
        t0 = time.perf_counter()
        items[i]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)  # (one huge photo among the few does not speak for the folder)


def training_rate(run: Run) -> tuple[float, int, float]:
    """(images/s of the run's training, steps timed, the loader's seconds an image): the step's rate (step_rate)
    slowed by the loader's work where it competes: on a CPU its workers take the cores the step runs on (their
    times add, shared by the cores); on a GPU it keeps up or sets the pace (its workers in parallel)."""
    rate, timed = step_rate(run)
    per_image = loader_seconds(run)
    if per_image:
        workers = max(run.cfg.workers, 1)
        if run.ctx.device.type == "cpu":
            rate = 1 / (1 / rate + per_image / min(workers, usable_cores()))
        else:
            rate = min(rate, workers / per_image)
    return rate, timed, per_image


def recipe_of(cfg: TrainConfig) -> str | None:
    """The recipe this config is, apart from where it goes and how it is shown (None: none, or changed)."""
    learns = [f.name for f in fields(TrainConfig) if f.name not in _PRESENTATION]
    for name in RECIPE_RESULTS:
        ref = resolve(name)
        if all(getattr(cfg, k) == getattr(ref, k) for k in learns):
            return name
    return None


def _minutes(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def describe(run: Run) -> list[str]:
    """The lines printed before training: the task's header, the expected time on this machine and, for an
    unchanged recipe, the expected accuracy."""
    cfg = run.cfg
    rate, timed, per_image = training_rate(run)
    rate *= run.ctx.world
    images = max(training_batches(run) - batches_done(run), 0) * cfg.batch_size
    evals = evaluations(run, from_epoch=run.epoch)
    eval_s = evals * len(run.bundle.val) * EVAL_COST / rate
    header = run.task.header(run)  # what trains on what
    lines = [header] if header else []
    lines += [
        f"expected on this machine: about {_minutes(images / rate + eval_s)} "
        f"(training {_minutes(images / rate)} at ~{rate:,.{1 if rate < 10 else 0}f} img/s from {timed} timed step{'s' * (timed > 1)}"
        f"{f' and {1000 * per_image:.0f} ms of decoding an image' if per_image else ''}; "
        f"{evals} evaluation{'s' * (evals > 1)} of {len(run.bundle.val):,} images ~{_minutes(eval_s)})"
    ]
    name = recipe_of(cfg)
    if name is not None:
        lines.append(f"expected top-1: {RECIPE_RESULTS[name]}")
    return lines


def evaluations(run: Run, from_epoch: int = 0) -> int:
    """The evaluation passes over the validation set a run makes from `from_epoch` on: those at the end of each
    `eval_every` epochs (and the last), the final one, its EMA and test-time-augmented ones."""
    cfg = run.cfg
    due = [e for e in range(from_epoch, run.epochs) if (e + 1) % cfg.eval_every == 0 or e + 1 == run.epochs]
    passes = sum(epoch_passes(run, last=e + 1 == run.epochs) for e in due)
    return passes + final_passes(run, reused=reuses_last(run) and from_epoch < run.epochs)


def reuses_last(run: Run) -> bool:
    """Whether the last epoch's evaluation serves as the final one (scoring the mirror images too under TTA): the
    final weights are the last epoch's when there are no EMA weights to choose from and no early stopping to go
    back to a better epoch."""
    return run.ema is None and not run.cfg.early_stop


def training_batches(run: Run) -> int:
    """The training batches of the whole run (its epochs, or fewer when --iterations ends it sooner)."""
    # an epoch's last step may take fewer than accum_steps batches (its window ends with the epoch)
    epochs, steps = divmod(run.total_steps, run.steps_per_epoch)
    return epochs * run.batches_per_epoch + min(steps * run.cfg.accum_steps, run.batches_per_epoch)


def batches_done(run: Run) -> int:
    """The training batches behind a run where it stands (a resumed one's before its checkpoint)."""
    return run.epoch * run.batches_per_epoch + run.batch


def epoch_passes(run: Run, last: bool = False) -> int:
    """The passes of one epoch's evaluation: the model's, and its EMA's; the last epoch's, when it is also the final
    one, scores the mirror images too under TTA."""
    if last and reuses_last(run):
        return 1 + (run.cfg.tta != "none")
    return 1 + (run.ema is not None)


def final_passes(run: Run, reused: bool = False) -> int:
    """The passes of the final evaluation: the model's and its EMA's (each with its mirror images under flip TTA
    when there is no EMA to choose from), else a flip TTA pass of the chosen weights, and 10 crops; with `reused`,
    the last epoch's evaluation was the final one and only the 10 crops are left."""
    ema, tta = run.ema is not None, run.cfg.tta != "none"
    return (0 if reused else (1 + ema) * (1 + tta)) + 10 * run.cfg.ten_crop


def eval_units(run: Run) -> int:
    """One evaluation pass in training batches' worth of work (the progress bar counts both)."""
    return max(1, round(len(run.bundle.val) * EVAL_COST / run.cfg.batch_size))
