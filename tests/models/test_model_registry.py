"""resnets.models.registry: every family member registered once, unknown names with suggestions, options a model cannot
take or values out of range refused."""

import pytest

import resnets
from resnets.errors import OptionError, UnknownModelError
from resnets.models import get_entry, register_model

ALL = [
    n for n in resnets.list_models() if get_entry(n).family not in ("detection", "segmentation")
]  # classifiers (detectors: test_detection.py)


def test_registry_holds_the_whole_family():
    expected = {
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
        "resnet50d",
        "resnet101d",
        "resnetv2_50",
        "resnetv2_101",
        "resnetv2_152",
        "plain18",
        "plain34",
        "resnetv2_50x1_bit",
        "resnetv2_50x3_bit",
        "resnetv2_101x1_bit",
        "resnetv2_101x3_bit",
        "resnetv2_152x2_bit",
        "resnet8",
        "resnet14",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "resnet1202",
        "plain20",
        "plain32",
        "plain44",
        "plain56",
        "plain110",
    }
    assert expected <= set(ALL)
    assert resnets.list_models("resnext*") == ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"]


def test_duplicate_registration_raises():
    def resnet50(**kw):
        return None

    with pytest.raises(ValueError, match="twice"):
        register_model(options=())(resnet50)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="did you mean.*resnet50"):
        resnets.create_model("resnet5O")


@pytest.mark.parametrize(
    "name, option",
    [
        ("resnet18", {"stride_in_1x1": True}),
        ("plain20", {"shortcut": "B"}),
        ("plain34", {"zero_init_residual": True}),
        ("resnet50d", {"shortcut": "A"}),
        ("resnetv2_50", {"stride_in_1x1": False}),
        ("resnet50", {"dropout": 0.1}),
    ],
)
def test_an_option_a_model_cannot_take_is_an_error(name, option):
    with pytest.raises(OptionError, match="does not take option"):
        resnets.create_model(name, **option)


@pytest.mark.parametrize("option", [{"shortcut": "D"}, {"norm": "layer"}, {"num_classes": -1}, {"drop_path_rate": 1.5}])
def test_bad_option_values_are_errors(option):
    with pytest.raises(OptionError):
        resnets.create_model("resnet20", **option)
