"""Weights: registered names with provenance, local files in every layout, adaptation and clear refusals."""

import hashlib
import json
import os

import pytest
import torch
from conftest import randomize_norms

import resnets
from resnets import weights as W
from resnets.errors import ResnetsError, WeightsError


def test_registered_weights_match_torchvisions_own_records():
    """Every ImageNet weight torchvision publishes for our architectures is registered under timm's name for it,
    with torchvision's URL, hash prefix, accuracy, eval transforms and categories (read from its records)."""
    from torchvision.models import get_model_weights

    for arch in [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnext50_32x4d",
        "resnext101_32x8d",
        "resnext101_64x4d",
        "wide_resnet50_2",
        "wide_resnet101_2",
    ]:
        for tv in get_model_weights(arch):
            tag = {"IMAGENET1K_V1": "tv_in1k", "IMAGENET1K_V2": "tv2_in1k"}[tv.name]
            spec = resnets.get_weights(f"{arch}.{tag}")
            assert spec.url == tv.url
            assert spec.url.rsplit("-", 1)[1].startswith(spec.sha256)
            assert spec.metrics["top1"] == tv.meta["_metrics"]["ImageNet-1K"]["acc@1"]
            t = tv.transforms()
            assert (spec.preprocessing.resize, spec.preprocessing.crop) == (t.resize_size[0], t.crop_size[0])
            assert spec.preprocessing.mean == tuple(t.mean) and spec.preprocessing.std == tuple(t.std)
            assert spec.class_names() == tv.meta["categories"]


def test_offline_error_says_which_file_to_put_where(offline_cache, monkeypatch):
    monkeypatch.setenv("RESNETS_OFFLINE", "1")
    with pytest.raises(WeightsError) as e:
        resnets.create_model("resnet50", weights="resnet50.tv2_in1k")
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in str(e.value)
    assert str(offline_cache / "resnet50-11ad3fa6.pth") in str(e.value)


def _register_local(tmp_path, name, sha):
    src = tmp_path / "served" / "tiny20-abc.pth"
    spec = W.WeightSpec(name=name, url=src.as_uri(), sha256=sha, preprocessing=W.Preprocessing(36, 32))
    W.unregister_weights(name)
    W.register_weights(spec)
    return spec


@pytest.fixture
def served_file(tmp_path):
    (tmp_path / "served").mkdir()
    model = randomize_norms(resnets.create_model("resnet20"))
    path = tmp_path / "served" / "tiny20-abc.pth"
    torch.save(model.state_dict(), path)
    yield model, path
    for n in W.list_weights("resnet20.test*"):
        W.unregister_weights(n)


def test_download_checks_the_hash_and_caches(offline_cache, served_file, tmp_path):
    model, path = served_file
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    _register_local(tmp_path, "resnet20.test_ok", sha)
    got = resnets.create_model("resnet20.test_ok", num_classes=10).eval()  # "<arch>.<tag>" names the weights
    assert (offline_cache / "tiny20-abc.pth").is_file()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(got(x), model.eval()(x))
    assert got.meta.preprocessing.crop == 32 and got.meta.source == "resnet20.test_ok"
    # a second call uses the cache: the source may be gone
    path.unlink()
    resnets.create_model("resnet20", weights="resnet20.test_ok")


def test_download_with_a_wrong_hash_fails_and_leaves_nothing(offline_cache, served_file, tmp_path):
    _register_local(tmp_path, "resnet20.test_bad", "0" * 64)
    with pytest.raises(WeightsError, match="sha256"):
        resnets.create_model("resnet20", weights="resnet20.test_bad")
    assert not offline_cache.exists() or not any(offline_cache.iterdir())


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


def test_missing_file_and_unknown_weight_name():
    with pytest.raises(WeightsError, match="not found"):
        resnets.create_model("resnet18", weights="/nonexistent/w.pth")
    with pytest.raises(WeightsError, match="unknown weights"):
        resnets.create_model("resnet18", weights="resnet18.nope_in1k")


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


