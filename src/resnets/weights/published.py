"""The published weights we register, as data: torchvision's ImageNet weights and timm's ImageNet-1k weights for
every architecture resnets builds (URL or Hub repo, sha256, eval preprocessing, reported top-1 and top-5)."""

from __future__ import annotations

import math

from ..data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from .registry import WeightSpec, register_weights

# ---- torchvision's published ImageNet weights (torchvision.models.resnet *_Weights; the file name carries the
# first 8 hex digits of the file's sha256). Accuracies are theirs: ImageNet-1k val, resize + 224 centre crop.

_TV_V1 = "https://github.com/pytorch/vision/tree/main/references/classification#resnet"
_TV_V2 = "https://github.com/pytorch/vision/issues/3995#new-recipe"


def _tv(name: str, url: str, *, resize: int, top1: float, top5: float, recipe: str) -> None:
    sha_prefix = url.rsplit("-", 1)[-1].split(".", 1)[0]
    register_weights(
        WeightSpec(
            name=name,
            url=url,
            sha256=sha_prefix,
            preprocessing=Preprocessing(resize=resize, crop=224),
            metrics={"top1": top1, "top5": top5},
            source="torchvision",
            recipe=recipe,
        )
    )


_U = "https://download.pytorch.org/models/"
_tv("resnet18.tv_in1k", _U + "resnet18-f37072fd.pth", resize=256, top1=69.758, top5=89.078, recipe=_TV_V1)
_tv("resnet34.tv_in1k", _U + "resnet34-b627a593.pth", resize=256, top1=73.314, top5=91.42, recipe=_TV_V1)
_tv("resnet50.tv_in1k", _U + "resnet50-0676ba61.pth", resize=256, top1=76.13, top5=92.862, recipe=_TV_V1)
_tv(
    "resnet50.tv2_in1k",
    _U + "resnet50-11ad3fa6.pth",
    resize=232,
    top1=80.858,
    top5=95.434,
    recipe="https://github.com/pytorch/vision/issues/3995#issuecomment-1013906621",
)
_tv("resnet101.tv_in1k", _U + "resnet101-63fe2227.pth", resize=256, top1=77.374, top5=93.546, recipe=_TV_V1)
_tv("resnet101.tv2_in1k", _U + "resnet101-cd907fc2.pth", resize=232, top1=81.886, top5=95.78, recipe=_TV_V2)
_tv("resnet152.tv_in1k", _U + "resnet152-394f9c45.pth", resize=256, top1=78.312, top5=94.046, recipe=_TV_V1)
_tv("resnet152.tv2_in1k", _U + "resnet152-f82ba261.pth", resize=232, top1=82.284, top5=96.002, recipe=_TV_V2)
_tv(
    "resnext50_32x4d.tv_in1k",
    _U + "resnext50_32x4d-7cdf4587.pth",
    resize=256,
    top1=77.618,
    top5=93.698,
    recipe="https://github.com/pytorch/vision/tree/main/references/classification#resnext",
)
_tv("resnext50_32x4d.tv2_in1k", _U + "resnext50_32x4d-1a0047aa.pth", resize=232, top1=81.198, top5=95.34, recipe=_TV_V2)
_tv(
    "resnext101_32x8d.tv_in1k",
    _U + "resnext101_32x8d-8ba56ff5.pth",
    resize=256,
    top1=79.312,
    top5=94.526,
    recipe="https://github.com/pytorch/vision/tree/main/references/classification#resnext",
)
_tv(
    "resnext101_32x8d.tv2_in1k",
    _U + "resnext101_32x8d-110c445d.pth",
    resize=232,
    top1=82.834,
    top5=96.228,
    recipe="https://github.com/pytorch/vision/issues/3995#new-recipe-with-fixres",
)
_tv(
    "resnext101_64x4d.tv_in1k",
    _U + "resnext101_64x4d-173b62eb.pth",
    resize=232,
    top1=83.246,
    top5=96.454,
    recipe="https://github.com/pytorch/vision/pull/5935",
)
_tv(
    "wide_resnet50_2.tv_in1k",
    _U + "wide_resnet50_2-95faca4d.pth",
    resize=256,
    top1=78.468,
    top5=94.086,
    recipe="https://github.com/pytorch/vision/pull/912#issue-445437439",
)
_tv(
    "wide_resnet50_2.tv2_in1k",
    _U + "wide_resnet50_2-9ba9bcbe.pth",
    resize=232,
    top1=81.602,
    top5=95.758,
    recipe="https://github.com/pytorch/vision/issues/3995#new-recipe-with-fixres",
)
_tv(
    "wide_resnet101_2.tv_in1k",
    _U + "wide_resnet101_2-32ee1156.pth",
    resize=256,
    top1=78.848,
    top5=94.284,
    recipe="https://github.com/pytorch/vision/pull/912#issue-445437439",
)
_tv(
    "wide_resnet101_2.tv2_in1k", _U + "wide_resnet101_2-d733dc28.pth", resize=232, top1=82.51, top5=96.02, recipe=_TV_V2
)


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
_timm("resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k_384", 384, 1.0, "bicubic", 83.858, 97.13, mean=_HALF, std=_HALF)
