"""What a run shows and writes as it goes: the progress bar, TensorBoard, the metrics CSV, the lines it prints."""

from __future__ import annotations

from pathlib import Path

from ..errors import ResnetsError
from .estimate import batches_done, eval_units, evaluations, training_batches
from .state import Run


def write_csv(path: Path, rows: list[dict]) -> None:
    """One row per epoch, a column per key (those of every epoch, in first-seen order; missing cells empty)."""
    import csv

    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def say(run: Run, msg: str) -> None:
    if run.bar is not None:
        run.bar.write(msg)
    else:
        print(msg, flush=True)


def open_outputs(run: Run) -> None:
    """The TensorBoard writer and the progress bar (rank 0)."""
    cfg = run.cfg
    if cfg.tensorboard and run.ctx.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ResnetsError(
                "--tensorboard needs the tensorboard package: pip install 'resnets[tensorboard]'"
            ) from None
        run.writer = SummaryWriter(str(run.run_dir / "tensorboard"))
    if cfg.progress and run.ctx.is_main:
        from tqdm import tqdm

        # training batches, and the evaluations in batches' worth of work, so the ETA is the whole run's
        unit, passes = eval_units(run), evaluations(run)
        run.bar = tqdm(
            total=training_batches(run) + passes * unit,
            initial=batches_done(run) + (passes - evaluations(run, run.epoch)) * unit,
            unit="batch",
            dynamic_ncols=True,
            smoothing=0.05,
        )


def evaluated(run: Run, passes: int = 1) -> None:
    """Evaluation passes done: the progress bar moves on by their work."""
    if run.bar is not None:
        run.bar.update(passes * eval_units(run))


def close_outputs(run: Run) -> None:
    if run.bar is not None:
        run.bar.close()
        run.bar = None
    if run.writer is not None:
        run.writer.close()
        run.writer = None


def best_epoch(history: list[dict], key: str = "val_top1") -> int:
    """The epoch whose `key` (the score that picks best.pt) was highest (0: none was scored)."""
    scored = [h for h in history if key in h]
    return max(scored, key=lambda h: h[key])["epoch"] if scored else 0