def test_a_model_built_by_name_is_fed_its_default_input_and_weights_without_a_record_say_so(tmp_path, offline_cache):
    """`create_model("resnet50").meta.preprocessing` was None although the README promised the architecture's
    default; `.transforms()` is one callable from a PIL image to the model's input; `pretrained=True` is the
    architecture's default weights. Weights that record nothing (a plain state dict) still say what they get."""
    from conftest import run_cli
    from PIL import Image

    model = resnets.create_model("resnet18", num_classes=3)
    assert model.meta.preprocessing == resnets.Preprocessing(256, 224)
    red = Image.new("RGB", (300, 200), (200, 30, 30))
    x = model.meta.preprocessing.transforms()(red)
    pre = model.meta.preprocessing
    from torchvision.transforms.v2.functional import pil_to_tensor

    assert x.shape == (3, 224, 224) and torch.equal(x, pre.normalizer()(pre.transform()(pil_to_tensor(red))))
    assert torch.equal(pre.transforms()(pil_to_tensor(red)), x)  # a uint8 tensor the same
    red.save(tmp_path / "red.png")
    resnets.save(model, tmp_path / "m.safetensors")
    code, out, err = run_cli("predict", tmp_path / "red.png", "--weights", tmp_path / "m.safetensors", "--workers", 0)
    assert code == 0 and "red.png  " in out and "records no preprocessing" not in err, err
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    code, out, err = run_cli("predict", tmp_path / "red.png", "--weights", tmp_path / "plain.pth", "--workers", 0)
    assert code == 0 and "records no preprocessing; using resnet18's default: resize 256, crop 224" in err, err
    assert resnets.create_model("resnet20").meta.preprocessing == resnets.Preprocessing(32, 32)
    grey = resnets.create_model("resnet20", in_chans=1).meta.preprocessing
    assert grey.mean == (pytest.approx(sum((0.485, 0.456, 0.406)) / 3),)
    with pytest.raises(WeightsError, match="resnet50.a1_in1k"):  # the default (best top-1), not in this empty cache
        resnets.create_model("resnet50", pretrained=True, download=False)
    with pytest.raises(resnets.OptionError, match="resnet20 has no registered weights"):
        resnets.create_model("resnet20", pretrained=True)
    with pytest.raises(resnets.OptionError, match="no weights="):
        resnets.create_model("resnet50", pretrained=True, weights="resnet50.tv_in1k")


def test_imagenet_class_names_ship_with_the_package():
    names = W.class_list("imagenet")
    assert len(names) == 1000 and names[0] == "tench" and names[-1] == "toilet tissue"


def test_weights_means_the_same_in_every_command(offline_cache, served_file, tmp_path):
    """--weights takes a registered weight name, a weights file, a model file or a run folder, in predict as
    in summary and finetune; an architecture name is told apart."""
    from conftest import run_cli
    from PIL import Image

    model, path = served_file
    _register_local(tmp_path, "resnet20.test_cli", hashlib.sha256(path.read_bytes()).hexdigest())
    Image.new("RGB", (40, 40), (10, 200, 10)).save(tmp_path / "g.png")
    run = tmp_path / "run"
    run.mkdir()
    resnets.save(model, run / "model.safetensors", preprocessing=W.Preprocessing(36, 32))
    tops = []
    for weights in ("resnet20.test_cli", path, run / "model.safetensors", run):
        code, out, err = run_cli(
            "predict", tmp_path / "g.png", "--weights", weights, "--workers", 0, "--format", "json"
        )
        assert code == 0, (weights, err)
        tops.append(json.loads(out)[0]["top"])
    assert all(t == tops[0] for t in tops)  # the same weights, the same answer, however named
    code, _, err = run_cli("predict", tmp_path / "g.png", "--weights", "resnet20")
    assert code == 2 and "resnet20 is an architecture, not weights" in err
    code, _, err = run_cli("predict", tmp_path / "g.png", "--weights", "resnet20.test_clj")
    assert code == 2 and "did you mean resnet20.test_cli" in err
    code, out, err = run_cli("summary", run, "--json")
    assert code == 0 and json.loads(out)["model"] == "resnet20", err
