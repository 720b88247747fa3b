"""resnets.home: where every cache lives ($RESNETS_HOME, else $XDG_CACHE_HOME, else ~/.cache), the offline
switch, and the class lists shipped with the package; the standard library only."""

import subprocess
import sys
from pathlib import Path

import pytest

from resnets import home


def test_the_cache_roots_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNETS_HOME", str(tmp_path / "h"))
    assert home.cache_dir() == tmp_path / "h" / "weights" and home.onnx_cache_dir() == tmp_path / "h" / "onnx"
    monkeypatch.delenv("RESNETS_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert home.home_dir() == tmp_path / "xdg" / "resnets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert home.home_dir() == tmp_path / "user" / ".cache" / "resnets"


def test_offline_is_any_value_but_empty_or_zero(monkeypatch):
    for value, off in [("", False), ("0", False), ("1", True), ("yes", True)]:
        monkeypatch.setenv("RESNETS_OFFLINE", value)
        assert home.offline() is off


def test_imagenet_class_names_ship_with_the_package_and_are_torchvisions():
    from torchvision.models import ResNet50_Weights

    names = home.class_list("imagenet")
    assert names == ResNet50_Weights.IMAGENET1K_V2.meta["categories"] and len(names) == 1000
    names.append("mutated")
    assert len(home.class_list("imagenet")) == 1000  # each call a fresh list


def test_it_imports_no_torch():
    src = str(Path(__file__).resolve().parents[1] / "src")
    code = "import sys; import resnets.home, resnets.choices, resnets.errors, resnets.version; print('torch' in sys.modules)"
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": src}, timeout=60
    )
    assert p.stdout.strip() == "False", p.stderr


def test_a_number_from_the_environment_is_checked_as_an_option_is(monkeypatch):
    from resnets.errors import ResnetsError
    from resnets.home import setting

    monkeypatch.delenv("RESNETS_X", raising=False)
    assert setting("RESNETS_X", 20.0, "give seconds") == 20.0
    monkeypatch.setenv("RESNETS_X", " 2.5 ")
    assert setting("RESNETS_X", 20.0, "give seconds") == 2.5
    for bad in ("abc", "0", "-1", "inf", "nan", "5000"):
        monkeypatch.setenv("RESNETS_X", bad)
        with pytest.raises(ResnetsError, match=f"^RESNETS_X='{bad}': give seconds from 0.1 to 3600$"):
            setting("RESNETS_X", 20.0, "give seconds from 0.1 to 3600", low=0.1, high=3600, low_ok=True)
    monkeypatch.setenv("RESNETS_X", "0.1")
    assert setting("RESNETS_X", 20.0, "give seconds", low=0.1, low_ok=True) == 0.1
    monkeypatch.setenv("RESNETS_X", "\x1b[2J")
    with pytest.raises(ResnetsError, match=r"RESNETS_X='\\\\x1b\[2J'"):  # escaped: one line, no terminal tricks
        setting("RESNETS_X", 1.0, "give a number")
