"""The ResNet family: the paper's ImageNet and CIFAR nets, plain baselines, ResNeXt, Wide ResNet, ResNet-D and
pre-activation ResNet V2. Architectures only: no I/O, no weights (see resnets.weights and the registry)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from .layers import BasicBlock, Bottleneck, PreActBottleneck, conv3x3, make_conv, make_norm, make_shortcut

if TYPE_CHECKING:
    from ..meta import ModelMeta


class Backbone(nn.Module):
    """What every family member shares: the forward split, the head and the stage maps.

    Subclasses build `self.conv1 ... self.layerN`, `self.avgpool`, `self.fc` and fill `self.feature_info`.
    """

    stage_names: list[str]
    feature_info: list[dict]
    num_features: int
    # what the model is and how to feed it (architecture, options, classes, preprocessing): set by the factory
    # (resnets.create_model / load); None on a net constructed directly
    meta: ModelMeta | None = None

    def _make_stages(self, widths: Sequence[int], layers: Sequence[int], cin: int, reduction: int,
                     drop_path_rate: float, make_block) -> None:  # fmt: skip
        """layer1..layerN, `layers[i]` blocks each, the first block of every stage after the first at stride 2.
        make_block(cin, planes, stride, drop_path) -> (block, its output channels). Fills stage_names,
        feature_info and num_features."""
        total, index = sum(layers), 0
        self.stage_names, self.feature_info = [], []
        for i, (planes, depth) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            blocks = []
            for j in range(depth):
                rate = drop_path_rate * index / max(total - 1, 1)  # linear decay rule (Huang et al.)
                block, cin = make_block(cin, planes, stride if j == 0 else 1, rate)
                blocks.append(block)
                index += 1
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            self.feature_info.append({"module": name, "num_chs": cin, "reduction": reduction})
        self.num_features = cin

    def _make_head(self, num_classes: int) -> None:
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        """Applied after the last stage (identity except in pre-activation nets)."""
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, num_features, H/32, W/32) (H/4 for the CIFAR nets)."""
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self._final(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, num_features, h, w) -> logits (B, num_classes), or pooled features (B, num_features)."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Stage maps for a detection or segmentation neck: for ImageNet nets the stride-4/8/16/32 outputs of
        layer1..layer4 (see `feature_info`). `indices` picks stages (negative counts from the end)."""
        n = len(self.stage_names)
        wanted = sorted({i % n for i in (range(n) if indices is None else indices)})
        outs = []
        x = self.stem(x)
        for i, name in enumerate(self.stage_names[: wanted[-1] + 1]):
            x = getattr(self, name)(x)
            if i == n - 1:
                x = self._final(x)
            if i in wanted:
                outs.append(x)
        return outs

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised classifier for `num_classes` (0: the model returns pooled features)."""
        self.num_classes = num_classes
        device = next(self.parameters()).device
        self.fc = (nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()).to(device)

    def _init_weights(self) -> None:
        # He initialisation (paper section 3.4), as torchvision and timm do it
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class ResNet(Backbone):
    """Post-activation ResNet (the paper's), with the options of its descendants.

    stem: "imagenet" (7x7/2 conv + 3x3/2 max pool), "deep" (three 3x3 convs, ResNet-C/D) or "cifar" (one 3x3 conv).
    widths: planes per stage (64..512 ImageNet, 16/32/64 CIFAR); a bottleneck stage outputs 4x its planes.
    residual=False gives the paper's plain nets (no shortcuts at all).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = "imagenet",
        num_classes: int = 1000,
        in_chans: int = 3,
        shortcut: str = "B",
        stride_in_1x1: bool = False,
        zero_init_residual: bool = False,
        drop_path_rate: float = 0.0,
        norm: str = "batch",
        residual: bool = True,
        groups: int = 1,
        width_per_group: int = 64,
        avg_down: bool = False,
    ):
        super().__init__()
        assert len(layers) == len(widths)
        stem_width = widths[0]
        if stem == "deep":
            half = stem_width // 2
            # Sequential indices match timm's resnet*d keys (conv1.0, conv1.1, conv1.3, conv1.4, conv1.6)
            self.conv1 = nn.Sequential(
                conv3x3(in_chans, half, 2), make_norm(norm, half), nn.ReLU(inplace=True),
                conv3x3(half, half), make_norm(norm, half), nn.ReLU(inplace=True),
                conv3x3(half, stem_width),
            )  # fmt: skip
        elif stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
        elif stem == "cifar":
            self.conv1 = conv3x3(in_chans, stem_width)
        else:
            raise ValueError(f"unknown stem {stem!r}")
        self.bn1 = make_norm(norm, stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if stem == "cifar" else nn.MaxPool2d(3, stride=2, padding=1)

        def make(cin: int, planes: int, s: int, rate: float) -> tuple[nn.Module, int]:
            cout = planes * block.expansion
            downsample = make_shortcut(shortcut, cin, cout, s, norm, avg_down) if residual else None
            return block(cin, planes, s, downsample, norm=norm, residual=residual, drop_path=rate, groups=groups,
                         width_per_group=width_per_group, stride_in_1x1=stride_in_1x1), cout  # fmt: skip

        self._make_stages(widths, layers, stem_width, 1 if stem == "cifar" else 4, drop_path_rate, make)
        self._make_head(num_classes)
        self._init_weights()
        if zero_init_residual:
            # each residual block starts as an identity (Goyal et al., "Accurate, Large Minibatch SGD")
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.residual_norm().weight)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


class ResNetV2(Backbone):
    """Pre-activation ResNet ("Identity Mappings in Deep Residual Networks", He et al. 2016), timm's resnetv2_*.

    The stem has no norm; a final BN-ReLU (`norm`) follows the last stage. Projection shortcuts are plain 1x1
    convs on the pre-activated input. timm checkpoints load through `checkpoint_filter`.
    bit=True is Big Transfer's (BiT, Kolesnikov et al. 2020; timm's resnetv2_*_bit): weight-standardised convs,
    GroupNorm(32), `width_factor` times the widths, and the stem's max pool over a zero-padded map.
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        widths: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 1000,
        in_chans: int = 3,
        zero_init_residual: bool = False,
        drop_path_rate: float = 0.0,
        norm: str = "batch",
        bit: bool = False,
        width_factor: int = 1,
    ):
        super().__init__()
        widths = [w * width_factor for w in widths]
        self.conv1 = make_conv(bit, in_chans, widths[0], 7, 2)
        # BiT pools a zero-padded map (its input is not yet normalised, so zeros are not -inf); ours pads with -inf
        self.maxpool = nn.Sequential(nn.ConstantPad2d(1, 0.0), nn.MaxPool2d(3, 2)) if bit else nn.MaxPool2d(3, 2, 1)

        def make(cin: int, planes: int, s: int, rate: float) -> tuple[nn.Module, int]:
            cout = planes * PreActBottleneck.expansion
            downsample = make_conv(bit, cin, cout, 1, s) if (s != 1 or cin != cout) else None
            return PreActBottleneck(cin, planes, s, downsample, norm=norm, drop_path=rate, std_conv=bit), cout

        self._make_stages(widths, layers, widths[0], 4, drop_path_rate, make)
        self.norm = make_norm(norm, self.num_features)
        self.relu = nn.ReLU(inplace=True)
        self._make_head(num_classes)
        self._init_weights()
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, PreActBottleneck):
                    nn.init.zeros_(m.residual_conv().weight)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.conv1(x))

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.norm(x))

    @staticmethod
    def checkpoint_filter(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """timm's resnetv2_* keys -> ours (stages.i.blocks.j -> layer{i+1}.j, normK -> bnK, head.fc 1x1 conv -> fc)."""
        if not any(k.startswith(("stem.", "stages.")) for k in state_dict):
            return state_dict
        out = {}
        for k, v in state_dict.items():
            if k.startswith("stem.conv."):
                k = "conv1." + k[len("stem.conv.") :]
            elif k.startswith("stages."):
                _, i, _, j, rest = k.split(".", 4)
                rest = rest.replace("downsample.conv.", "downsample.")
                for n in "123":
                    rest = rest.replace(f"norm{n}.", f"bn{n}.")
                k = f"layer{int(i) + 1}.{j}.{rest}"
            elif k.startswith("head.fc."):
                k = "fc." + k[len("head.fc.") :]
                if v.ndim == 4:  # (classes, C, 1, 1) -> (classes, C)
                    v = v.flatten(1)
            out[k] = v
        return out


class FeatureList(nn.Module):
    """A backbone that returns its stage maps instead of logits: what `create_model(name, features_only=True,
    out_indices=...)` gives, like timm's. `feature_info` describes the maps returned; `meta` is the backbone's."""

    def __init__(self, backbone: Backbone, out_indices: Sequence[int] | None = None):
        super().__init__()
        n = len(backbone.stage_names)
        self.out_indices = sorted({i % n for i in (range(n) if out_indices is None else out_indices)})
        self.backbone = backbone
        self.feature_info = [backbone.feature_info[i] for i in self.out_indices]
        self.meta = backbone.meta

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone.forward_intermediates(x, self.out_indices)


class PreLogits(nn.Module):
    """The model up to its pooled pre-logit features, as one module (for export and the feature runners)."""

    def __init__(self, model: Backbone):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

