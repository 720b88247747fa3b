"""resnets.models.layers: the blocks and their options: shortcuts A/B/C, plain blocks, the stride's place, zero-init
residuals, stochastic depth, norms."""

import pytest
import torch
from torch import nn

import resnets
from resnets.models.layers import BasicBlock, Bottleneck, PadShortcut


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
