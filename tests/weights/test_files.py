"""resnets.weights.files: weights files in every layout read and written: self-describing model files, atomic saves, and
damaged, truncated, foreign or code-carrying files refused in one clear error."""

import os

import pytest
import torch

import resnets
from resnets.errors import ResnetsError, WeightsError


@pytest.mark.parametrize("how", ["torch.save", "pickle protocol 2", "pickle protocol 4"])
def test_unsafe_pickle_is_refused_naming_the_code_and_never_executed(tmp_path, how):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    obj = {"fc.weight": Evil()}
    if how == "torch.save":
        torch.save(obj, tmp_path / "evil.pth")
    else:
        (tmp_path / "evil.pth").write_bytes(pickle.dumps(obj, protocol=int(how[-1])))
    with pytest.raises(WeightsError, match=r"pickled code \((posix|os)\.system\), which would run on loading"):
        resnets.create_model("resnet18", weights=tmp_path / "evil.pth")
    from resnets.weights.files import load_checkpoint

    with pytest.raises(WeightsError, match="pickled code"):
        load_checkpoint(tmp_path / "evil.pth")  # what --resume reads
    assert not marker.exists()
    (tmp_path / "cut.pth").write_bytes((tmp_path / "evil.pth").read_bytes()[:10])
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        resnets.create_model("resnet18", weights=tmp_path / "cut.pth")


@pytest.mark.parametrize(
    "content, suffix", [(b"not a checkpoint", ".pth"), (b"\x00" * 64, ".safetensors"), (b"x", ".onnx")]
)
def test_corrupt_or_foreign_files_are_clear_errors(tmp_path, content, suffix):
    p = tmp_path / f"bad{suffix}"
    p.write_bytes(content)
    with pytest.raises(WeightsError):
        resnets.create_model("resnet18", weights=p)


def test_truncated_safetensors(tmp_path):
    resnets.save(resnets.create_model("resnet20"), tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        resnets.load(tmp_path / "cut.safetensors")


def test_saved_file_is_self_describing(tmp_path):
    from safetensors import safe_open

    m = resnets.create_model("resnet56", num_classes=3, shortcut="B", in_chans=1)
    resnets.save(
        m,
        tmp_path / "m.safetensors",
        class_names=["cat", "dog", "eel"],
        preprocessing={"resize": 32, "crop": 28, "mean": [0.5], "std": [0.25]},
    )
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["architecture"] == "resnet56"
    again = resnets.load(tmp_path / "m.safetensors")
    assert again.meta.options == {"num_classes": 3, "shortcut": "B", "in_chans": 1}
    assert again.meta.class_names == ["cat", "dog", "eel"]
    assert again.meta.preprocessing == resnets.Preprocessing(32, 28, "bilinear", (0.5,), (0.25,))
    assert again.layer2[0].downsample[0].kernel_size == (1, 1)  # option B rebuilt from the file alone


def test_save_is_atomic(tmp_path, monkeypatch):
    import safetensors.torch

    target = tmp_path / "m.safetensors"
    resnets.save(resnets.create_model("resnet20"), target)
    before = target.read_bytes()
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # the mode of any new file, not mkstemp's 0600
    plain.unlink()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        resnets.save(resnets.create_model("resnet20", num_classes=3), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    with pytest.raises(ResnetsError, match="does not exist"):
        resnets.save(resnets.create_model("resnet20"), tmp_path / "missing" / "m.safetensors")
