"""Where a segmenter's training policy was before one engine trained every task: its data, model and loss are
tasks/segmentation.py's now. These names stay for code that imported them here."""

from __future__ import annotations

import torch
from torch import nn

from ..tasks.segmentation import AUX_WEIGHT, data, losses, model, reset_classes

__all__ = ["AUX_WEIGHT", "data", "loss", "model", "reset_classes"]


def loss(net: nn.Module, images: list[torch.Tensor], targets: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """torchvision's reference loss, summed: tasks.segmentation.losses."""
    return sum(losses(net, images, targets, device).values())
