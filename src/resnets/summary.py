"""The paper's Table 1 for any registered model: stage, output size, block spec x count, and the totals
(parameters, multiply-adds, fp32 weight size). Multiply-adds count convolutions and the classifier, as the
paper's FLOPs do (BN, ReLU, pooling and additions are left out)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models.layers import BasicBlock, Bottleneck, PreActBottleneck


def _conv_spec(conv: nn.Conv2d, show_stride: bool = False) -> str:
    k = conv.kernel_size[0]
    text = f"{k}x{k}, {conv.out_channels}"
    if conv.groups > 1:
        text += f", C={conv.groups}"
    if show_stride and conv.stride[0] > 1:
        text += f", stride {conv.stride[0]}"
    return text


def _block_spec(block: nn.Module) -> str:
    convs = [block.conv1, block.conv2] + ([block.conv3] if hasattr(block, "conv3") else [])
    return "[" + "; ".join(_conv_spec(c) for c in convs) + "]"


def _stem_spec(model: nn.Module) -> str:
    conv1 = model.conv1
    if isinstance(conv1, nn.Sequential):
        return "; ".join(_conv_spec(c, True) for c in conv1 if isinstance(c, nn.Conv2d))
    return _conv_spec(conv1, True)


def summarize(model: nn.Module, input_size: int, in_chans: int = 3) -> dict[str, Any]:
    """Stage table and totals of `model` at a square input (B=1)."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
        for name in ["conv1", *model.stage_names]
    ]
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_chans, input_size, input_size, device=next(model.parameters()).device)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    stages = [
        {
            "name": "conv1",
            "module": "conv1",
            "output": list(shapes["conv1"][1:]),
            "spec": _stem_spec(model),
            "blocks": 1,
        }
    ]
    pool_first = not isinstance(getattr(model, "maxpool", None), (nn.Identity, type(None)))
    for i, name in enumerate(model.stage_names):
        blocks = list(getattr(model, name))
        spec = _block_spec(blocks[0])
        if i == 0 and pool_first:
            spec = "3x3 max pool, stride 2; " + spec
        stages.append(
            {
                "name": f"conv{i + 2}_x",
                "module": name,
                "output": list(shapes[name][1:]),
                "spec": spec,
                "blocks": len(blocks),
            }
        )
    fc = model.fc
    head = f"average pool, {fc.out_features}-d fc" if isinstance(fc, nn.Linear) else "average pool"
    stages.append({"name": "head", "module": "fc", "output": list(out.shape[1:]), "spec": head, "blocks": 1})
    params = sum(p.numel() for p in model.parameters())
    tensor_bytes = sum(t.numel() * 4 for k, t in model.state_dict().items() if t.is_floating_point())
    kind = next(
        (type(m).__name__ for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck, PreActBottleneck))), ""
    )
    return {
        "model": model.meta.architecture if model.meta is not None else type(model).__name__,
        "input": [in_chans, input_size, input_size],
        "block": kind,
        "params": params,
        "macs": counter.get_total_flops() // 2,  # the counter reports 2 FLOPs per multiply-add
        "size_mb": round(tensor_bytes / 1e6, 3),  # fp32 parameters and BN statistics, 1 MB = 10^6 bytes
        "stages": stages,
    }


def format_table(s: dict[str, Any]) -> str:
    """The summary as text, laid out like the paper's Table 1."""
    rows = [("stage", "module", "output", "spec")]
    for st in s["stages"]:
        c, *hw = st["output"]
        size = f"{hw[0]}x{hw[1]}" if hw else "1x1"
        spec = st["spec"] + (f" x{st['blocks']}" if st["name"].endswith("_x") else "")
        rows.append((st["name"], st["module"], size, spec))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{s['model']}  (input {'x'.join(map(str, s['input']))}, {s['block']} blocks)"]
    for r in rows:
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
    lines += [
        f"params         {s['params']:,}",
        f"multiply-adds  {s['macs'] / 1e9:.3f} G ({s['macs']:,})",
        f"fp32 size      {s['size_mb']:.1f} MB",
    ]
    return "\n".join(lines)
