"""The learning-rate schedule of a run (cosine, step, one-cycle, plateau, constant, with warmup); the optimizer is
built with the step, in steps.py."""

from __future__ import annotations

import torch

from ..config import TrainConfig


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int, steps_per_epoch: int, peak_lr: float
):
    """Per-step schedule: optional linear warmup, then cosine / step / one-cycle / constant. The plateau schedule
    (the paper's ImageNet rule) is stepped per epoch on the validation loss and returned separately."""
    from torch.optim import lr_scheduler

    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    if cfg.schedule == "onecycle":  # each group peaks at its own lr (layer-wise learning rates)
        max_lr = [g["lr"] for g in opt.param_groups]
        # a quarter of the steps rising, and at least two (OneCycleLR divides by the length of each phase: a run
        # of 4 steps had a rise of one step, then a division by zero)
        total = max(total_steps, 4)
        return lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=max(0.25, 2 / total)), None
    rest = max(total_steps - warmup, 1)
    plateau = None
    if cfg.schedule == "cosine":
        main = lr_scheduler.CosineAnnealingLR(opt, T_max=rest)
    elif cfg.schedule == "step":
        main = lr_scheduler.MultiStepLR(opt, milestones=[max(m - warmup, 0) for m in cfg.milestones], gamma=cfg.gamma)
    else:  # constant, plateau
        main = lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
        if cfg.schedule == "plateau":
            plateau = lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.gamma, patience=cfg.plateau_patience)
    if warmup == 0:
        return main, plateau
    warm = lr_scheduler.LinearLR(opt, start_factor=cfg.warmup_start, end_factor=1.0, total_iters=warmup)
    return lr_scheduler.SequentialLR(opt, [warm, main], milestones=[warmup]), plateau
