"""One entrypoint per architecture. Architecture arguments live here; the machinery lives in resnet.py.

The catalog (names, options, one line each) loads without torch, so `resnets list` answers as fast as `--help`:
the entrypoints reach the builders through `_net`, which imports them when a model is first built.
"""

from __future__ import annotations

from .registry import BOTTLENECK, DETECTION, DILATED, HEAD, RCNN, RESIDUAL, SEGMENTATION, SHORTCUT, register_model


def _net(kind: str, *args, block: str | None = None, **kw):
    """`ResNet(block, *args, **kw)` or `ResNetV2(*args, **kw)`, by name."""
    from . import layers, resnet  # torch and the builders, at the first model built (neither imports this file)

    if kind == "ResNetV2":
        return resnet.ResNetV2(*args, **kw)
    return resnet.ResNet(getattr(layers, block), *args, **kw)


def ResNet(block: str, *args, **kw):  # noqa: N802  (reads as the class it builds)
    return _net("ResNet", *args, block=block, **kw)


def ResNetV2(*args, **kw):  # noqa: N802
    return _net("ResNetV2", *args, **kw)


BasicBlock, Bottleneck = "BasicBlock", "Bottleneck"

# ---- ImageNet nets of the paper's Table 1 (option B shortcuts; v1.5 bottleneck unless stride_in_1x1=True)


@register_model(options=SHORTCUT + DILATED)
def resnet18(**kw):
    """ResNet-18 (Table 1)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], **kw)


@register_model(options=SHORTCUT + DILATED)
def resnet34(**kw):
    """ResNet-34 (Table 1)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], **kw)


