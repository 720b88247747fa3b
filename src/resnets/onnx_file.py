"""Our own ONNX exports read back as models: `resnets export --format onnx` records the model (architecture,
options, class names, preprocessing) in the file's metadata, so predict, bench and serve can run the file alone,
through ONNX Runtime, labelled and fed as the model it came from. The file gives class scores only (no pooled
features, no gradients): embedding and Grad-CAM need the PyTorch model."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .errors import ResnetsError, WeightsError
from .export import ort_run, ort_session
from .meta import ModelMeta


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

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        session = ort_session(path)
    except Exception as e:  # onnxruntime's own error types for files that are not ONNX, or broken ones
        raise WeightsError(f"cannot read {path} as ONNX ({(str(e).splitlines() or [''])[0][:160]})") from None
    props = session.get_modelmeta().custom_metadata_map
    record = {k[len("resnets.") :]: v for k, v in props.items() if k.startswith("resnets.")}
    meta = ModelMeta.from_record(record, str(path))
    if meta is None:
        raise WeightsError(
            f"{path} is an ONNX file that records no resnets model (its classes and preprocessing); "
            "predict, bench and serve take the ONNX files `resnets export` writes"
        )
    pre = meta.preprocessing
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if pre is None or len(inputs) != 1 or len(outputs) != 1:
        raise WeightsError(f"{path} is not a resnets export: one input, one output and a recorded preprocessing")
    shape = inputs[0].shape  # [batch, C, H, W], the batch a name when dynamic
    want = [len(pre.mean), pre.crop, pre.crop]
    if len(shape) != 4 or any(isinstance(s, int) and s != w for s, w in zip(shape[1:], want)):
        raise WeightsError(f"{path}: its input is {shape}, its record says {['N', *want]} (a damaged file)")
    n = meta.options.get("num_classes")
    out = outputs[0].shape
    if not isinstance(n, int) or (len(out) == 2 and isinstance(out[1], int) and out[1] != n):
        raise WeightsError(f"{path}: its output is {out}, its record says {n} classes (a damaged file)")
    if meta.class_names is not None and len(meta.class_names) != n:
        raise WeightsError(f"{path} is damaged: it names {len(meta.class_names)} classes for a classifier of {n}")
    return OnnxModel(path, session, meta.replace(source=str(path)), n)


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
