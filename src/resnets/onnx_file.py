"""Our own ONNX exports read back as models: `resnets export --format onnx` records the model (architecture,
options, class names, preprocessing) in the file's metadata, so predict, bench and serve can run the file alone,
through ONNX Runtime, labelled and fed as the model it came from. The file gives class scores only (no pooled
features, no gradients): embedding and Grad-CAM need the PyTorch model."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .errors import ResnetsError
from .export import ort_run
from .meta import ModelMeta
from .onnx_predict import open_onnx


class OnnxModel(nn.Module):
    """An ONNX file as a module on the CPU: `model(x)` -> logits (float32), `model.meta` from the file."""

    num_features = None  # the file ends at the logits

    def __init__(self, path: Path, session, meta: ModelMeta, num_classes: int):
        super().__init__()
        self.path, self.session, self.meta, self.num_classes = path, session, meta, num_classes
        self._run = ort_run(session)
        # a parameter, so code that asks a model for its device gets the CPU (where ONNX Runtime computes)
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)


def read_onnx(path: str | os.PathLike) -> OnnxModel:
    """An ONNX file that `resnets export` wrote, checked: its record (as a model file's), its input of the
    recorded channels and crop, a classifier of the recorded size; or one WeightsError saying why not."""
    session, meta, n = open_onnx(path)
    return OnnxModel(Path(path), session, meta, n)


def check_runnable(backend: str, output: str, precision: str, device: torch.device) -> None:
    """An ONNX file runs as it is: ONNX Runtime, fp32, the CPU, class scores."""
    if output != "logits":
        raise ResnetsError(
            "an ONNX file gives class scores only; embeddings (and Grad-CAM) need the PyTorch model "
            "file it was exported from"
        )
    if backend not in ("auto", "eager", "onnxruntime") or precision != "fp32" or device.type != "cpu":
        raise ResnetsError(
            f"an ONNX file runs in ONNX Runtime at fp32 on the CPU; backend {backend} at {precision} on "
            f"{device.type} needs the PyTorch model file it was exported from"
        )
