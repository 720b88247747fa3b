"""resnets.home: where every cache lives ($RESNETS_HOME, else $XDG_CACHE_HOME, else ~/.cache), the offline
switch, and the class lists shipped with the package; the standard library only."""

import subprocess
import sys
from pathlib import Path

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
