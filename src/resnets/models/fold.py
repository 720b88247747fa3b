"""Batch norm folded into the layer before it, for inference: in evaluation mode a batch norm is a fixed scale and
shift per channel, so it can be taken into the weights and bias of the convolution (or linear layer) whose output
it alone reads, and the network runs one pass over each activation fewer (what ONNX Runtime and TensorRT do on
export). torch.fx finds the pairs (torch.fx.experimental.optimization.fuse); the answer is a traced copy that
computes the same function up to float rounding (about 1e-6 of the output's scale in fp32)."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

log = logging.getLogger(__name__)

# the norms torch.fx folds: exactly these types (a FrozenBatchNorm2d or SyncBatchNorm is left as it is)
FOLDABLE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _has_hooks(model: nn.Module) -> bool:
    """Hooks on any module would not come along into the traced copy (Grad-CAM's, a user's feature taps)."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(m, k, None) for m in model.modules() for k in kinds)


def _channels_last(p: torch.Tensor) -> bool:
    return p.ndim == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()


def folded(model: nn.Module) -> nn.Module:
    """A copy of `model` for inference with each batch norm that follows a convolution or linear layer folded into
    it, in the model's memory format; `model` itself where there is nothing to fold, where any part of it is in
    training mode (its norms then normalise by the batch), where hooks are set on it, or where torch.fx cannot
    trace it (said in the debug log). The copy computes only the forward pass: keep `model` for its attributes."""
    if any(m.training for m in model.modules()) or _has_hooks(model):
        return model
    if not any(type(m) in FOLDABLE and m.track_running_stats for m in model.modules()):
        return model
    try:
        with torch.no_grad():
            out = fuse(model)
    except Exception as e:  # a forward torch.fx cannot follow (data-dependent control flow, ...): run it unfolded
        log.debug("batch norm not folded into %s: %s", type(model).__name__, e)
        return model
    if any(_channels_last(p) for p in model.parameters()):  # the folded weights keep the model's layout
        out = out.to(memory_format=torch.channels_last)
    return out.eval()
