"""Golden comparisons against independent references: torchvision's and timm's models with the same weights."""

import pytest
import torch
import torchvision
from conftest import TORCHVISION_NETS, randomize_norms

import resnets

TORCHVISION = TORCHVISION_NETS


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_state_dict_loads_unchanged_and_gives_the_same_outputs(name):
    ref = randomize_norms(getattr(torchvision.models, name)()).eval()
    with torch.device("meta"):  # its weights all come from torchvision's: none drawn (seconds for a 100M-param net)
        ours = resnets.create_model(name).eval()
    # same parameter names: torchvision's state_dict loads strictly, with no remapping (shapes checked)
    ours.load_state_dict({k: v.clone() for k, v in ref.state_dict().items()}, strict=True, assign=True)
    assert not any(t.is_meta for t in (*ours.parameters(), *ours.buffers()))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        diff = (ours(x) - ref(x)).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("name", ["resnet50d", "resnet101d", "resnetv2_50", "resnetv2_101", "resnetv2_50x1_bit"])
def test_timm_checkpoint_gives_timms_outputs(name, tmp_path):
    timm = pytest.importorskip("timm")
    ref = randomize_norms(timm.create_model(name)).eval()
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    ours = resnets.create_model(name, weights=tmp_path / "timm.pth").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # the backbones match exactly in fp32
        assert (ours.forward_features(x) - ref.forward_features(x)).abs().max().item() <= 1e-5
        # timm's v2 classifier is a 1x1 conv, ours a Linear: fp32 rounding differs, so compare logits in fp64
        ours, ref, x = ours.double(), ref.double(), x.double()
        assert (ours(x) - ref(x)).abs().max().item() <= 1e-5
