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
