"""The ResNets as segmentation backbones: torchvision's FCN and DeepLabV3 (their heads: FCNHead, DeepLabHead with
ASPP; a well-kept library's, not rewritten here) on any ImageNet-family net resnets builds, its last stages dilated
to `output_stride` 8 (torchvision's) or 16. Each builder makes the architecture of torchvision's builder of the
same name with the same parameter names, so its COCO-VOC checkpoints load unchanged and give its outputs. The
entrypoints (fcn_resnet50, deeplabv3_resnet101, ...) are registered in zoo.py."""

from __future__ import annotations

from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation import FCN, DeepLabV3
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead

from .registry import get_entry


def _body(backbone: str, norm: str, output_stride: int, aux_loss: bool) -> tuple[nn.Module, list[int]]:
    """The net's stages up to layer4 ("out"; layer3 as "aux" too), dilated to `output_stride`, and its channels."""
    net = get_entry(backbone).fn(num_classes=0, norm=norm, output_stride=output_stride)
    taken = {"layer4": "out", **({"layer3": "aux"} if aux_loss else {})}
    return IntermediateLayerGetter(net, taken), net.feature_info.channels()


def fcn(num_classes: int = 21, backbone: str = "resnet50", norm: str = "batch", output_stride: int = 8, aux_loss=True):
    """FCN (Long et al. 2015) as torchvision builds it: a 3x3 conv head on the dilated layer4, upsampled to the
    input; an auxiliary head on layer3 for the training loss."""
    body, ch = _body(backbone, norm, output_stride, aux_loss)
    return FCN(body, FCNHead(ch[4], num_classes), FCNHead(ch[3], num_classes) if aux_loss else None)


def deeplabv3(
    num_classes: int = 21, backbone: str = "resnet50", norm: str = "batch", output_stride: int = 8, aux_loss=True
):
    """DeepLabV3 (Chen et al. 2017): atrous spatial pyramid pooling on the dilated layer4, torchvision's."""
    body, ch = _body(backbone, norm, output_stride, aux_loss)
    return DeepLabV3(body, DeepLabHead(ch[4], num_classes), FCNHead(ch[3], num_classes) if aux_loss else None)
