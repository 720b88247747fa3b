"""Registry-driven checks: every registered model builds, trains a step, gives its stage maps, resets its head,
and survives a save -> load round trip."""

import pytest
import torch
from conftest import randomize_norms
from torch import nn

import resnets
from resnets.models import get_entry

ALL = [
    n for n in resnets.list_models() if get_entry(n).family not in ("detection", "segmentation")
]  # classifiers (detectors: test_detection.py; segmenters: test_segmentation.py)
# BiT's x2/x3 widths (200-400 M parameters) are the x1 code with wider stages: built on the meta device only
WIDE = {"resnetv2_50x3_bit", "resnetv2_101x3_bit", "resnetv2_152x2_bit"}
IMAGENET = [n for n in ALL if get_entry(n).family == "imagenet"]
CIFAR = [n for n in ALL if get_entry(n).family == "cifar"]


def _input(name, batch=2):
    size = 64 if get_entry(name).family == "imagenet" else 32
    return torch.randn(batch, 3, size, size)


def _forward_backward_and_stage_maps(name, model):
    x = _input(name)
    out = model.train()(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads), "some parameter got no gradient"
    assert model.conv1.weight.grad.abs().sum() > 0 if isinstance(model.conv1, nn.Conv2d) else True

    model.eval()
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
    side = x.shape[-1]
    assert len(maps) == len(model.feature_info) == len(model.stage_names) + 1  # the stem, then each stage
    for m, info in zip(maps, model.feature_info):
        assert m.shape == (2, info["num_chs"], side // info["reduction"], side // info["reduction"])
    expected_red = [2, 4, 8, 16, 32] if get_entry(name).family == "imagenet" else [1, 1, 2, 4]
    assert model.feature_info.reduction() == expected_red
    assert torch.equal(final, feats) and torch.equal(normed[0], feats)
    assert pooled.shape == (2, model.num_features)


def _save_load_round_trip_and_reset_head(name, model, tmp_path):
    model.eval()
    x = _input(name)
    path = resnets.save(
        model, tmp_path / f"{name}.safetensors", class_names=[f"c{i}" for i in range(model.num_classes)]
    )
    again = resnets.load(path)
    assert not again.training
    assert type(again) is type(model) and again.meta.architecture == name
    assert again.meta.class_names[:2] == ["c0", "c1"]
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        out = model(x)
        if not torch.isfinite(out).all():  # resnet1202 at init: 600 unnormalised additions overflow in eval mode
            model.train(), again.train()
            out = model(x)
        assert torch.equal(again(x), out)

    model.reset_classifier(5)
    with torch.no_grad():
        assert model(x).shape == (2, 5)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize("name", [n for n in ALL if n not in WIDE])
def test_forward_backward_stage_maps_save_load_and_reset_head(name, tmp_path):
    """Every classifier, built once for both halves (the random init of a 100M-parameter net is a second or more):
    a training step's forward and backward, its stage maps, then a save -> load round trip (norms with statistics
    away from the identity) and a new head."""
    model = randomize_norms(resnets.create_model(name, num_classes=7))
    _forward_backward_and_stage_maps(name, model)
    model.zero_grad(set_to_none=True)
    _save_load_round_trip_and_reset_head(name, model, tmp_path)


def test_in_chans():
    m = resnets.create_model("resnet20", in_chans=1)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert resnets.create_model("resnet50d", in_chans=4).conv1[0].in_channels == 4


def test_model_code_does_no_io():
    """Model modules import nothing that reads files or the network."""
    import ast
    import pathlib

    root = pathlib.Path(resnets.__file__).parent / "models"
    banned = {"os", "pathlib", "urllib", "requests", "safetensors", "io", "shutil"}
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not {n.split(".")[0] for n in names} & banned, f"{path.name} imports {names}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("print", "open"):
                raise AssertionError(f"{path.name} calls {node.func.id}")


@pytest.mark.parametrize("name", ["resnet50", "resnet18", "resnet50d", "resnetv2_50"])
def test_features_only_and_forward_intermediates_follow_timm(name, tmp_path):
    """timm's indexing (0 is the stem), feature_info and forward_intermediates contract, checked against timm
    itself with the same weights: `out_indices=(1, 2, 3)` is layer1-3 in both (it was layer2-4 here)."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    ref = randomize_norms(timm.create_model(name, pretrained=False)).eval()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "w.safetensors"))
    ours = resnets.create_model(name, weights=tmp_path / "w.safetensors").eval()
    x = torch.randn(2, 3, 64, 64)
    for out_indices in [(1, 2, 3), (0, 4), (-1,), (0, 1, 2, 3, 4)]:
        with torch.device("meta"):  # timm's wrapper for its feature_info only: no weights drawn
            t = timm.create_model(name, features_only=True, out_indices=out_indices, pretrained=False)
        f = resnets.create_model(name, weights=tmp_path / "w.safetensors", features_only=True, out_indices=out_indices)
        assert f.feature_info.channels() == t.feature_info.channels(), out_indices
        assert f.feature_info.reduction() == t.feature_info.reduction(), out_indices
        with torch.no_grad():
            maps, want = f.eval()(x), ref.forward_intermediates(x, indices=list(out_indices), intermediates_only=True)
        assert len(maps) == len(want) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(maps, want)), out_indices
    if not name.startswith("resnetv2"):
        with torch.device("meta"):  # module names only
            assert (
                resnets.create_model(name, features_only=True).feature_info.module_name()
                == timm.create_model(name, features_only=True, pretrained=False).feature_info.module_name()
            )
    with torch.no_grad():
        for kw in ({"indices": 2}, {"indices": 3, "norm": True}, {"indices": [1, -1], "stop_early": True}):
            (final, maps), (want_final, want) = ours.forward_intermediates(x, **kw), ref.forward_intermediates(x, **kw)
            assert torch.allclose(final, want_final, atol=1e-5) and len(maps) == len(want), kw
            assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(maps, want)), kw
    with pytest.raises(resnets.OptionError, match="features_only"):
        resnets.create_model("resnet18", out_indices=(1,))
    with pytest.raises(resnets.OptionError, match="feature indices run from -5 to 4"):
        resnets.create_model("resnet18", features_only=True, out_indices=(5,))


@pytest.mark.parametrize("output_stride, dilate", [(8, [False, True, True]), (16, [False, False, True])])
@pytest.mark.parametrize("arch", ["resnet50", "resnext50_32x4d"])
def test_output_stride_dilates_as_torchvision_does(arch, output_stride, dilate):
    import torchvision

    torch.manual_seed(0)
    tv = randomize_norms(getattr(torchvision.models, arch)(replace_stride_with_dilation=dilate)).eval()
    ours = resnets.create_model(arch, output_stride=output_stride).eval()
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=1e-4)
        assert ours.forward_features(x).shape[-2:] == (96 // output_stride, 128 // output_stride)
    assert ours.feature_info.reduction() == [2, 4, 8, min(16, output_stride), output_stride]


@pytest.mark.parametrize("arch", ["resnet50d", "resnetv2_50", "resnet18"])
def test_output_stride_dilates_as_timm_does(arch):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = randomize_norms(timm.create_model(arch, pretrained=False, output_stride=8)).eval()
    ours = resnets.create_model(arch, output_stride=8).eval()
    from resnets.models.resnet import ResNetV2

    ours.load_state_dict(ResNetV2.checkpoint_filter(ref.state_dict()))
    x = torch.randn(1, 3, 80, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), rtol=0, atol=1e-4)
