"""The state of one training run, as one object: what `engine.build_run` makes, the steps (`steps.py`) and the
loop (`loop.py`) advance, and a checkpoint saves and restores whole. Its own module, below both, so the steps
read it without importing the loop that drives them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import distributed
from ..config import TrainConfig
from ..data.batching import Loader
from ..data.preprocessing import Preprocessing
from ..tasks import Task
from . import finetune, rundir


class TrainingError(Exception):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


@dataclass
class Run:
    """Everything one training run holds: built once from the config by `build_run`, advanced by
    `train_one_epoch`, saved and restored whole by `save_state` / `restore`."""

    cfg: TrainConfig
    ctx: distributed.Context
    task: Task  # what is trained: its data, batches, losses and scores (tasks/)
    run_dir: Path
    bundle: Any  # the data: a DataBundle, or a dense task's Sets (.train, .val, .classes)
    core: nn.Module  # the plain module: what is saved and evaluated
    preprocessing: Preprocessing | None  # None: the model feeds itself (a detector's transform)
    plan: finetune.Plan
    opt: torch.optim.Optimizer
    sched: Any
    plateau: Any
    scaler: torch.amp.GradScaler
    criterion: nn.Module | None  # the task's loss module, mixing and normalisation (None: the model's own)
    mix: Any
    normalize: Any
    train_loader: Loader
    val_loader: Loader | None  # None: the task evaluates on the validation set itself
    ema: nn.Module | None
    lock: rundir.RunLock | None  # held by rank 0 for the whole run
    fresh: bool  # this run made its folder (removed again if it stops before its first checkpoint)
    amp: str  # the precision in use: "auto" resolved for this device
    channels_last: bool  # the memory format in use (None in the config resolved for this device)
    graph: bool  # the training step runs as a captured CUDA graph
    batches_per_epoch: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    net: nn.Module | None = None  # what trains: core, wrapped in DDP and/or torch.compile
    # where the run stands
    epoch: int = 0
    batch: int = 0
    step: int = 0
    best: float = -1.0
    since_best: int = 0
    best_state: dict | None = None  # early stopping keeps the best weights
    history: list = field(default_factory=list)
    curve: list = field(default_factory=list)  # every curve_steps steps: the paper's Figure 6 points
    skipped: int = 0
    # the epoch's running sums (loss * n, top-1 hits, n; over all processes) at a mid-epoch checkpoint, and those since
    # the last curve point: a resumed epoch reports all of its batches, not only those after the resume
    partial: dict | None = None
    warned_paths: set = field(default_factory=set)  # unreadable images already named in a warning (once a run)
    last_eval: dict | None = None  # the last epoch's evaluation when it is also the final one (estimate.reuses_last)
    bar: Any = None
    writer: Any = None
    on_progress: Callable[[dict], None] | None = None
    preemption: Any = None  # the run's SIGTERM / SIGUSR1 handlers (preemption.Preemption; None: not handled)

    @property
    def classes(self) -> list[str]:
        return self.bundle.classes

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps
