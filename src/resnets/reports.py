"""Pictures a person would rather see than read: training curves and the confusion matrix."""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .safe_io import atomic_path  # noqa: E402


def save_png(fig, path: str | os.PathLike) -> None:
    """A matplotlib figure as a PNG, written atomically; the figure is closed."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(history: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """Loss and error (%) per epoch, train dashed and validation solid (the paper's Figure 6 convention)."""
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "--", label="train")
    if any("val_loss" in h for h in history):
        ax1.plot(
            [h["epoch"] for h in history if "val_loss" in h],
            [h["val_loss"] for h in history if "val_loss" in h],
            "-",
            label="validation",
        )
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.plot(epochs, [100 - h["train_acc"] for h in history], "--", label="train")
    if any("val_top1" in h for h in history):
        ax2.plot(
            [h["epoch"] for h in history if "val_top1" in h],
            [100 - h["val_top1"] for h in history if "val_top1" in h],
            "-",
            label="validation",
        )
    ax2.set_xlabel("epoch"), ax2.set_ylabel("top-1 error (%)"), ax2.legend(), ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    save_png(fig, path)


def plot_confusion(
    confusion: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike, title: str = ""
) -> None:
    """Row-normalised confusion matrix (true class down, predicted across), counts in the cells when few classes."""
    cm = np.asarray(confusion, dtype=float)
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(classes)
    size = min(4 + 0.45 * n, 24)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=45, ha="right"), ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        int(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if rows[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    ax.set_title(title or "confusion matrix")
    save_png(fig, path)
