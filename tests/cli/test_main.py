"""The command line as a user meets it: real subprocesses, exit codes, one-line errors, no tracebacks."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import one_line_error, run_cli

import resnets


def test_option_the_model_cannot_take():
    code, _, err = run_cli("summary", "resnet18", "--stride-in-1x1")
    one_line_error(code, err, "does not take option 'stride_in_1x1'")


def test_missing_corrupt_and_foreign_weights(tmp_path):
    code, _, err = run_cli("summary", "resnet18", "--weights", tmp_path / "nope.pth")
    one_line_error(code, err, "not found")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    code, _, err = run_cli("summary", "resnet18", "--weights", tmp_path / "bad.safetensors")
    one_line_error(code, err, "not a valid safetensors")
    torch.save(resnets.create_model("resnet50").state_dict(), tmp_path / "r50.pth")
    code, _, err = run_cli("summary", "resnet18", "--weights", tmp_path / "r50.pth")
    one_line_error(code, err, "do not fit resnet18")


def test_registered_weights_offline(tmp_path, monkeypatch):
    for key, value in {
        "RESNETS_HOME": str(tmp_path),
        "TORCH_HOME": str(tmp_path / "t"),
        "RESNETS_OFFLINE": "1",
    }.items():
        monkeypatch.setenv(key, value)
    code, _, err = run_cli("summary", "resnet50", "--weights", "resnet50.tv_in1k")
    one_line_error(code, err, "resnet50-0676ba61.pth", str(tmp_path))


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


@pytest.mark.parametrize("recipe", [None, "fashion-mnist", "finetune", "finetune-detection"])
def test_every_options_help_says_what_it_is_and_one_default_at_most(recipe):
    """Issue 38: no option of any command without a help, none that states two defaults or an empty one
    ("(default: the architecture's)" beside "(default resnet50)"), for the plain config and for recipes."""
    import argparse

    from resnets.cli.main import build_parser

    for name, command in build_parser(recipe).commands.items():
        for a in command._actions:
            if isinstance(a, argparse._HelpAction) or a.help == argparse.SUPPRESS:
                continue
            text = a.help or ""
            where = (recipe, name, a.option_strings or a.dest, text)
            assert text and not text.startswith("default"), where
            assert text.lower().count("default") <= 1 and "(default: )" not in text and "None" not in text, where


def test_abbreviations_are_refused_and_typos_get_a_suggestion_whatever_error_comes_first():
    code, _, err = run_cli("train", "--epoch", "1")  # once taken for --epochs
    assert code == 2 and "unrecognized arguments: --epoch 1; did you mean --epochs" in err
    assert "see `resnets train --help`" in err
    code, _, err = run_cli("predict", "x.jpg", "--weigths", "m.safetensors")  # argparse says --weights is missing
    assert code == 2 and "did you mean --weights (not --weigths)?" in err and err.count("\n") == 1
    code, _, err = run_cli("export", "--weights", "m.safetensors", "--forma", "onnx")
    assert code == 2 and "did you mean --format" in err


def test_print_config_prints_the_resolved_config_that_config_reads_back(tmp_path):
    from resnets.config import resolve

    code, out, err = run_cli("train", "--recipe", "fashion-mnist", "--epochs", "3", "--set", "lr=0.3", "--print-config")
    assert code == 0 and 'model = "resnet14"' in out and "epochs = 3.0" in out and "lr = 0.3" in out, err
    assert "# ---- detection and segmentation" in out and not (tmp_path / "runs").exists()
    (tmp_path / "resolved.toml").write_text(out)
    want = resolve("fashion-mnist", None, {"epochs": 3, "lr": 0.3})
    assert resolve(None, tmp_path / "resolved.toml", {}) == want  # every key, channels_last's auto among them
    code, out, _ = run_cli("finetune", "--data", "photos", "--weights", "resnet18", "--print-config")
    assert code == 0 and 'strategy = "full"' in out and 'model = ""' in out
