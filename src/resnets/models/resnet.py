"""The ResNet family: the paper's ImageNet and CIFAR nets, plain baselines, ResNeXt, Wide ResNet, ResNet-D and
pre-activation ResNet V2. Architectures only: no I/O, no weights (see resnets.weights and the registry)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..errors import OptionError
from .layers import BasicBlock, Bottleneck, PreActBottleneck, conv3x3, make_conv, make_norm, make_shortcut


class FeatureInfo(list):
    """The feature maps a model gives, as timm describes them: a list of {"module", "num_chs", "reduction"}, index
    0 the stem's map (before its max pool), then one per stage; `channels()`, `reduction()` and `module_name()`
    list one field (or give one map's with an index), as timm's FeatureInfo does."""

    def channels(self, idx: int | None = None):
        return self._get("num_chs", idx)

    def reduction(self, idx: int | None = None):
        return self._get("reduction", idx)

    def module_name(self, idx: int | None = None):
        return self._get("module", idx)

    def _get(self, key: str, idx: int | None):
        return [f[key] for f in self] if idx is None else self[idx][key]


def take_indices(n: int, indices: int | Sequence[int] | None) -> list[int]:
    """timm's feature indices among `n` maps: None all, an int k the last k, a sequence those (negative counts
    from the end); sorted, each once."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise OptionError(f"indices={indices} takes the last {indices} of {n} feature maps; give 1 to {n}")
        return list(range(n - indices, n))
    bad = [i for i in indices if not -n <= i < n]
    if bad or not indices:
        raise OptionError(
            f"feature indices run from {-n} to {n - 1} (0: the stem, 1..{n - 1}: the stages); got {list(indices)}"
        )
    return sorted({i % n for i in indices})


