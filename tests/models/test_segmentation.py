"""resnets.models.segmentation: torchvision's FCN and DeepLabV3 on our dilated nets. Each takes the state dict of
torchvision's model of the same name unchanged and gives its outputs; the published COCO-VOC files load by name."""

import pytest
import torch
import torchvision
from conftest import randomize_norms

import resnets
from resnets.errors import OptionError

SEGMENTERS = ["fcn_resnet50", "deeplabv3_resnet50", "fcn_resnet101", "deeplabv3_resnet101"]


@pytest.mark.parametrize("name", SEGMENTERS[:2])
def test_torchvisions_weights_load_unchanged_and_give_its_outputs(name):
    torch.manual_seed(0)
    tv = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None, aux_loss=True)
    randomize_norms(tv).eval()
    ours = resnets.create_model(name).eval()
    assert set(ours.state_dict()) == set(tv.state_dict())
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 72, 96)
    with torch.no_grad():
        want, got = tv(x), ours(x)
    assert set(got) == {"out", "aux"} and got["out"].shape == (2, 21, 72, 96)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-4)


def test_any_backbone_at_either_output_stride():
    m = resnets.create_model("deeplabv3_resnet50", backbone="resnet18", output_stride=16, num_classes=3, aux_loss=False)
    assert m.aux_classifier is None
    x = torch.randn(1, 3, 64, 64)
    feats = m.backbone(x)["out"]
    assert feats.shape == (1, 512, 4, 4)  # stride 16
    assert m.eval()(x)["out"].shape == (1, 3, 64, 64)
    with pytest.raises(OptionError, match="output_stride must be 8, 16 or 32"):
        resnets.create_model("fcn_resnet50", output_stride=4)
    with pytest.raises(OptionError, match="does not take option 'min_size'"):
        resnets.create_model("fcn_resnet50", min_size=64)


@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_resnet50"])
def test_the_published_coco_voc_files_load_by_name(name, offline_cache, tmp_path, monkeypatch):
    """Random weights in the published file's layout, put where each library looks: torchvision's builder and ours
    give the same outputs, and the 21 VOC labels come with the name."""
    torch.manual_seed(0)
    tv = randomize_norms(
        getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None, aux_loss=True)
    )
    spec = resnets.get_weights(f"{name}.tv_coco_voc")
    offline_cache.mkdir(parents=True, exist_ok=True)
    torch.save(tv.state_dict(), offline_cache / spec.file_name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(tv.state_dict(), tmp_path / "torch" / "hub" / "checkpoints" / spec.file_name)
    want_model = getattr(torchvision.models.segmentation, name)(weights="COCO_WITH_VOC_LABELS_V1").eval()
    ours = resnets.create_model(f"{name}.tv_coco_voc").eval()
    assert ours.meta.class_names[:3] == ["__background__", "aeroplane", "bicycle"] and len(ours.meta.class_names) == 21
    assert spec.metrics["miou"] > 50 and spec.num_classes == 21
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)["out"], want_model(x)["out"], rtol=0, atol=1e-4)
