"""The published weights we register: torchvision's ImageNet weights (from torchvision's own records) and timm's
ImageNet-1k weights (as data) for every architecture resnets builds (URL or Hub repo, sha256, eval preprocessing,
reported top-1 and top-5), registered when a weights name is first looked up."""

from __future__ import annotations

import math

from ..data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from .registry import WeightSpec, register_later, register_weights

# torchvision is imported by the registering functions (at the first weights name looked up): `resnets list`
# reads the models without it

# ---- torchvision's published ImageNet weights, read from torchvision's own records (get_model_weights: URL,
# accuracies, recipe, eval transforms; the file name carries the first 8 hex digits of the file's sha256). Its
# IMAGENET1K_V1 weights are registered as <arch>.tv_in1k, IMAGENET1K_V2 as <arch>.tv2_in1k (timm's names for them).

TORCHVISION_ARCHITECTURES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)
TORCHVISION_TAGS = {"IMAGENET1K_V1": "tv_in1k", "IMAGENET1K_V2": "tv2_in1k"}


def _register_torchvision() -> None:
    from torchvision.models import get_model_weights

    for arch in TORCHVISION_ARCHITECTURES:
        for tv in get_model_weights(arch):
            if tv.name not in TORCHVISION_TAGS:  # a later torchvision's new weights: not yet named here
                continue
            t = tv.transforms()
            metrics = tv.meta["_metrics"]["ImageNet-1K"]
            register_weights(
                WeightSpec(
                    name=f"{arch}.{TORCHVISION_TAGS[tv.name]}",
                    url=tv.url,
                    sha256=tv.url.rsplit("-", 1)[-1].split(".", 1)[0],
                    preprocessing=Preprocessing(
                        t.resize_size[0], t.crop_size[0], t.interpolation.value, tuple(t.mean), tuple(t.std)
                    ),
                    metrics={"top1": metrics["acc@1"], "top5": metrics["acc@5"]},
                    source="torchvision",
                    recipe=tv.meta["recipe"],
                )
            )


register_later(_register_torchvision)


# ---- torchvision's COCO detectors (COCO_V1 of each), from its own records as above: registered as <arch>.tv_coco,
# their 91 labels (assets/coco_classes.txt), box (and mask) mAP on COCO val2017. torchvision loads its v1 files into
# models whose FrozenBatchNorm has eps 0 (they were trained so): the same option goes with the name here.

DETECTION_ARCHITECTURES = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
)


def _register_torchvision_detection() -> None:
    from torchvision.models import get_model_weights

    for arch in DETECTION_ARCHITECTURES:
        tv = get_model_weights(arch).COCO_V1
        metrics = tv.meta["_metrics"]["COCO-val2017"]
        register_weights(
            WeightSpec(
                name=f"{arch}.tv_coco",
                url=tv.url,
                sha256=tv.url.rsplit("-", 1)[-1].split(".", 1)[0],
                preprocessing=None,
                metrics=dict(metrics),
                num_classes=len(tv.meta["categories"]),
                classes="coco",
                source="torchvision",
                recipe=tv.meta["recipe"],
                options={} if arch.endswith("_v2") else {"norm_eps": 0.0},
            )
        )


register_later(_register_torchvision_detection)


# ---- torchvision's segmentation models trained on COCO's images with Pascal VOC's 21 labels (COCO_WITH_VOC_LABELS_V1),
# registered as <arch>.tv_coco_voc with their mIoU and pixel accuracy on that val2017 subset

SEGMENTATION_ARCHITECTURES = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101")


def _register_torchvision_segmentation() -> None:
    from torchvision.models import get_model_weights

    for arch in SEGMENTATION_ARCHITECTURES:
        tv = get_model_weights(arch).COCO_WITH_VOC_LABELS_V1
        register_weights(
            WeightSpec(
                name=f"{arch}.tv_coco_voc",
                url=tv.url,
                sha256=tv.url.rsplit("-", 1)[-1].split(".", 1)[0],
                preprocessing=None,
                metrics=dict(tv.meta["_metrics"]["COCO-val2017-VOC-labels"]),
                num_classes=len(tv.meta["categories"]),
                classes="voc",
                source="torchvision",
                recipe=tv.meta["recipe"],
            )
        )


register_later(_register_torchvision_segmentation)


# ---- timm's ImageNet-1k weights for the architectures resnets builds (torchvision's tv/tv2 weights, which timm
# re-publishes, are registered above from torchvision). Fetched from the Hub (hf-hub:timm/<name>). Accuracies and
# eval preprocessing are timm's: ImageNet-1k val at the weights' test size and crop_pct (results/results-imagenet.csv
# and the pretrained_cfg of huggingface/pytorch-image-models at aa4b585, 2026-08-08); the shorter side is resized
# to floor(size / crop_pct) as timm does. The ResNet strikes back recipes (a1, a2, a3, a1h, b1k, c1, d, ...):
# https://arxiv.org/abs/2110.00476.

