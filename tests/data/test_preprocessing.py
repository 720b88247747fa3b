"""resnets.data.preprocessing: how a model is fed, as one record: a round trip through a plain dict, values out
of range refused, the default for a net's input size, other channel counts, and `transforms()` giving what
torchvision's ImageNet eval preset gives for the same settings."""

import pytest
import torch
from PIL import Image
from torchvision.models import ResNet50_Weights

from resnets.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from resnets.errors import WeightsError


def test_a_round_trip_through_a_plain_dict():
    pre = Preprocessing(232, 224, "bicubic", (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), "squash")
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert Preprocessing.from_dict({"resize": 36, "crop": 32}) == Preprocessing(36, 32)  # the rest default


@pytest.mark.parametrize(
    "d",
    [
        {"resize": 0, "crop": 32},
        {"resize": 36, "crop": 5000},
        {"resize": "36", "crop": 32},
        {"crop": 32},
        {"resize": 36, "crop": 32, "mean": [float("nan")] * 3},
    ],
)
def test_values_out_of_range_are_refused(d):
    with pytest.raises(WeightsError):
        Preprocessing.from_dict(d)


def test_defaults_and_other_channel_counts():
    assert Preprocessing.default(224) == Preprocessing(256, 224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert Preprocessing.default(32).resize == 32  # the CIFAR nets are fed their crop
    grey = Preprocessing.default(224, in_chans=1)
    assert grey.mean == (pytest.approx(sum(IMAGENET_MEAN) / 3),) and len(grey.std) == 1


def test_transforms_match_torchvisions_eval_preset_on_a_photo():
    from skimage import data as sk

    photo = Image.fromarray(sk.astronaut())
    want = ResNet50_Weights.IMAGENET1K_V2.transforms()(photo)  # resize 232, crop 224, bilinear, ImageNet stats
    got = Preprocessing(232, 224).transforms()(photo)
    assert got.shape == want.shape == (3, 224, 224)
    assert (got - want).abs().mean() < 1e-4  # the same resize (antialiased), crop and statistics: uint8 rounding apart
    assert torch.equal(Preprocessing(232, 224).transforms()(photo), got)
