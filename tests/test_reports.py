"""resnets.reports: the pictures a run leaves (curves, confusion matrix) written atomically as PNG files."""

import os

from PIL import Image

from resnets.reports import plot_confusion, plot_curves


def test_curves_and_confusion_are_pngs_written_whole(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 1.0, "train_acc": 60.0, "val_loss": 0.9, "val_top1": 65.0},
        {"epoch": 2, "train_loss": 0.5, "train_acc": 80.0},  # an epoch without evaluation
    ]
    plot_curves(history, tmp_path / "curves.png", "a title")
    plot_confusion([[5, 1], [0, 4]], ["cat", "dog"], tmp_path / "confusion.png", "t")
    for name in ("curves.png", "confusion.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200
    assert sorted(os.listdir(tmp_path)) == ["confusion.png", "curves.png"]  # no temporaries left