_HALF = (0.5, 0.5, 0.5)


def _timm(
    name: str,
    size: int,
    crop_pct: float,
    interpolation: str,
    top1: float,
    top5: float,
    *,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> None:
    register_weights(
        WeightSpec(
            name=name,
            url=f"hf-hub:timm/{name}",
            sha256="",
            preprocessing=Preprocessing(math.floor(size / crop_pct), size, interpolation, mean, std),
            metrics={"top1": top1, "top5": top5},
            source="timm",
            recipe=f"https://huggingface.co/timm/{name}",
        )
    )


def _register_timm() -> None:
    _timm("resnet18.a1_in1k", 288, 1.0, "bicubic", 73.164, 91.054)
    _timm("resnet18.a2_in1k", 288, 1.0, "bicubic", 72.364, 90.62)
    _timm("resnet18.a3_in1k", 224, 0.95, "bicubic", 68.25, 88.172)
    _timm("resnet18.fb_ssl_yfcc100m_ft_in1k", 224, 0.875, "bilinear", 72.636, 91.416)
    _timm("resnet18.fb_swsl_ig1b_ft_in1k", 224, 0.875, "bilinear", 73.286, 91.754)
    _timm("resnet18.gluon_in1k", 224, 0.875, "bicubic", 70.844, 89.75)
    _timm("resnet34.a1_in1k", 288, 1.0, "bicubic", 77.93, 93.758)
    _timm("resnet34.a2_in1k", 288, 1.0, "bicubic", 77.15, 93.288)
    _timm("resnet34.a3_in1k", 224, 0.95, "bicubic", 72.996, 91.116)
    _timm("resnet34.bt_in1k", 288, 0.95, "bicubic", 76.506, 93.342)
    _timm("resnet34.gluon_in1k", 224, 0.875, "bicubic", 74.574, 91.988)
    _timm("resnet34.ra4_e3600_r224_in1k", 288, 1.0, "bicubic", 78.972, 94.454, mean=_HALF, std=_HALF)
    _timm("resnet50.a1_in1k", 288, 1.0, "bicubic", 81.24, 95.112)
    _timm("resnet50.a1h_in1k", 224, 1.0, "bicubic", 80.654, 95.312)
    _timm("resnet50.a2_in1k", 288, 1.0, "bicubic", 80.774, 94.978)
    _timm("resnet50.a3_in1k", 224, 0.95, "bicubic", 78.052, 93.78)
    _timm("resnet50.am_in1k", 224, 0.875, "bicubic", 79.004, 94.392)
    _timm("resnet50.b1k_in1k", 288, 1.0, "bicubic", 80.708, 95.43)
    _timm("resnet50.b2k_in1k", 288, 1.0, "bicubic", 80.466, 95.306)
    _timm("resnet50.bt_in1k", 288, 0.95, "bicubic", 79.652, 94.908)
    _timm("resnet50.c1_in1k", 288, 1.0, "bicubic", 80.928, 95.554)
    _timm("resnet50.c2_in1k", 288, 1.0, "bicubic", 80.862, 95.53)
    _timm("resnet50.d_in1k", 288, 1.0, "bicubic", 81.012, 95.456)
    _timm("resnet50.fb_ssl_yfcc100m_ft_in1k", 224, 0.875, "bilinear", 79.252, 94.826)
    _timm("resnet50.fb_swsl_ig1b_ft_in1k", 224, 0.875, "bilinear", 81.146, 95.98)
    _timm("resnet50.gluon_in1k", 224, 0.875, "bicubic", 77.58, 93.704)
    _timm("resnet50.ra_in1k", 288, 0.95, "bicubic", 79.864, 94.97)
    _timm("resnet50.ram_in1k", 288, 0.95, "bicubic", 79.982, 95.038)
    _timm("resnet101.a1_in1k", 288, 1.0, "bicubic", 82.326, 95.63)
    _timm("resnet101.a1h_in1k", 288, 1.0, "bicubic", 82.796, 96.324)
    _timm("resnet101.a2_in1k", 288, 1.0, "bicubic", 82.218, 95.74)
    _timm("resnet101.a3_in1k", 224, 0.95, "bicubic", 79.836, 94.608)
    _timm("resnet101.gluon_in1k", 224, 0.875, "bicubic", 79.306, 94.538)
    _timm("resnet152.a1_in1k", 288, 1.0, "bicubic", 82.742, 95.734)
    _timm("resnet152.a1h_in1k", 288, 1.0, "bicubic", 83.494, 96.522)
    _timm("resnet152.a2_in1k", 288, 1.0, "bicubic", 82.614, 95.748)
    _timm("resnet152.a3_in1k", 224, 0.95, "bicubic", 80.548, 95.004)
    _timm("resnet152.gluon_in1k", 224, 0.875, "bicubic", 79.712, 94.72)
    _timm("resnext50_32x4d.a1_in1k", 288, 1.0, "bicubic", 81.48, 95.152)
    _timm("resnext50_32x4d.a1h_in1k", 288, 1.0, "bicubic", 82.016, 95.934)
    _timm("resnext50_32x4d.a2_in1k", 288, 1.0, "bicubic", 81.304, 95.114)
    _timm("resnext50_32x4d.a3_in1k", 224, 0.95, "bicubic", 79.258, 94.308)
    _timm("resnext50_32x4d.fb_ssl_yfcc100m_ft_in1k", 224, 0.875, "bilinear", 80.316, 95.386)
    _timm("resnext50_32x4d.fb_swsl_ig1b_ft_in1k", 224, 0.875, "bilinear", 82.162, 96.224)
    _timm("resnext50_32x4d.gluon_in1k", 224, 0.875, "bicubic", 79.354, 94.424)
    _timm("resnext50_32x4d.ra_in1k", 288, 0.95, "bicubic", 80.72, 95.344)
    _timm("resnext101_32x8d.fb_ssl_yfcc100m_ft_in1k", 224, 0.875, "bilinear", 81.62, 96.036)
    _timm("resnext101_32x8d.fb_swsl_ig1b_ft_in1k", 224, 0.875, "bilinear", 84.276, 97.188)
    _timm("resnext101_32x8d.fb_wsl_ig1b_ft_in1k", 224, 0.875, "bilinear", 82.72, 96.624)
    _timm("resnext101_64x4d.c1_in1k", 288, 1.0, "bicubic", 83.158, 96.37)
    _timm("resnext101_64x4d.gluon_in1k", 224, 0.875, "bicubic", 80.64, 95.0)
    _timm("wide_resnet50_2.racm_in1k", 288, 0.95, "bicubic", 82.26, 96.062)
    _timm("resnet50d.a1_in1k", 288, 1.0, "bicubic", 81.466, 95.218)
    _timm("resnet50d.a2_in1k", 288, 1.0, "bicubic", 81.164, 95.1)
    _timm("resnet50d.a3_in1k", 224, 0.95, "bicubic", 78.742, 94.236)
    _timm("resnet50d.gluon_in1k", 224, 0.875, "bicubic", 79.08, 94.458)
    _timm("resnet50d.ra2_in1k", 288, 0.95, "bicubic", 81.354, 95.742)
    _timm("resnet50d.ra4_e3600_r224_in1k", 288, 1.0, "bicubic", 81.84, 95.926, mean=_HALF, std=_HALF)
    _timm("resnet101d.gluon_in1k", 224, 0.875, "bicubic", 80.466, 95.034)
    _timm("resnet101d.ra2_in1k", 320, 1.0, "bicubic", 83.02, 96.456)
    _timm("resnetv2_50.a1h_in1k", 288, 1.0, "bicubic", 81.406, 95.712, mean=_HALF, std=_HALF)
    _timm("resnetv2_101.a1h_in1k", 288, 1.0, "bicubic", 83.002, 96.444, mean=_HALF, std=_HALF)
    _timm("resnetv2_50x1_bit.goog_distilled_in1k", 224, 0.875, "bicubic", 82.82, 96.526, mean=_HALF, std=_HALF)
    _timm("resnetv2_50x1_bit.goog_in21k_ft_in1k", 448, 1.0, "bilinear", 80.386, 95.694, mean=_HALF, std=_HALF)
    _timm("resnetv2_50x3_bit.goog_in21k_ft_in1k", 448, 1.0, "bilinear", 83.982, 97.13, mean=_HALF, std=_HALF)
    _timm("resnetv2_101x1_bit.goog_in21k_ft_in1k", 448, 1.0, "bilinear", 82.332, 96.524, mean=_HALF, std=_HALF)
    _timm("resnetv2_101x3_bit.goog_in21k_ft_in1k", 448, 1.0, "bilinear", 84.43, 97.38, mean=_HALF, std=_HALF)
    _timm("resnetv2_152x2_bit.goog_in21k_ft_in1k", 448, 1.0, "bilinear", 84.468, 97.432, mean=_HALF, std=_HALF)
    _timm("resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k", 224, 0.875, "bicubic", 82.918, 96.568, mean=_HALF, std=_HALF)
    _timm(
        "resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k_384", 384, 1.0, "bicubic", 83.858, 97.13, mean=_HALF, std=_HALF
    )


register_later(_register_timm)
