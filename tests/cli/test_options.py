"""resnets.cli.options: the flags the commands share, each config key a flag with its default and values shown, misspelt
flags with a suggestion."""

import json

import pytest
from conftest import run_cli

import resnets


def test_train_help_describes_every_key_with_its_default_and_values():
    import dataclasses

    from resnets.config import TrainConfig

    code, out, _ = run_cli("train", "--help")
    assert code == 0
    assert "--schedule {cosine,step,onecycle,plateau,constant}" in out and "(default: cosine)" in out
    assert "--lr X" in out and "(default: 0.1; > 0 and <= 1,000,000)" in " ".join(out.split())
    assert all(f.metadata.get("help") for f in dataclasses.fields(TrainConfig))  # every key has a line of help
    assert " V " not in out and "%%" not in out
    code, out, _ = run_cli("finetune", "--help")
    assert code == 0 and "10% of each class" in " ".join(out.split())


def test_model_options_are_the_same_flags_in_summary_and_train():
    from resnets.config import MODEL_OPTIONS, RULES
    from resnets.models.layers import NORMS, SHORTCUTS

    assert RULES["norm"].choices == NORMS and RULES["shortcut"].choices == SHORTCUTS  # one set of values
    macs = {}
    for args in (["--stride-in-1x1"], ["--stride-in-1x1", "false"], []):
        code, out, err = run_cli("summary", "resnet50", "--json", *args)
        assert code == 0, err
        macs[" ".join(args)] = json.loads(out)["macs"]
    # the paper's v1 (stride on the first 1x1) computes less than v1.5: the switch reached the model
    assert macs["--stride-in-1x1"] < macs["--stride-in-1x1 false"] == macs[""]
    assert resnets.create_model("resnet50", stride_in_1x1=True).layer2[0].conv1.stride == (2, 2)
    _, help_text, _ = run_cli("summary", "--help")
    _, train_help, _ = run_cli("train", "--help")
    for key in MODEL_OPTIONS:
        flag = "--" + key.replace("_", "-")
        assert flag in help_text and flag in train_help


def test_help_shows_the_defaults_that_apply_and_misspelt_flags_get_a_suggestion():
    """finetune --help showed the plain config's lr 0.1, 10 epochs, batch 128 where 0.01, 15, 32 apply; so did
    train --recipe X --help. A misspelt option (--topk, --epohcs) got no suggestion."""
    flat = lambda text: " ".join(text.split())  # noqa: E731
    code, out, _ = run_cli("finetune", "--help")
    assert (
        code == 0 and "(default: 0.01;" in flat(out) and "(default: 15;" in flat(out) and "(default: 32;" in flat(out)
    )
    code, out, _ = run_cli("train", "--recipe", "fashion-mnist", "--help")
    assert code == 0 and "recipe fashion-mnist's" in flat(out) and "(default: 0.2;" in flat(out)
    code, out, _ = run_cli("train", "--help")
    assert code == 0 and "(default: 0.1;" in flat(out) and "(default: 10;" in flat(out)
    code, out, _ = run_cli("predict", "--help")
    assert code == 0 and "-k" in out and "(default 5)" in flat(out) and "1 when any could not be read" in flat(out)
    for args, suggestion in (
        (["predict", "x.png", "--weights", "w", "--topk", "2"], "did you mean --top-k (not --topk)?"),
        (["train", "--epohcs", "1"], "did you mean --epochs"),
    ):
        code, _, err = run_cli(*args)
        assert code == 2 and suggestion in err and len(err.strip().splitlines()) == 1, err


def test_every_option_with_a_default_says_it():
    """eval --device, predict --top-k/--batch-size/--format and export --max-drop lacked the default the README
    promises; now no option of any command does."""
    import argparse

    from resnets.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{name} {a.option_strings[-1]}"
        for name, p in sub.choices.items()
        for a in p._actions
        if a.option_strings
        and a.default not in (None, False, argparse.SUPPRESS)
        and a.help != argparse.SUPPRESS
        and not isinstance(a, argparse._HelpAction)
        and "default" not in (a.help or "")
    ]
    assert missing == []
    code, out, _ = run_cli("eval", "--help")
    assert code == 0 and "default auto" in out


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "IMG"],
        ["embed", "IMG", "--out", "OUT/e.safetensors"],
        ["explain", "IMG", "--out", "OUT/c.png"],
        ["export", "--format", "torchscript", "--out", "OUT/m.pt"],
    ],
)
def test_the_classifier_commands_send_a_detector_or_segmenter_to_its_own(
    command, tiny_detector, tiny_segmenter, shapes_set, tmp_path
):
    image = str(shapes_set / "val" / "images" / "000000.jpg")
    args = [a.replace("IMG", image).replace("OUT", str(tmp_path)) for a in command]
    code, _, err = run_cli(*args, "--weights", tiny_detector)
    wanted = (
        "exports to ONNX (--format onnx)"
        if command[0] == "export"
        else "is a detector: this command takes classifiers (`resnets detect` runs it)"
    )
    assert code == 2 and wanted in err, err
    code, _, err = run_cli(*args, "--weights", tiny_segmenter)
    wanted = (
        "exports to ONNX"
        if command[0] == "export"
        else "is a segmentation model: this command takes classifiers (`resnets segment` runs it)"
    )
    assert code == 2 and wanted in err, err
    assert not any(tmp_path.iterdir())


def test_a_file_made_from_weights_goes_into_the_run_folder_beside_the_file_or_here(tmp_path):
    from resnets.cli.options import output_beside

    run = tmp_path / "r"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"x")
    assert output_beside(str(run), ".onnx") == str(run / "model.onnx")
    assert output_beside(str(run), ".int8.onnx") == str(run / "model.int8.onnx")  # was r.int8.onnx, beside r/
    assert output_beside(str(run / "model.safetensors"), ".pt") == str(run / "model.pt")
    assert output_beside("resnet50.tv_in1k", ".onnx") == "resnet50.tv_in1k.onnx"  # was resnet50.onnx
    assert output_beside("hf-hub:timm/resnet18.a1_in1k@main", ".onnx") == "resnet18.a1_in1k.onnx"
