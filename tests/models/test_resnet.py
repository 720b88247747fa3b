"""Registry-driven checks: every registered model builds, trains a step, gives its stage maps, resets its head,
and survives a save -> load round trip."""

import pytest
import torch
from conftest import randomize_norms
from torch import nn

import resnets
from resnets.errors import OptionError, UnknownModelError
from resnets.models import get_entry, register_model
from resnets.models.layers import BasicBlock, Bottleneck, PadShortcut

ALL = [
    n for n in resnets.list_models() if get_entry(n).family != "detection"
]  # classifiers (detectors: test_detection.py)
# BiT's x2/x3 widths (200-400 M parameters) are the x1 code with wider stages: built on the meta device only
WIDE = {"resnetv2_50x3_bit", "resnetv2_101x3_bit", "resnetv2_152x2_bit"}
IMAGENET = [n for n in ALL if get_entry(n).family == "imagenet"]
CIFAR = [n for n in ALL if get_entry(n).family == "cifar"]


def _input(name, batch=2):
    size = 64 if get_entry(name).family == "imagenet" else 32
    return torch.randn(batch, 3, size, size)


def test_registry_holds_the_whole_family():
    expected = {
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
        "resnet50d",
        "resnet101d",
        "resnetv2_50",
        "resnetv2_101",
        "resnetv2_152",
        "plain18",
        "plain34",
        "resnetv2_50x1_bit",
        "resnetv2_50x3_bit",
        "resnetv2_101x1_bit",
        "resnetv2_101x3_bit",
        "resnetv2_152x2_bit",
        "resnet8",
        "resnet14",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "resnet1202",
        "plain20",
        "plain32",
        "plain44",
        "plain56",
        "plain110",
    }
    assert expected <= set(ALL)
    assert resnets.list_models("resnext*") == ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"]


@pytest.mark.parametrize(
    "name, factor", [("resnetv2_50x3_bit", 3), ("resnetv2_101x3_bit", 3), ("resnetv2_152x2_bit", 2)]
)
def test_wide_bit_nets_are_the_x1_nets_with_wider_stages(name, factor):
    x1 = name.replace(f"x{factor}_", "x1_") if "152" not in name else None
    with torch.device("meta"):
        model = resnets.create_model(name)
        out = model.forward_features(torch.empty(1, 3, 64, 64))
    assert out.shape == (1, 2048 * factor, 2, 2) and model.num_features == 2048 * factor
    assert model.feature_info.channels() == [64 * factor, 256 * factor, 512 * factor, 1024 * factor, 2048 * factor]
    if x1:
        with torch.device("meta"):
            narrow = resnets.create_model(x1)
        assert narrow.state_dict().keys() == model.state_dict().keys()


def test_duplicate_registration_raises():
    def resnet50(**kw):
        return None

    with pytest.raises(ValueError, match="twice"):
        register_model(options=())(resnet50)


@pytest.mark.parametrize("name", [n for n in ALL if n not in WIDE])
def test_forward_backward_and_stage_maps(name):
    model = resnets.create_model(name, num_classes=7)
    x = _input(name)
    out = model(x)
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


@pytest.mark.parametrize("name", [n for n in ALL if n not in WIDE])
def test_save_load_round_trip_and_reset_head(name, tmp_path):
    model = randomize_norms(resnets.create_model(name)).eval()
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


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="did you mean.*resnet50"):
        resnets.create_model("resnet5O")


@pytest.mark.parametrize(
    "name, option",
    [
        ("resnet18", {"stride_in_1x1": True}),
        ("plain20", {"shortcut": "B"}),
        ("plain34", {"zero_init_residual": True}),
        ("resnet50d", {"shortcut": "A"}),
        ("resnetv2_50", {"stride_in_1x1": False}),
        ("resnet50", {"dropout": 0.1}),
    ],
)
def test_an_option_a_model_cannot_take_is_an_error(name, option):
    with pytest.raises(OptionError, match="does not take option"):
        resnets.create_model(name, **option)


@pytest.mark.parametrize("option", [{"shortcut": "D"}, {"norm": "layer"}, {"num_classes": -1}, {"drop_path_rate": 1.5}])
def test_bad_option_values_are_errors(option):
    with pytest.raises(OptionError):
        resnets.create_model("resnet20", **option)


def _count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


