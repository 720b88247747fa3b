"""The ResNets as detection backbones: torchvision's Faster R-CNN, RetinaNet and Mask R-CNN (their FPN, anchors,
heads, losses and box post-processing: a well-kept library's, not rewritten here) fed by any ImageNet-family net
resnets builds (`backbone="resnet101"`, `"resnext50_32x4d"`, `"resnet50d"`, `"resnetv2_50"`, ...). Each
builder makes the architecture of torchvision's builder of the same name, with the same parameter names, so
torchvision's COCO checkpoints load unchanged and give its outputs. The entrypoints (fasterrcnn_resnet50_fpn, ...)
are registered in zoo.py, which reaches these builders when a model is first built."""

from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from .registry import get_entry

# what trains, from the top, as torchvision's references count it: trainable_layers=3 trains layer2..layer4
TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


def trunk(backbone: str, norm: str, eps: float | None = None) -> nn.Module:
    """The classification net `backbone` without its head, to be fed to an FPN (FrozenBatchNorm by default, as
    detection trains with the backbone's statistics fixed); `eps`: its norms' epsilon (torchvision's v1 COCO weights
    were trained with 0, and torchvision sets it so when it loads them). The options were checked by
    registry.check_options."""
    net = get_entry(backbone).fn(num_classes=0, norm=norm)
    if eps is not None:
        for m in net.modules():
            if hasattr(m, "eps") and isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                m.eps = float(eps)
    return net


def fpn(
    body: nn.Module,
    trainable_layers: int,
    returned: tuple[int, ...] = (1, 2, 3, 4),
    extra: nn.Module | None = None,
    fpn_norm=None,
) -> BackboneWithFPN:
    """torchvision's BackboneWithFPN over our net's stages `returned` (1..4), their channels read from the net's
    own feature_info; the stages below the top `trainable_layers` frozen as torchvision's references freeze them."""
    train = list(TRAINABLE_ORDER[:trainable_layers]) + (["bn1"] if trainable_layers == 5 else [])
    for name, p in body.named_parameters():
        if not train or not name.startswith(tuple(train)):
            p.requires_grad_(False)
    channels = body.feature_info.channels()
    return BackboneWithFPN(
        body,
        {f"layer{k}": str(i) for i, k in enumerate(returned)},
        [channels[k] for k in returned],
        256,
        extra_blocks=extra,
        norm_layer=fpn_norm,
    )


def _retina_anchors() -> AnchorGenerator:
    """RetinaNet's anchors: 3 scales x 3 ratios on each of P3-P7."""
    sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in [32, 64, 128, 256, 512])
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def _rcnn_anchors() -> AnchorGenerator:
    """The R-CNNs' anchors: one scale x 3 ratios on each of P2-P6 (what FasterRCNN builds when given none)."""
    sizes = ((32,), (64,), (128,), (256,), (512,))
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def _v2_heads(out_channels: int, anchors: AnchorGenerator) -> dict:
    return dict(
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(out_channels, anchors.num_anchors_per_location()[0], conv_depth=2),
        box_head=FastRCNNConvFCHead((out_channels, 7, 7), [256] * 4, [1024], norm_layer=nn.BatchNorm2d),
    )


def faster_rcnn(
    num_classes: int = 91,
    backbone: str = "resnet50",
    trainable_layers: int = 3,
    norm: str = "frozen_batch",
    norm_eps=None,
    **sizes,
):
    """Faster R-CNN with an FPN (Ren et al. 2015; Lin et al. 2017), torchvision's v1."""
    return FasterRCNN(fpn(trunk(backbone, norm, norm_eps), trainable_layers), num_classes=num_classes, **sizes)


def faster_rcnn_v2(
    num_classes: int = 91,
    backbone: str = "resnet50",
    trainable_layers: int = 3,
    norm: str = "batch",
    norm_eps=None,
    **sizes,
):
    """Faster R-CNN v2 ("Benchmarking Detection Transfer Learning with Vision Transformers"): BatchNorm in the FPN
    and a 4-conv box head, torchvision's v2."""
    body = fpn(trunk(backbone, norm, norm_eps), trainable_layers, fpn_norm=nn.BatchNorm2d)
    return FasterRCNN(body, num_classes=num_classes, **sizes, **_v2_heads(body.out_channels, _rcnn_anchors()))


