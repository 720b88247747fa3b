"""Building blocks of the ResNet family.

Parameter names follow torchvision (conv1, bn1, ..., downsample) so published checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import NORMS, SHORTCUTS  # noqa: F401  (the allowed values, declared once)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "frozen_batch":
        from torchvision.ops import FrozenBatchNorm2d  # torchvision.ops loads torch._dynamo: 1-2 s, ~150 MB

        return FrozenBatchNorm2d(channels)
    if kind == "group":
        # 32 groups as in "Group Normalization" (Wu & He); fewer when the width is small (CIFAR nets: 16 channels)
        groups = 32
        while channels % groups:
            groups //= 2
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class StdConv2d(nn.Conv2d):
    """Conv with weight standardisation ("Micro-Batch Training with Batch-Channel Normalization and Weight
    Standardization", Qiao et al.), as BiT uses it with GroupNorm: each filter is shifted and scaled to zero mean
    and unit variance (biased, + eps) before the convolution. Computed as timm computes it (a batch norm over the
    filters), so published BiT weights give timm's outputs to the last bits."""

    def __init__(self, *args, eps: float = 1e-8, **kw):
        super().__init__(*args, **kw)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0, eps=self.eps
        ).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def make_conv(std: bool, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A k x k conv without bias, padded to keep the size at stride 1; weight-standardised when `std`."""
    kind = StdConv2d if std else nn.Conv2d
    return kind(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)


class PadShortcut(nn.Module):
    """Option A: identity with subsampling by `stride` and the extra channels zero-padded. No parameters."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # (B, cin, H, W) -> (B, cout, H, W): zeros appended on the channel dimension
        return F.pad(x, (0, 0, 0, 0, 0, self.cout - self.cin))

    def extra_repr(self) -> str:
        return f"{self.cin}, {self.cout}, stride={self.stride}"


def make_shortcut(
    shortcut: str, cin: int, cout: int, stride: int, norm: str, avg_down: bool = False
) -> nn.Module | None:
    """The `downsample` module of a block, or None for a plain identity.

    B projects only where the shape changes, C on every block, A pads with zeros. avg_down (ResNet-D) moves the
    subsampling from the strided 1x1 into a 2x2 average pool so no activations are skipped.
    """
    changes = stride != 1 or cin != cout
    if shortcut == "A":
        return PadShortcut(cin, cout, stride) if changes else None
    if shortcut == "B" and not changes:
        return None
    if avg_down:
        pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
        return nn.Sequential(pool, conv1x1(cin, cout), make_norm(norm, cout))
    return nn.Sequential(conv1x1(cin, cout, stride), make_norm(norm, cout))


def _drop_path(rate: float) -> nn.Module:
    if rate <= 0:
        return nn.Identity()
    from torchvision.ops import StochasticDepth  # only for the nets that drop paths (see make_norm)

    return StochasticDepth(rate, "row")


class _PostActivation(nn.Module):
    """What the paper's blocks share: the residual branch F(x), then y = ReLU(F(x) + shortcut(x)), with
    stochastic depth on F(x); residual=False drops the shortcut (the paper's plain nets)."""

    def _shortcut(self, downsample: nn.Module | None, residual: bool, drop_path: float) -> None:
        self.downsample = downsample
        self.residual = residual
        self.drop_path = _drop_path(drop_path)

    def _merge(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.residual:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.drop_path(out) + identity
        return self.relu(out)


class BasicBlock(_PostActivation):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR nets). residual=False gives the paper's plain block."""

    expansion = 1

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        norm: str = "batch",
        residual: bool = True,
        drop_path: float = 0.0,
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
    ):
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ValueError("BasicBlock only supports groups=1 and width_per_group=64")
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = make_norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = make_norm(norm, planes)
        self._shortcut(downsample, residual, drop_path)

    def residual_norm(self) -> nn.Module:
        """The last norm of the residual branch (zeroed by zero_init_residual)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self._merge(x, self.bn2(self.conv2(out)))


class Bottleneck(_PostActivation):
    """1x1 reduce, 3x3, 1x1 expand (x4). stride_in_1x1=True is the paper's v1; False puts it on the 3x3 (v1.5)."""

    expansion = 4

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        norm: str = "batch",
        residual: bool = True,
        drop_path: float = 0.0,
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
    ):
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups  # ResNeXt / Wide ResNet widen the 3x3 only
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(cin, width, s1)
        self.bn1 = make_norm(norm, width)
        self.conv2 = conv3x3(width, width, s3, groups)
        self.bn2 = make_norm(norm, width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = make_norm(norm, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self._shortcut(downsample, residual, drop_path)

    def residual_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self._merge(x, self.bn3(self.conv3(out)))


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck ("Identity Mappings in Deep Residual Networks"): BN-ReLU before each conv,
    nothing after the addition. The projection shortcut takes the pre-activated input, as in timm."""

    expansion = 4

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        norm: str = "batch",
        drop_path: float = 0.0,
        std_conv: bool = False,
    ):
        super().__init__()
        self.bn1 = make_norm(norm, cin)
        self.conv1 = make_conv(std_conv, cin, planes, 1)
        self.bn2 = make_norm(norm, planes)
        self.conv2 = make_conv(std_conv, planes, planes, 3, stride)
        self.bn3 = make_norm(norm, planes)
        self.conv3 = make_conv(std_conv, planes, planes * self.expansion, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = _drop_path(drop_path)

    def residual_conv(self) -> nn.Module:
        return self.conv3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # not in place: x itself is the identity shortcut
        pre = F.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return self.drop_path(out) + shortcut