def test_shortcut_options_A_B_C():
    a = resnets.create_model("resnet20")  # the paper's CIFAR default: A
    b = resnets.create_model("resnet20", shortcut="B")
    c = resnets.create_model("resnet20", shortcut="C")
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # A has no shortcut parameters: exactly the plain net's parameters (paper section 4.2)
    assert params(a) == params(resnets.create_model("plain20")) == 269_722
    assert _count(a, PadShortcut) == 2

    # B projects where the shape changes (2 places), C on all 9 blocks
    def projections(m):
        return sum(
            blk.downsample is not None and not isinstance(blk.downsample, PadShortcut)
            for blk in m.modules()
            if isinstance(blk, BasicBlock)
        )

    assert projections(b) == 2 and projections(c) == 9
    assert params(a) < params(b) < params(c)


def test_option_A_pads_zeros_and_subsamples():
    sc = PadShortcut(16, 32, 2)
    x = torch.randn(1, 16, 8, 8)
    y = sc(x)
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 16:]) == 0


def test_plain_nets_have_no_shortcuts():
    x = torch.randn(2, 3, 32, 32)
    plain = resnets.create_model("plain20").eval()
    assert all(b.downsample is None and not b.residual for b in plain.modules() if isinstance(b, BasicBlock))
    # a plain block is exactly relu(bn(conv(relu(bn(conv(x)))))): no addition
    blk = plain.layer1[0]
    with torch.no_grad():
        manual = blk.relu(blk.bn2(blk.conv2(blk.relu(blk.bn1(blk.conv1(x[:, :1].repeat(1, 16, 1, 1)))))))
        assert torch.allclose(blk(x[:, :1].repeat(1, 16, 1, 1)), manual)


def test_stride_in_1x1_moves_the_stride():
    v15 = resnets.create_model("resnet50")
    v1 = resnets.create_model("resnet50", stride_in_1x1=True)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert v1(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_zero_init_residual_makes_blocks_identities():
    m = resnets.create_model("resnet20", zero_init_residual=True, shortcut="B").eval()
    blk = m.layer1[1]  # identity shortcut: with a zero last BN the block is relu(x)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.allclose(blk(x), torch.relu(x))
    assert all(
        float(b.bn3.weight.detach().abs().sum()) == 0
        for b in resnets.create_model("resnet50", zero_init_residual=True).modules()
        if isinstance(b, Bottleneck)
    )
    v2 = resnets.create_model("resnetv2_50", zero_init_residual=True)
    assert float(v2.layer1[1].conv3.weight.detach().abs().sum()) == 0


def test_drop_path_is_linear_in_depth_and_only_in_training():
    m = resnets.create_model("resnet20", drop_path_rate=0.5)
    rates = [b.drop_path.p for b in m.modules() if isinstance(b, BasicBlock) and hasattr(b.drop_path, "p")]
    assert rates[0] == pytest.approx(0.5 / 8) and rates[-1] == pytest.approx(0.5)
    x = torch.randn(4, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, m(x))


@pytest.mark.parametrize("norm, kind", [("group", nn.GroupNorm), ("frozen_batch", None), ("batch", nn.BatchNorm2d)])
def test_norm_choice(norm, kind):
    from torchvision.ops import FrozenBatchNorm2d

    kind = kind or FrozenBatchNorm2d
    for name in ("resnet20", "resnet50", "resnetv2_50"):
        m = resnets.create_model(name, norm=norm)
        assert isinstance(m.layer1[0].bn1, kind)
        assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules()) or norm == "batch"
        m(torch.randn(2, 3, 64, 64) if name != "resnet20" else torch.randn(2, 3, 32, 32)).sum().backward()


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
        t = timm.create_model(name, features_only=True, out_indices=out_indices, pretrained=False)
        f = resnets.create_model(name, weights=tmp_path / "w.safetensors", features_only=True, out_indices=out_indices)
        assert f.feature_info.channels() == t.feature_info.channels(), out_indices
        assert f.feature_info.reduction() == t.feature_info.reduction(), out_indices
        with torch.no_grad():
            maps, want = f.eval()(x), ref.forward_intermediates(x, indices=list(out_indices), intermediates_only=True)
        assert len(maps) == len(want) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(maps, want)), out_indices
    if not name.startswith("resnetv2"):
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


@pytest.mark.parametrize("name, n", [("resnet8", 1), ("resnet14", 2), ("resnet20", 3), ("resnet56", 9)])
def test_the_cifar_nets_have_6n_plus_2_weighted_layers(name, n):
    """Section 4.2: 6n 3x3 convs in three stages, the first conv and the classifier (option A adds none)."""
    m = resnets.create_model(name)
    layers = sum(isinstance(x, (torch.nn.Conv2d, torch.nn.Linear)) for x in m.modules())
    assert layers == 6 * n + 2
    assert [len(getattr(m, f"layer{i}")) for i in (1, 2, 3)] == [n, n, n]