def retinanet(
    num_classes: int = 91,
    backbone: str = "resnet50",
    trainable_layers: int = 3,
    norm: str = "frozen_batch",
    norm_eps=None,
    **sizes,
):
    """RetinaNet (Lin et al. 2017, focal loss) on stages 2-4 with P6/P7 from P5, torchvision's v1."""
    body = fpn(trunk(backbone, norm, norm_eps), trainable_layers, (2, 3, 4), LastLevelP6P7(256, 256))
    return RetinaNet(body, num_classes, **sizes)


def retinanet_v2(
    num_classes: int = 91,
    backbone: str = "resnet50",
    trainable_layers: int = 3,
    norm: str = "batch",
    norm_eps=None,
    **sizes,
):
    """RetinaNet v2: P6 from C5, GroupNorm in the head, GIoU box loss, torchvision's v2."""
    net = trunk(backbone, norm, norm_eps)
    body = fpn(net, trainable_layers, (2, 3, 4), LastLevelP6P7(net.feature_info.channels(-1), 256))
    anchors = _retina_anchors()
    head = RetinaNetHead(
        body.out_channels, anchors.num_anchors_per_location()[0], num_classes, norm_layer=partial(nn.GroupNorm, 32)
    )
    head.regression_head._loss_type = "giou"
    return RetinaNet(body, num_classes, anchor_generator=anchors, head=head, **sizes)


def mask_rcnn(
    num_classes: int = 91,
    backbone: str = "resnet50",
    trainable_layers: int = 3,
    norm: str = "frozen_batch",
    norm_eps=None,
    **sizes,
):
    """Mask R-CNN (He et al. 2017): Faster R-CNN with a mask head, torchvision's v1."""
    return MaskRCNN(fpn(trunk(backbone, norm, norm_eps), trainable_layers), num_classes=num_classes, **sizes)


def mask_rcnn_v2(
    num_classes: int = 91,
    backbone: str = "resnet50",
    trainable_layers: int = 3,
    norm: str = "batch",
    norm_eps=None,
    **sizes,
):
    """Mask R-CNN v2: the v2 Faster R-CNN's FPN and heads with a BatchNorm mask head, torchvision's v2."""
    body = fpn(trunk(backbone, norm, norm_eps), trainable_layers, fpn_norm=nn.BatchNorm2d)
    mask_head = MaskRCNNHeads(body.out_channels, [256] * 4, 1, norm_layer=nn.BatchNorm2d)
    return MaskRCNN(
        body, num_classes=num_classes, mask_head=mask_head, **sizes, **_v2_heads(body.out_channels, _rcnn_anchors())
    )


def reset_classes(model: nn.Module, num_classes: int) -> None:
    """New class-scoring layers for `num_classes` (the background included), as torchvision's fine-tuning tutorial
    replaces them: the box predictor (and mask predictor) of an R-CNN, the classification head's last conv of a
    RetinaNet. The rest, the box regression included, keeps its trained weights."""
    if isinstance(model, RetinaNet):
        head = model.head.classification_head
        old = head.cls_logits
        head.cls_logits = nn.Conv2d(old.in_channels, head.num_anchors * num_classes, 3, padding=1)
        nn.init.normal_(head.cls_logits.weight, std=0.01)
        nn.init.constant_(head.cls_logits.bias, old.bias.detach()[0].item())  # the prior's -log((1 - p) / p)
        head.num_classes = num_classes
        return
    box = model.roi_heads.box_predictor
    model.roi_heads.box_predictor = FastRCNNPredictor(box.cls_score.in_features, num_classes)
    if isinstance(model, MaskRCNN):
        mask = model.roi_heads.mask_predictor
        model.roi_heads.mask_predictor = MaskRCNNPredictor(mask.conv5_mask.in_channels, 256, num_classes)