@register_model(options=BOTTLENECK + DILATED)
def resnet50(**kw):
    """ResNet-50 (Table 1)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], **kw)


@register_model(options=BOTTLENECK + DILATED)
def resnet101(**kw):
    """ResNet-101 (Table 1)."""
    return ResNet(Bottleneck, [3, 4, 23, 3], **kw)


@register_model(options=BOTTLENECK + DILATED)
def resnet152(**kw):
    """ResNet-152 (Table 1)."""
    return ResNet(Bottleneck, [3, 8, 36, 3], **kw)


# ---- ResNeXt ("Aggregated Residual Transformations", Xie et al.) and Wide ResNet (Zagoruyko & Komodakis)


@register_model(options=BOTTLENECK + DILATED)
def resnext50_32x4d(**kw):
    """ResNeXt-50, 32 groups of width 4."""
    return ResNet(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4, **kw)


@register_model(options=BOTTLENECK + DILATED)
def resnext101_32x8d(**kw):
    """ResNeXt-101, 32 groups of width 8."""
    return ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=8, **kw)


@register_model(options=BOTTLENECK + DILATED)
def resnext101_64x4d(**kw):
    """ResNeXt-101, 64 groups of width 4."""
    return ResNet(Bottleneck, [3, 4, 23, 3], groups=64, width_per_group=4, **kw)


@register_model(options=BOTTLENECK + DILATED)
def wide_resnet50_2(**kw):
    """Wide ResNet-50-2: bottleneck 3x3 twice as wide."""
    return ResNet(Bottleneck, [3, 4, 6, 3], width_per_group=128, **kw)


@register_model(options=BOTTLENECK + DILATED)
def wide_resnet101_2(**kw):
    """Wide ResNet-101-2: bottleneck 3x3 twice as wide."""
    return ResNet(Bottleneck, [3, 4, 23, 3], width_per_group=128, **kw)


# ---- ResNet-D ("Bag of Tricks", He et al. 2019): deep 3x3 stem, average-pool downsampling


@register_model(options=RESIDUAL + DILATED)
def resnet50d(**kw):
    """ResNet-50-D: deep stem and average-pool shortcut (timm's resnet50d)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], stem="deep", avg_down=True, **kw)


@register_model(options=RESIDUAL + DILATED)
def resnet101d(**kw):
    """ResNet-101-D: deep stem and average-pool shortcut (timm's resnet101d)."""
    return ResNet(Bottleneck, [3, 4, 23, 3], stem="deep", avg_down=True, **kw)


# ---- Pre-activation ResNet V2 ("Identity Mappings in Deep Residual Networks")


@register_model(options=RESIDUAL + DILATED)
def resnetv2_50(**kw):
    """Pre-activation ResNet-50 (timm's resnetv2_50)."""
    return ResNetV2([3, 4, 6, 3], **kw)


@register_model(options=RESIDUAL + DILATED)
def resnetv2_101(**kw):
    """Pre-activation ResNet-101 (timm's resnetv2_101)."""
    return ResNetV2([3, 4, 23, 3], **kw)


@register_model(options=RESIDUAL + DILATED)
def resnetv2_152(**kw):
    """Pre-activation ResNet-152 (timm's resnetv2_152)."""
    return ResNetV2([3, 8, 36, 3], **kw)


# ---- Big Transfer (BiT, Kolesnikov et al. 2020): pre-activation ResNets with weight-standardised convs and
# GroupNorm, in widths x1..x4 (timm's resnetv2_*_bit)

BIT = ("num_classes", "in_chans", "zero_init_residual", "drop_path_rate")


def _bit(layers, **kw):
    return ResNetV2(layers, norm="group", bit=True, **kw)


@register_model(options=BIT + DILATED)
def resnetv2_50x1_bit(**kw):
    """BiT ResNet-50x1: weight-standardised convs, GroupNorm (timm's resnetv2_50x1_bit)."""
    return _bit([3, 4, 6, 3], width_factor=1, **kw)


@register_model(options=BIT + DILATED)
def resnetv2_50x3_bit(**kw):
    """BiT ResNet-50x3 (timm's resnetv2_50x3_bit)."""
    return _bit([3, 4, 6, 3], width_factor=3, **kw)


@register_model(options=BIT + DILATED)
def resnetv2_101x1_bit(**kw):
    """BiT ResNet-101x1 (timm's resnetv2_101x1_bit)."""
    return _bit([3, 4, 23, 3], width_factor=1, **kw)


@register_model(options=BIT + DILATED)
def resnetv2_101x3_bit(**kw):
    """BiT ResNet-101x3 (timm's resnetv2_101x3_bit)."""
    return _bit([3, 4, 23, 3], width_factor=3, **kw)


@register_model(options=BIT + DILATED)
def resnetv2_152x2_bit(**kw):
    """BiT ResNet-152x2 (timm's resnetv2_152x2_bit)."""
    return _bit([3, 8, 36, 3], width_factor=2, **kw)


# ---- The paper's plain ImageNet baselines (section 4.1): the same layers, no shortcuts


@register_model(options=HEAD)
def plain18(**kw):
    """Plain-18: ResNet-18's layers without shortcuts (Figure 4)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], residual=False, **kw)


@register_model(options=HEAD)
def plain34(**kw):
    """Plain-34: ResNet-34's layers without shortcuts (Figure 3, middle)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], residual=False, **kw)


# ---- CIFAR nets of section 4.2: 3x3 stem, stages of 16/32/64 filters, 6n+2 layers, option A shortcuts


def _cifar(layers, **kw):
    return ResNet(BasicBlock, layers, widths=(16, 32, 64), stem="cifar", **kw)


def _cifar_kw(kw: dict) -> dict:
    return {"num_classes": 10, "shortcut": "A", **kw}


def _plain_kw(kw: dict) -> dict:
    return {"num_classes": 10, **kw}


@register_model(options=SHORTCUT, family="cifar")
def resnet8(**kw):
    """CIFAR ResNet-8 (n=1): the family's smallest, for a first result in minutes on a laptop CPU."""
    return _cifar([1, 1, 1], **_cifar_kw(kw))


@register_model(options=SHORTCUT, family="cifar")
def resnet14(**kw):
    """CIFAR ResNet-14 (n=2)."""
    return _cifar([2, 2, 2], **_cifar_kw(kw))


@register_model(options=SHORTCUT, family="cifar")
def resnet20(**kw):
    """CIFAR ResNet-20 (n=3)."""
    return _cifar([3, 3, 3], **_cifar_kw(kw))


@register_model(options=SHORTCUT, family="cifar")
def resnet32(**kw):
    """CIFAR ResNet-32 (n=5)."""
    return _cifar([5, 5, 5], **_cifar_kw(kw))


@register_model(options=SHORTCUT, family="cifar")
def resnet44(**kw):
    """CIFAR ResNet-44 (n=7)."""
    return _cifar([7, 7, 7], **_cifar_kw(kw))


@register_model(options=SHORTCUT, family="cifar")
def resnet56(**kw):
    """CIFAR ResNet-56 (n=9)."""
    return _cifar([9, 9, 9], **_cifar_kw(kw))


@register_model(options=SHORTCUT, family="cifar")
def resnet110(**kw):
    """CIFAR ResNet-110 (n=18)."""
    return _cifar([18, 18, 18], **_cifar_kw(kw))


@register_model(options=SHORTCUT, family="cifar")
def resnet1202(**kw):
    """CIFAR ResNet-1202 (n=200)."""
    return _cifar([200, 200, 200], **_cifar_kw(kw))


@register_model(options=HEAD, family="cifar")
def plain20(**kw):
    """CIFAR plain-20 (n=3, no shortcuts)."""
    return _cifar([3, 3, 3], residual=False, **_plain_kw(kw))


@register_model(options=HEAD, family="cifar")
def plain32(**kw):
    """CIFAR plain-32 (n=5, no shortcuts)."""
    return _cifar([5, 5, 5], residual=False, **_plain_kw(kw))


@register_model(options=HEAD, family="cifar")
def plain44(**kw):
    """CIFAR plain-44 (n=7, no shortcuts)."""
    return _cifar([7, 7, 7], residual=False, **_plain_kw(kw))


@register_model(options=HEAD, family="cifar")
def plain56(**kw):
    """CIFAR plain-56 (n=9, no shortcuts)."""
    return _cifar([9, 9, 9], residual=False, **_plain_kw(kw))


@register_model(options=HEAD, family="cifar")
def plain110(**kw):
    """CIFAR plain-110 (n=18, no shortcuts)."""
    return _cifar([18, 18, 18], residual=False, **_plain_kw(kw))


# ---- detection: torchvision's heads and FPN on any of the ImageNet nets above (backbone=...; models/detection.py)


def _detector(kind: str, **kw):
    from . import detection  # torchvision's detection models, at the first one built

    return getattr(detection, kind)(**kw)


@register_model(options=RCNN, family="detection")
def fasterrcnn_resnet50_fpn(**kw):
    """Faster R-CNN with an FPN (torchvision's v1; backbone= any ImageNet-family net)."""
    return _detector("faster_rcnn", **kw)


@register_model(options=RCNN, family="detection")
def fasterrcnn_resnet50_fpn_v2(**kw):
    """Faster R-CNN v2: BatchNorm FPN, 4-conv box head (torchvision's v2)."""
    return _detector("faster_rcnn_v2", **kw)


@register_model(options=DETECTION, family="detection")
def retinanet_resnet50_fpn(**kw):
    """RetinaNet, focal loss, P3-P7 (torchvision's v1)."""
    return _detector("retinanet", **kw)


@register_model(options=DETECTION, family="detection")
def retinanet_resnet50_fpn_v2(**kw):
    """RetinaNet v2: GroupNorm head, GIoU loss (torchvision's v2)."""
    return _detector("retinanet_v2", **kw)


@register_model(options=RCNN, family="detection")
def maskrcnn_resnet50_fpn(**kw):
    """Mask R-CNN: boxes and instance masks (torchvision's v1)."""
    return _detector("mask_rcnn", **kw)


@register_model(options=RCNN, family="detection")
def maskrcnn_resnet50_fpn_v2(**kw):
    """Mask R-CNN v2 (torchvision's v2)."""
    return _detector("mask_rcnn_v2", **kw)


# ---- segmentation: torchvision's FCN and DeepLabV3 heads on any of the ImageNet nets above, dilated
# (backbone=..., output_stride=8 or 16; models/segmentation.py)


def _segmenter(kind: str, default_backbone: str, **kw):
    from . import segmentation  # torchvision's segmentation models, at the first one built

    return getattr(segmentation, kind)(**{"backbone": default_backbone, **kw})


@register_model(options=SEGMENTATION, family="segmentation")
def fcn_resnet50(**kw):
    """FCN on a dilated ResNet-50 (torchvision's; backbone= any ImageNet-family net)."""
    return _segmenter("fcn", "resnet50", **kw)


@register_model(options=SEGMENTATION, family="segmentation")
def fcn_resnet101(**kw):
    """FCN on a dilated ResNet-101 (torchvision's)."""
    return _segmenter("fcn", "resnet101", **kw)


@register_model(options=SEGMENTATION, family="segmentation")
def deeplabv3_resnet50(**kw):
    """DeepLabV3 (ASPP) on a dilated ResNet-50 (torchvision's)."""
    return _segmenter("deeplabv3", "resnet50", **kw)


@register_model(options=SEGMENTATION, family="segmentation")
def deeplabv3_resnet101(**kw):
    """DeepLabV3 (ASPP) on a dilated ResNet-101 (torchvision's)."""
    return _segmenter("deeplabv3", "resnet101", **kw)