class Backbone(nn.Module):
    """What every family member shares: the forward split, the head and the feature maps.

    Subclasses build `self.conv1 ... self.layerN`, `self.maxpool`, `self.avgpool`, `self.fc`, define `stem_map` and
    fill `self.feature_info` (through `_make_stages`).
    """

    stage_names: list[str]
    feature_info: FeatureInfo
    num_features: int
    # what the model is and how to feed it (architecture, options, classes, preprocessing): a resnets.meta.ModelMeta
    # set by the factory (resnets.create_model / load); None on a net constructed directly. Not imported here:
    # the metadata sits above the architectures (it asks their registry for default input sizes)
    meta: Any = None

    def _make_stages(
        self,
        widths: Sequence[int],
        layers: Sequence[int],
        cin: int,
        reduction: int,
        drop_path_rate: float,
        make_block,
        stem: dict,
    ) -> None:
        """layer1..layerN, `layers[i]` blocks each, the first block of every stage after the first at stride 2.
        make_block(cin, planes, stride, drop_path) -> (block, its output channels). Fills stage_names,
        feature_info (the `stem` map's first) and num_features."""
        total, index = sum(layers), 0
        self.stage_names, self.feature_info = [], FeatureInfo([{**stem, "num_chs": cin}])
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

    def _dilate(self, output_stride: int) -> None:
        """Stages past `output_stride` (8 or 16; 32 leaves the net as it is) keep their resolution: their stride
        becomes a dilation of the 3x3 convolutions, the first block of such a stage at the dilation before it and
        the rest at the new one (torchvision's replace_stride_with_dilation, timm's output_stride), for DeepLabV3 and
        FCN. The strided shortcut is unstrided too (ResNet-D's 2x2 average pool at stride 1 over a map padded right
        and below, as timm's AvgPool2dSame)."""
        if output_stride not in (8, 16, 32):
            raise OptionError(f"output_stride must be 8, 16 or 32; got {output_stride!r}")
        reduction, dilation = self.feature_info[1]["reduction"], 1
        for i, name in enumerate(self.stage_names[1:], start=2):
            if reduction * 2 <= output_stride:
                reduction *= 2
            else:
                previous, dilation = dilation, dilation * 2
                for j, block in enumerate(getattr(self, name)):
                    _dilate_block(block, previous if j == 0 else dilation, dilation, unstride=j == 0)
            self.feature_info[i]["reduction"] = reduction

    def _make_head(self, num_classes: int) -> None:
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def stem_map(self, x: torch.Tensor) -> torch.Tensor:
        """The stem up to its max pool: feature map 0."""
        raise NotImplementedError

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.stem_map(x))

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

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's contract: the feature maps `indices` picks among `feature_info` (0: the stem before its max pool,
        stride 2 (1 for the CIFAR nets); 1..N: layer1..layerN, strides 4/8/16/32; an int k: the last k; negative
        counts from the end), as (forward_features' output, [maps]), or [maps] alone with `intermediates_only`.
        The last stage's map is taken before a pre-activation net's final norm unless `norm`; `stop_early` ends
        the pass at the last map taken (the first output is then that map)."""
        if output_fmt != "NCHW":
            raise OptionError(f"output_fmt is NCHW (ResNets have no NHWC features); got {output_fmt!r}")
        n = len(self.feature_info)
        take = take_indices(n, indices)
        stages = self.stage_names[: take[-1]] if stop_early or intermediates_only else self.stage_names
        x = self.stem_map(x)
        maps = [x] if take[0] == 0 else []
        x = self.maxpool(x)
        for i, name in enumerate(stages, start=1):
            x = getattr(self, name)(x)
            if i in take:
                maps.append(self._final(x) if norm and i == n - 1 else x)
        if intermediates_only:
            return maps
        return (self._final(x) if len(stages) == len(self.stage_names) else x), maps

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


def _dilate_block(block: nn.Module, first: int, dilation: int, unstride: bool) -> None:
    """A block's first 3x3 convolution at dilation `first`, any later one at `dilation` (padded to keep the size;
    a basic block's second conv, as timm dilates it); with `unstride`, its strided convolutions and shortcut at
    stride 1."""
    threes = 0
    for m in block.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            d = first if threes == 0 else dilation
            m.dilation, m.padding = (d, d), (d, d)
            threes += 1
        if unstride and isinstance(m, nn.Conv2d) and m.stride != (1, 1):
            m.stride = (1, 1)
    down = getattr(block, "downsample", None)
    if unstride and isinstance(down, nn.Sequential) and isinstance(down[0], nn.AvgPool2d):
        down[0] = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.AvgPool2d(2, 1))
    if unstride and down is not None and hasattr(down, "stride") and not isinstance(down, nn.Conv2d):
        down.stride = 1  # option A's zero-padded identity


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
        output_stride: int = 32,
    ):
        super().__init__()
        assert len(layers) == len(widths)
        stem_width = widths[0]
        if stem == "deep":
            half = stem_width // 2
            # Sequential indices match timm's resnet*d keys (conv1.0, conv1.1, conv1.3, conv1.4, conv1.6)
            self.conv1 = nn.Sequential(
                conv3x3(in_chans, half, 2),
                make_norm(norm, half),
                nn.ReLU(inplace=True),
                conv3x3(half, half),
                make_norm(norm, half),
                nn.ReLU(inplace=True),
                conv3x3(half, stem_width),
            )
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
            return block(
                cin,
                planes,
                s,
                downsample,
                norm=norm,
                residual=residual,
                drop_path=rate,
                groups=groups,
                width_per_group=width_per_group,
                stride_in_1x1=stride_in_1x1,
            ), cout

        stem_map = {"module": "act1", "reduction": 1 if stem == "cifar" else 2}  # timm's: after the stem's ReLU
        self._make_stages(widths, layers, stem_width, 1 if stem == "cifar" else 4, drop_path_rate, make, stem_map)
        if output_stride != 32:
            self._dilate(output_stride)
        self._make_head(num_classes)
        self._init_weights()
        if zero_init_residual:
            # each residual block starts as an identity (Goyal et al., "Accurate, Large Minibatch SGD")
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.residual_norm().weight)

    def stem_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))


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
        output_stride: int = 32,
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

        self._make_stages(widths, layers, widths[0], 4, drop_path_rate, make, {"module": "conv1", "reduction": 2})
        self.norm = make_norm(norm, self.num_features)
        self.relu = nn.ReLU(inplace=True)
        if output_stride != 32:
            self._dilate(output_stride)
        self._make_head(num_classes)
        self._init_weights()
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, PreActBottleneck):
                    nn.init.zeros_(m.residual_conv().weight)

    def stem_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

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
    """A backbone that returns feature maps instead of logits: what `create_model(name, features_only=True,
    out_indices=...)` gives, with timm's indexing (0: the stem, 1..N: the stages; default all of them) and its
    `feature_info` (`channels()`, `reduction()`, `module_name()` of the maps returned); `meta` is the backbone's."""

    def __init__(self, backbone: Backbone, out_indices: int | Sequence[int] | None = None):
        super().__init__()
        self.out_indices = take_indices(len(backbone.feature_info), out_indices)
        self.backbone = backbone
        self.feature_info = FeatureInfo(backbone.feature_info[i] for i in self.out_indices)
        self.meta = backbone.meta

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone.forward_intermediates(x, self.out_indices, intermediates_only=True)


class PreLogits(nn.Module):
    """The model up to its pooled pre-logit features, as one module (for export and the feature runners)."""

    def __init__(self, model: Backbone):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
