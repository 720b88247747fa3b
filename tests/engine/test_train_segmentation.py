"""Training a segmenter through the engine (engine/segmentation.py with engine/detection.py): the run folder, mIoU
per epoch, the model file, a backbone from classification weights, new classifiers for other classes, and bad
set-ups refused in one line."""

import json

import pytest
import torch
from conftest import run_cli

from resnets.config import resolve
from resnets.engine import segmentation
from resnets.errors import ResnetsError
from resnets.factory import load


def test_the_run_folder_holds_a_segmenters_scores_and_model(tiny_segmenter):
    history = [json.loads(line) for line in (tiny_segmenter / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and all(0 <= h["val_miou"] <= 100 for h in history)
    ev = json.loads((tiny_segmenter / "eval.json").read_text())
    assert ev["miou"] == history[-1]["val_miou"] and ev["n"] == 6
    model = load(tiny_segmenter)
    assert type(model).__name__ == "DeepLabV3" and model.meta.class_names == [
        "background",
        "circle",
        "square",
        "triangle",
    ]
    assert model.meta.options["output_stride"] == 16 and model.meta.options["backbone"] == "resnet18"
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64))["out"].shape == (1, 4, 64, 64)


def test_eval_and_segment_commands(tiny_segmenter, shapes_set, tmp_path):
    code, out, err = run_cli("eval", "--weights", tiny_segmenter, "--data", shapes_set, "--out", tmp_path / "ev")
    assert code == 0, err
    assert "mIoU" in out and "on 6 validation images" in out and "IoU" in out.splitlines()[-2]
    assert (
        json.loads((tmp_path / "ev" / "eval.json").read_text())["miou"]
        == json.loads((tiny_segmenter / "eval.json").read_text())["miou"]
    )
    image = shapes_set / "val" / "images" / "000001.jpg"
    code, out, err = run_cli("segment", image, "--weights", tiny_segmenter, "--size", "64", "--out", tmp_path / "seg")
    assert code == 0, err
    assert out.startswith(str(image)) and "%" in out
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == ["000001-mask.png", "000001-overlay.png"]
    code, _, err = run_cli("segment", image, "--weights", tiny_segmenter, "--out", tmp_path / "seg")
    assert code == 2 and "--force" in err


def test_the_backbone_from_classification_weights_and_new_classifiers(shapes_set, r18_file, tiny_segmenter, caplog):
    cfg = resolve(None, None, dict(model="fcn_resnet50", dataset="masks", data=str(shapes_set), weights=str(r18_file)))
    net = segmentation.model(cfg, ["bg", "a"], {})
    source = load(r18_file).state_dict()
    for k, v in net.backbone.state_dict().items():
        assert torch.equal(v, source[k]), k
    other = resolve(
        None, None, dict(model="deeplabv3_resnet50", dataset="masks", data=str(shapes_set), weights=str(tiny_segmenter))
    )
    with caplog.at_level("WARNING", logger="resnets"):
        net = segmentation.model(other, ["bg", "cat", "dog", "eel", "fox"], {})
    assert "new classifier: 5 classes" in caplog.text
    assert net.classifier[-1].out_channels == 5 and net.aux_classifier[-1].out_channels == 5
    old = load(tiny_segmenter).state_dict()
    assert torch.equal(net.state_dict()["backbone.layer1.0.conv1.weight"], old["backbone.layer1.0.conv1.weight"])


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "deeplabv3_resnet50", "--dataset", "coco"], "train it on --dataset masks"),
        (["--model", "resnet18", "--dataset", "masks"], "--dataset masks holds class maps"),
        (["--model", "fcn_resnet50", "--dataset", "masks", "--augment", "ssd"], "--augment for a segmentation model"),
        (["--model", "fcn_resnet50", "--dataset", "masks", "--augment", "paper-cifar"], "got paper-cifar"),
        (
            ["--model", "fcn_resnet50", "--dataset", "masks", "--output-stride", "4"],
            "output_stride must be one of 8, 16, 32",
        ),
    ],
)
def test_bad_set_ups_are_one_line(shapes_set, tmp_path, args, needle):
    code, _, err = run_cli("train", *args, "--data", shapes_set, "--out", tmp_path / "runs", "--no-progress")
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_images_of_different_sizes_need_the_scale_augmentation(shapes_set):
    images = [torch.zeros(3, 8, 8), torch.zeros(3, 8, 10)]
    with pytest.raises(ResnetsError, match="--augment scale"):
        segmentation.loss(torch.nn.Identity(), images, [torch.zeros(8, 8), torch.zeros(8, 10)], torch.device("cpu"))
