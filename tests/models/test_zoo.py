"""resnets.models.zoo: the entrypoints' architectures: BiT's wide nets, the CIFAR nets' 6n+2 layers."""

import pytest
import torch

import resnets


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


@pytest.mark.parametrize("name, n", [("resnet8", 1), ("resnet14", 2), ("resnet20", 3), ("resnet56", 9)])
def test_the_cifar_nets_have_6n_plus_2_weighted_layers(name, n):
    """Section 4.2: 6n 3x3 convs in three stages, the first conv and the classifier (option A adds none)."""
    m = resnets.create_model(name)
    layers = sum(isinstance(x, (torch.nn.Conv2d, torch.nn.Linear)) for x in m.modules())
    assert layers == 6 * n + 2
    assert [len(getattr(m, f"layer{i}")) for i in (1, 2, 3)] == [n, n, n]
