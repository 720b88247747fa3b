"""resnets.factory: create_model / load find weights in any layout, check them against their own record, adapt them
(classes, channels) and refuse another architecture's."""

import json

import pytest
import torch
import torchvision
from conftest import randomize_norms

import resnets
from resnets import weights as W
from resnets.errors import WeightsError


def test_prefixes_from_ddp_and_compile_are_handled(tmp_path):
    ref = randomize_norms(torchvision.models.resnet18()).eval()
    sd = {f"module._orig_mod.{k}": v for k, v in ref.state_dict().items()}
    torch.save({"model": sd, "epoch": 3}, tmp_path / "ddp.pth")
    ours = resnets.create_model("resnet18", weights=tmp_path / "ddp.pth").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))


def test_other_num_classes_drops_the_classifier_and_says_so(tmp_path, caplog):
    ref = randomize_norms(torchvision.models.resnet18()).eval()
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    with caplog.at_level("WARNING", logger="resnets"):
        ours = resnets.create_model("resnet18", weights=tmp_path / "tv.pth", num_classes=5).eval()
    assert "classifier dropped" in caplog.text
    assert ours.fc.out_features == 5
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # the backbone is loaded all the same
        assert torch.allclose(
            ours.forward_head(ours.forward_features(x), pre_logits=True),
            torch.flatten(ref.avgpool(torch.nn.Sequential(*list(ref.children())[:-2])(x)), 1),
        )


def test_in_chans_1_sums_conv1_over_rgb(tmp_path):
    ref = randomize_norms(torchvision.models.resnet18()).eval()
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    grey = resnets.create_model("resnet18", weights=tmp_path / "tv.pth", in_chans=1).eval()
    assert torch.allclose(grey.conv1.weight, ref.conv1.weight.sum(1, keepdim=True))
    g = torch.randn(1, 1, 64, 64)
    with torch.no_grad():  # a grey image: one channel here == the same image in all three channels there
        assert torch.allclose(grey(g), ref(g.repeat(1, 3, 1, 1)), atol=1e-4)


def test_num_classes_and_in_chans_follow_the_weights_when_not_given(tmp_path):
    m = resnets.create_model("resnet20", num_classes=4, in_chans=1)
    resnets.save(m, tmp_path / "m.safetensors")
    torch.save(m.state_dict(), tmp_path / "m.pth")
    for f in ("m.safetensors", "m.pth"):
        again = resnets.create_model("resnet20", weights=tmp_path / f)
        assert again.num_classes == 4 and again.conv1.in_channels == 1


@pytest.mark.parametrize("other", ["resnet34", "resnet50", "resnet20"])
def test_weights_of_another_architecture_are_refused_naming_keys(tmp_path, other):
    torch.save(resnets.create_model(other).state_dict(), tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"do not fit resnet18: (missing keys|unexpected keys|shape mismatch) \w"):
        resnets.create_model("resnet18", weights=tmp_path / "other.pth")


def test_a_self_describing_file_of_another_architecture_is_named(tmp_path):
    resnets.save(resnets.create_model("resnet20"), tmp_path / "r20.safetensors")
    with pytest.raises(WeightsError, match="are for resnet20, not resnet32"):
        resnets.create_model("resnet32", weights=tmp_path / "r20.safetensors")


def test_load_takes_what_weights_takes(tmp_path):
    """A file, a plain state dict (architecture recognised), a run folder: `load` means what --weights means."""
    model = resnets.create_model("resnet20", num_classes=10).eval()
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    again = resnets.load(tmp_path / "plain.pth")
    assert again.meta.architecture == "resnet20" and again.meta.preprocessing is None  # a plain state dict records none
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    run = tmp_path / "run"
    run.mkdir()
    resnets.save(model, run / "model.safetensors", class_names=[f"c{i}" for i in range(10)])
    assert resnets.load(run).meta.class_names[3] == "c3"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match="without a model.safetensors.*resume it"):
        resnets.load(tmp_path / "busy")
    assert resnets.load(tmp_path / "plain.pth").meta.source == str(tmp_path / "plain.pth")


def test_architecture_of_reads_a_model_files_header_not_its_tensors(tmp_path, monkeypatch):
    """--model "" asks the weights which architecture (and so which task) before the model is built from them: a
    model file or run folder answers from its header (the weights were read twice, 0.1-0.3 s of a ResNet-50's
    start), a registered name from the registry; a file without a record is read and its shapes say."""
    from resnets import factory

    model = resnets.create_model("resnet20", num_classes=10)
    resnets.save(model, tmp_path / "m.safetensors")
    (tmp_path / "run").mkdir()
    resnets.save(model, tmp_path / "run" / "model.safetensors")
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    reads = []
    real = factory.read_weights
    monkeypatch.setattr(factory, "read_weights", lambda p: reads.append(p) or real(p))
    assert factory.architecture_of(tmp_path / "m.safetensors") == "resnet20"
    assert factory.architecture_of(tmp_path / "run") == "resnet20"
    assert factory.architecture_of("resnet50.tv_in1k") == "resnet50"  # not fetched
    assert reads == []
    assert factory.architecture_of(tmp_path / "plain.pth") == "resnet20" and len(reads) == 1
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(WeightsError, match="not a valid safetensors file"):  # the full read says why
        factory.architecture_of(tmp_path / "bad.safetensors")


def test_a_1000_class_file_without_names_gets_imagenets(tmp_path):
    """A torchvision state dict records no class names: predict printed "735"; a 1000-class head is ImageNet-1k's."""
    import torchvision
    from conftest import run_cli
    from PIL import Image

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "tv.pth")
    model = resnets.load(tmp_path / "tv.pth")
    names = model.meta.names(1000)
    assert names == W.class_list("imagenet") and names[0] != "0"
    Image.new("RGB", (64, 64), (10, 120, 30)).save(tmp_path / "g.png")
    code, out, err = run_cli(
        "predict", tmp_path / "g.png", "--weights", tmp_path / "tv.pth", "--workers", 0, "--format", "json"
    )

    top = json.loads(out)[0]["top"]
    assert code == 0 and all(t["class"] == names[t["index"]] and not t["class"].isdigit() for t in top), out


def test_torchvision_checkpoint_file_through_create_model(tmp_path):
    ref = randomize_norms(torchvision.models.resnet50()).eval()
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    ours = resnets.create_model("resnet50", weights=tmp_path / "tv.pth").eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() <= 1e-5


def test_a_folder_without_model_safetensors_names_the_model_files_it_holds(tmp_path):
    """A folder given as --weights (KServe's /mnt/models holding one file, say) that has no model.safetensors: the
    line names the model files it does hold, so the user can give one; a run's folder is told to resume instead."""
    (tmp_path / "pets").mkdir()
    resnets.save(resnets.create_model("resnet8", num_classes=2), tmp_path / "pets" / "r8.safetensors")
    with pytest.raises(WeightsError, match=r"without a model.safetensors \(it holds 'r8.safetensors': give the file\)"):
        resnets.load(tmp_path / "pets")
    (tmp_path / "pets" / "config.json").write_text(json.dumps({"model": "resnet8"}))
    with pytest.raises(WeightsError, match="resume it with `resnets train --resume`"):
        resnets.load(tmp_path / "pets")
    assert resnets.load(tmp_path / "pets" / "r8.safetensors").num_classes == 2
