"""The published figures must come out of the model code: parameter counts and the paper's Table 1 FLOPs."""

import json

import pytest

import resnets
from resnets.summary import format_table, summarize

PARAMS = {  # torchvision's published counts and the paper's section 4.2 (1000 / 10 classes)
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "resnet50d": 25_576_264,
    "resnetv2_50": 25_549_352,
    "resnet20": 269_722,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
}

# Table 1, multiply-adds x 1e9 (the paper's bottleneck has its stride on the first 1x1)
PAPER_FLOPS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3}


@pytest.mark.parametrize("name, expected", PARAMS.items())
def test_parameter_counts_are_the_published_ones(name, expected):
    m = resnets.create_model(name)
    assert sum(p.numel() for p in m.parameters()) == expected


def test_cifar_param_counts_in_millions():
    # Table 6: 0.46M, 0.66M, 19.4M
    for name, millions in [("resnet32", 0.46), ("resnet44", 0.66), ("resnet1202", 19.4)]:
        m = resnets.create_model(name)
        assert round(sum(p.numel() for p in m.parameters()) / 1e6, 2 if millions < 1 else 1) == millions


@pytest.mark.parametrize("name, gmacs", PAPER_FLOPS.items())
def test_multiply_adds_within_2_percent_of_table_1(name, gmacs):
    kw = {"stride_in_1x1": True} if name not in ("resnet18", "resnet34") else {}
    s = summarize(resnets.create_model(name, **kw), 224)
    assert abs(s["macs"] / 1e9 - gmacs) / gmacs <= 0.02


def test_v15_costs_more_than_v1():
    v15 = summarize(resnets.create_model("resnet50"), 224)["macs"]
    v1 = summarize(resnets.create_model("resnet50", stride_in_1x1=True), 224)["macs"]
    assert v15 / 1e9 == pytest.approx(4.089, abs=0.001) and v1 / 1e9 == pytest.approx(3.858, abs=0.001)


def test_stage_table_is_table_1():
    s = summarize(resnets.create_model("resnet50"), 224)
    names = [st["name"] for st in s["stages"]]
    assert names == ["conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "head"]
    assert [st["output"][1:] for st in s["stages"][:5]] == [[112, 112], [56, 56], [28, 28], [14, 14], [7, 7]]
    assert [st["blocks"] for st in s["stages"][1:5]] == [3, 4, 6, 3]
    assert s["stages"][0]["spec"] == "7x7, 64, stride 2"
    assert s["stages"][1]["spec"] == "3x3 max pool, stride 2; [1x1, 64; 3x3, 64; 1x1, 256]"
    assert s["stages"][4]["spec"] == "[1x1, 512; 3x3, 512; 1x1, 2048]"
    assert s["size_mb"] == pytest.approx(25_557_032 * 4 / 1e6, rel=0.01)
    text = format_table(s)
    assert "conv4_x" in text and "x6" in text and "25,557,032" in text


def test_cifar_table():
    s = summarize(resnets.create_model("resnet110"), 32)
    assert [st["output"] for st in s["stages"][1:4]] == [[16, 32, 32], [32, 16, 16], [64, 8, 8]]
    assert [st["blocks"] for st in s["stages"][1:4]] == [18, 18, 18]
    assert json.loads(json.dumps(s))["params"] == 1_727_962
