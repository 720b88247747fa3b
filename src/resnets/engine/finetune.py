"""Transfer learning: which parts of a pretrained network train, at which learning rate, and what BatchNorm does.

The engine asks a `Plan` (built from the config) three things: the optimizer's parameter groups (layer-wise
learning rates), which modules are frozen at a given epoch (gradual unfreezing) and how norms behave.

Strategies
- "full": everything trains; with `layer_decay` < 1 each stage's learning rate is `layer_decay` times the next
  one's (head: lr, last stage: lr * d, ..., stem: lr * d^(stages+1)): discriminative fine-tuning.
- "linear-probe": only the classifier trains; the backbone's weights and BatchNorm statistics are frozen.
- "partial": the classifier and the last `unfreeze_stages` stages train; the rest is frozen as in the probe.
- "gradual": starts as a linear probe and unfreezes one more stage (from the top) every `unfreeze_every` epochs.

BatchNorm policies (`bn`)
- "train": statistics update in the parts that train (frozen parts always keep theirs);
- "freeze": statistics of every BatchNorm are kept (affine weights still train where the stage trains);
- "frozen": every BatchNorm becomes a FrozenBatchNorm2d (statistics and affine fixed);
- "group": every BatchNorm becomes a GroupNorm (for tiny batches), its affine weights kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ..choices import BN_POLICIES, STRATEGIES
from ..errors import ResnetsError
from ..meta import meta_of
from ..models.layers import make_norm
from ..models.resnet import Backbone

log = logging.getLogger("resnets")

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, FrozenBatchNorm2d)


def stages(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The model's top-level children grouped from input to output: ("stem", ...), ("layer1", ...), ...,
    ("head", [fc]). Modules after the last stage (the final norm of pre-activation nets) join the last stage."""
    names = list(getattr(model, "stage_names", []))
    if not names:
        raise ResnetsError(f"{type(model).__name__} has no stages to fine-tune by")
    groups: list[tuple[str, list[nn.Module]]] = [("stem", [])] + [(n, [getattr(model, n)]) for n in names]
    seen_stage = False
    for name, child in model.named_children():
        if name in names:
            seen_stage = True
        elif name != "fc":
            groups[-1 if seen_stage else 0][1].append(child)
    return groups + [("head", [model.fc])]


def convert_norms(model: nn.Module, policy: str) -> nn.Module:
    """Swap every BatchNorm2d for a FrozenBatchNorm2d ("frozen") or a GroupNorm ("group") in place, keeping the
    learned values; records the new norm in the model's options so its saved file rebuilds the same net."""
    if policy not in ("frozen", "group"):
        return model

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                c = child.num_features
                new = make_norm("frozen_batch" if policy == "frozen" else "group", c)
                with torch.no_grad():
                    new.weight.copy_(child.weight.detach())
                    new.bias.copy_(child.bias.detach())
                    if policy == "frozen":
                        new.running_mean.copy_(child.running_mean)
                        new.running_var.copy_(child.running_var)
                        new.eps = child.eps
                setattr(parent, name, new.to(child.weight.device))
            else:
                swap(child)

    swap(model)
    if isinstance(model, Backbone) and model.meta is not None:
        model.meta.options["norm"] = "frozen_batch" if policy == "frozen" else "group"
    return model


def _keep_eval(module: nn.Module, _inputs) -> None:
    module.training = False


@dataclass
class Plan:
    """Decides, per epoch, what trains. `apply(epoch)` sets requires_grad and the frozen-statistics hooks and
    returns True when the set of trainable parameters changed (a DDP wrapper must then be rebuilt)."""

    model: nn.Module
    strategy: str = "full"
    unfreeze_stages: int = 0
    unfreeze_every: int = 1
    layer_decay: float = 1.0
    bn: str = "train"
    _hooks: list = field(default_factory=list)
    _trainable: int = -1

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ResnetsError(f"strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")
        if self.bn not in BN_POLICIES:
            raise ResnetsError(f"bn must be one of {', '.join(BN_POLICIES)}; got {self.bn!r}")
        if not 0 < self.layer_decay <= 1:
            raise ResnetsError(f"layer_decay must be in (0, 1]; got {self.layer_decay}")
        self.groups = stages(self.model)
        n_stages = len(self.groups) - 2
        if self.strategy == "partial" and not 0 <= self.unfreeze_stages <= n_stages + 1:
            raise ResnetsError(
                f"--unfreeze-stages must be between 0 and {n_stages + 1} (the stages and the stem) for {meta_of(self.model).architecture}"
            )

    def trainable_groups(self, epoch: int) -> int:
        """How many groups, counted from the head, train in `epoch` (0-based)."""
        total = len(self.groups)
        if self.strategy == "full":
            return total
        if self.strategy == "linear-probe":
            return 1
        if self.strategy == "partial":
            return 1 + self.unfreeze_stages
        return min(1 + epoch // max(self.unfreeze_every, 1), total)  # gradual

    def apply(self, epoch: int) -> bool:
        k = self.trainable_groups(epoch)
        if k == self._trainable:
            return False
        for h in self._hooks:
            h.remove()
        self._hooks = []
        cut = len(self.groups) - k
        for i, (_, modules) in enumerate(self.groups):
            frozen = i < cut
            for m in modules:
                for p in m.parameters():
                    p.requires_grad_(not frozen)
                for sub in m.modules():
                    # frozen parts run as in evaluation (BatchNorm statistics kept, no stochastic depth)
                    if frozen or (self.bn == "freeze" and isinstance(sub, nn.modules.batchnorm._NormBase)):
                        self._hooks.append(sub.register_forward_pre_hook(_keep_eval))
        if self._trainable >= 0:
            log.warning("unfreezing: %s now train", ", ".join(n for n, _ in self.groups[cut:]))
        self._trainable = k
        return True

    def param_groups(self, lr: float, weight_decay: float, norm_weight_decay: float | None) -> list[dict]:
        """Every parameter (frozen ones too, so gradual unfreezing needs no new optimizer), grouped by stage with
        layer-wise learning rates and, optionally, separate weight decay for norms and biases."""
        out = []
        n = len(self.groups)
        for i, (name, modules) in enumerate(self.groups):
            scale = self.layer_decay ** (n - 1 - i)
            decay, no_decay = [], []
            for m in modules:
                for sub in m.modules():
                    for pname, p in sub.named_parameters(recurse=False):
                        is_norm = isinstance(sub, _NORM_TYPES) or pname == "bias"
                        (no_decay if is_norm and norm_weight_decay is not None else decay).append(p)
            for params, wd in ((decay, weight_decay), (no_decay, norm_weight_decay)):
                if params:
                    out.append({"params": params, "lr": lr * scale, "weight_decay": wd, "stage": name})
        return out


def from_config(model: nn.Module, cfg) -> Plan:
    convert_norms(model, cfg.bn)
    return Plan(model, cfg.strategy, cfg.unfreeze_stages, cfg.unfreeze_every, cfg.layer_decay, cfg.bn)


class Whole:
    """The plan of a model that does not train by stages (a detector, a segmenter): what its builder left
    trainable trains, as one parameter group, from the first epoch to the last."""

    def __init__(self, model: nn.Module):
        self.model = model

    def apply(self, epoch: int) -> bool:
        return False

    def param_groups(self, lr: float, weight_decay: float, norm_weight_decay: float | None) -> list[dict]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}]


def plan_for(model: nn.Module, cfg, by_stages: bool) -> Plan | Whole:
    """The config's plan for a model that trains `by_stages`, else the whole model's."""
    return from_config(model, cfg) if by_stages else Whole(model)
