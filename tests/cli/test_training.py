"""`resnets train`, `finetune` and `eval` on the command line (cli/training.py): bad input in one line, TTA reported
beside the plain top-1."""

import json

import pytest
import torch
from conftest import TINY_RUN, one_line_error, run_cli

import resnets


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    code, _, err = run_cli("train", "--dataset", "imagefolder", "--data", tmp_path / "nope")
    one_line_error(code, err, "not found")
    code, _, err = run_cli("train", "--recipe", "imagenet-fast")
    one_line_error(code, err, "unknown recipe")
    code, _, err = run_cli("train", "--set", "epoks=3")
    one_line_error(code, err, "unknown config key")
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / "dog").mkdir(parents=True)
    code, _, err = run_cli("train", "--dataset", "imagefolder", "--data", tmp_path / "imgs")
    one_line_error(code, err, "has no images")


def _two_class_folder(folder):
    """Six random 32 x 32 PNGs in two class folders, a and b."""
    from torchvision.io import write_png

    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
    for i in range(6):
        write_png(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8), str(folder / "ab"[i % 2] / f"{i}.png"))
    return folder


def test_eval_writes_into_the_run_folder_given_beside_a_file_and_for_a_name_nowhere(tmp_path):
    """Two run folders side by side each keep their own evaluation (not one eval/ beside both); a model file's
    goes beside it; a registered or Hub name has no folder of the user's to write in."""
    from resnets.cli.options import folder_beside

    folder = _two_class_folder(tmp_path / "imgs")
    runs = tmp_path / "runs"
    for name in ("r1", "r2"):
        (runs / name).mkdir(parents=True)
        resnets.save(
            resnets.create_model("resnet8", num_classes=2), runs / name / "model.safetensors", class_names=["a", "b"]
        )
    for weights in (runs / "r1", runs / "r2" / "model.safetensors"):
        code, out, err = run_cli("eval", "--weights", weights, "--data", folder, "--workers", 0)
        assert code == 0, err
    assert (runs / "r1" / "eval" / "eval.json").is_file() and (runs / "r2" / "eval" / "eval.json").is_file()
    assert not (runs / "eval").exists() and f"{runs / 'r2' / 'eval'}/confusion.png" in out
    assert (
        folder_beside("resnet50.tv_in1k", "eval") is None and folder_beside("hf-hub:someone/resnet-x", "eval") is None
    )


def test_eval_and_train_report_tta_beside_the_plain_top1(tmp_path):
    code, out, err = run_cli(
        "train", *TINY_RUN, "--model", "resnet8", "--out", tmp_path, "--name", "r", "--tta", "flip"
    )
    assert code == 0, err
    assert "(with flip TTA: top-1" in out
    saved = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert saved["tta"]["kind"] == "flip" and 0 <= saved["tta"]["top1"] <= 100 and "top1" in saved
    folder = _two_class_folder(tmp_path / "imgs")
    model = resnets.create_model("resnet8", num_classes=2)
    resnets.save(model, tmp_path / "m.safetensors", class_names=["a", "b"])
    args = ("eval", "--weights", tmp_path / "m.safetensors", "--data", folder, "--workers", 0, "--json")
    code, out, err = run_cli(*args, "--tta", "flip")
    assert code == 0, err
    res = json.loads(out)
    code, out_plain, err = run_cli(*args)
    plain = json.loads(out_plain)
    assert res["top1"] == plain["top1"] and "tta" not in plain and res["tta"]["n"] == 6
    code, out, err = run_cli(*args[:-1], "--tta", "flip")
    assert code == 0 and "with flip TTA: top-1" in out, err


def test_eval_of_a_detector_reports_coco_scores(tiny_detector, shapes_set, tmp_path):
    code, out, err = run_cli(
        "eval", "--weights", tiny_detector / "model.safetensors", "--data", shapes_set, "--out", tmp_path / "ev"
    )
    assert code == 0, err
    assert "box mAP" in out and "AP50" in out and "on 6 validation images" in out
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    trained = json.loads((tiny_detector / "eval.json").read_text())
    assert saved["map"] == trained["map"] and saved["map_50"] == trained["map_50"]  # the run's own final scores
    code, _, err = run_cli("eval", "--weights", tiny_detector / "model.safetensors", "--data", tmp_path)
    assert code == 2 and "no instances.json" in err
    assert saved["task"] == "detection"  # eval.json names its task, as a run's does


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--dataset", "masks"], "--dataset masks is not a detector's (coco, voc: the folder says which)"),
        (["--ten-crop"], "--ten-crop and --tta are a classifier's"),
        (["--tta", "flip"], "--ten-crop and --tta are a classifier's"),
        (["--out", "afile"], "--out afile is a file"),
    ],
)
def test_eval_of_a_detector_refuses_what_does_not_apply_before_evaluating(tiny_detector, shapes_set, tmp_path,
                                                                            monkeypatch, extra, needle):  # fmt: skip
    """Options a detector's evaluation would ignore, and an --out it could not write, are one line before any
    image is scored (they were ignored, or found after the whole evaluation with exit code 1)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine")
    code, out, err = run_cli("eval", "--weights", tiny_detector, "--data", shapes_set, *extra)
    assert code == 2 and needle in err and "box mAP" not in out, err
    assert (tmp_path / "afile").read_text() == "mine"


def test_eval_of_a_detector_on_no_images_is_one_line(tiny_detector, shapes_set, tmp_path):
    empty = json.loads((shapes_set / "val" / "instances.json").read_text()) | {"images": [], "annotations": []}
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "instances.json").write_text(json.dumps(empty))
    code, out, err = run_cli("eval", "--weights", tiny_detector, "--data", tmp_path)
    assert code == 2 and "no images to evaluate the detector on" in err and "-1" not in out, err


def test_cocos_no_objects_score_is_said_as_such():
    """COCO's -1 (no object of that size in the set) is "n/a", not a negative score (issue 38)."""
    from resnets.tasks.detection import map_line

    res = {"map": 41.0, "map_50": 70.0, "map_75": 40.0, "map_small": -1.0, "map_medium": 30.0, "map_large": 50.0}
    line = map_line(res | {"n": 6})
    assert "small n/a, medium 30.0, large 50.0" in line and "-1" not in line
