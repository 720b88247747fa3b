"""The command line as a user meets it: real subprocesses, exit codes, one-line errors, no tracebacks."""
import json
import subprocess
import sys

import pytest
import torch

import resnets

from conftest import run_cli


def run(*args):
    return run_cli(*args)


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
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


def test_registered_weights_offline(tmp_path):
    import os

    env = dict(os.environ, RESNETS_HOME=str(tmp_path), TORCH_HOME=str(tmp_path / "t"), RESNETS_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "resnets", "summary", "resnet50", "--weights", "resnet50.tv_in1k"],
                       capture_output=True, text=True, env=env)  # fmt: skip
    assert_one_line_error(p.returncode, p.stderr, "resnet50-0676ba61.pth", str(tmp_path))


def test_console_script_is_installed():
    import shutil

    exe = shutil.which("resnets") or str(__import__("pathlib").Path(sys.executable).parent / "resnets")
    p = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and "resnets" in p.stdout


def test_torch_hub_load_from_a_checkout():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    m = torch.hub.load(str(repo), "resnet20", source="local", in_chans=1, trust_repo=True)
    assert m.arch_name == "resnet20" and m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(resnets.OptionError):
        torch.hub.load(str(repo), "resnet18", source="local", stride_in_1x1=True, trust_repo=True)
