"""Weights: registered names with provenance, local files in every layout, adaptation and clear refusals."""

import hashlib
import json

import pytest
import torch
from conftest import randomize_norms

import resnets
from resnets import weights as W
from resnets.errors import WeightsError


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


def test_missing_file_and_unknown_weight_name():
    with pytest.raises(WeightsError, match="not found"):
        resnets.create_model("resnet18", weights="/nonexistent/w.pth")
    with pytest.raises(WeightsError, match="unknown weights"):
        resnets.create_model("resnet18", weights="resnet18.nope_in1k")


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
