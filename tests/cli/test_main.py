"""The command line as a user meets it: real subprocesses, exit codes, one-line errors, no tracebacks."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import run_cli

import resnets


def run(*args):
    return run_cli(*args)


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0]


def test_list_models_and_weights():
    code, out, _ = run("list")
    assert code == 0 and "resnet50 " in out and "resnet1202" in out and "plain56" in out
    code, out, _ = run("list", "resnext*", "--json")
    assert [m["name"] for m in json.loads(out)] == ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"]
    code, out, _ = run("list", "--weights")
    assert code == 0 and "resnet50.tv2_in1k" in out and "80.858" in out


def test_summary_text_and_json():
    code, out, _ = run("summary", "resnet50")
    assert code == 0 and "25,557,032" in out and "conv5_x" in out and "7x7" in out
    code, out, _ = run("summary", "resnet50", "--stride-in-1x1", "--json")
    s = json.loads(out)
    assert s["params"] == 25_557_032 and s["macs"] == 3_857_973_248 and len(s["stages"]) == 6
    code, out, _ = run("summary", "resnet20", "--in-chans", "1", "--input-size", "28", "--json")
    s = json.loads(out)
    assert s["input"] == [1, 28, 28] and s["stages"][-2]["output"] == [64, 7, 7]


def test_summary_of_a_saved_model_file(tmp_path):
    resnets.save(resnets.create_model("resnet32", num_classes=4), tmp_path / "m.safetensors")
    code, out, _ = run("summary", tmp_path / "m.safetensors", "--json")
    assert code == 0 and json.loads(out)["model"] == "resnet32" and "4-d fc" in out


def test_unknown_model_suggests_close_names():
    code, _, err = run("summary", "resnet5")
    assert_one_line_error(code, err, "unknown model 'resnet5'", "resnet50")


def test_option_the_model_cannot_take():
    code, _, err = run("summary", "resnet18", "--stride-in-1x1")
    assert_one_line_error(code, err, "does not take option 'stride_in_1x1'")


def test_missing_corrupt_and_foreign_weights(tmp_path):
    code, _, err = run("summary", "resnet18", "--weights", tmp_path / "nope.pth")
    assert_one_line_error(code, err, "not found")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    code, _, err = run("summary", "resnet18", "--weights", tmp_path / "bad.safetensors")
    assert_one_line_error(code, err, "not a valid safetensors")
    torch.save(resnets.create_model("resnet50").state_dict(), tmp_path / "r50.pth")
    code, _, err = run("summary", "resnet18", "--weights", tmp_path / "r50.pth")
    assert_one_line_error(code, err, "do not fit resnet18")


def test_registered_weights_offline(tmp_path, monkeypatch):
    for key, value in {
        "RESNETS_HOME": str(tmp_path),
        "TORCH_HOME": str(tmp_path / "t"),
        "RESNETS_OFFLINE": "1",
    }.items():
        monkeypatch.setenv(key, value)
    code, _, err = run("summary", "resnet50", "--weights", "resnet50.tv_in1k")
    assert_one_line_error(code, err, "resnet50-0676ba61.pth", str(tmp_path))


def test_console_script_is_installed():
    import shutil

    exe = shutil.which("resnets") or str(__import__("pathlib").Path(sys.executable).parent / "resnets")
    p = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and "resnets" in p.stdout


def test_torch_hub_load_from_a_checkout():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    m = torch.hub.load(str(repo), "resnet20", source="local", in_chans=1, trust_repo=True)
    assert m.meta.architecture == "resnet20" and m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(resnets.OptionError):
        torch.hub.load(str(repo), "resnet18", source="local", stride_in_1x1=True, trust_repo=True)


def test_help_version_and_list_answer_without_loading_torch():
    """`resnets list` took 12-16 s to print a static table: it now answers as --help does. (`list --weights`
    reads torchvision's weight records, which are torchvision's to keep: that one costs torchvision's import.)"""
    code = (
        "import sys; from resnets.cli import main\n"
        "for argv in (['--version'], ['--help'], ['train', '--help'], ['predict', '--help'], ['list'],\n"
        "             ['list', 'resnet5*', '--json']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip().splitlines()[-1] == "False", p.stderr


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


def test_few_classes_report_no_top5_and_bench_takes_weights_like_the_others(tmp_path):
    code, out, err = run_cli(
        "train",
        "--model",
        "resnet20",
        "--dataset",
        "synthetic",
        "--synthetic-samples",
        64,
        "--synthetic-classes",
        2,
        "--train-crop",
        32,
        "--batch-size",
        16,
        "--epochs",
        1,
        "--workers",
        0,
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        tmp_path,
        "--name",
        "r",
    )
    assert code == 0 and "top-1" in out and "top-5" not in out, err  # with 2 classes top-5 is always 100%
    code, out, err = run_cli(
        "bench", "--weights", tmp_path / "r", "--batch-size", "1,2", "--backend", "eager", "--seconds", 0.1, "--json"
    )
    assert code == 0, err
    r = json.loads(out)
    assert r["model"] == "resnet20" and [x["batch"] for x in r["results"]] == [1, 2]
    code, _, err = run_cli("bench", "resnet20", "--weights", tmp_path / "r")
    assert code == 2 and "one model" in err


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
        (["predict", "x.png", "--weights", "w", "--topk", "2"], "did you mean --top-k?"),
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
