"""resnets.models.detection: torchvision's detectors on our backbones. Each of ours takes the state dict of
torchvision's model of the same name unchanged and gives its detections; any ImageNet-family net of ours feeds the
FPN the maps of its own forward_intermediates; trainable_layers freezes what torchvision's references freeze."""

import pytest
import torch
import torchvision
from conftest import one_line_error, randomize_norms, run_cli
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

import resnets
from resnets.errors import OptionError

DETECTORS = [
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
]


def _small(model):
    """Images resized to 256 (not 800) and every score kept, so random weights still give detections to compare;
    10 detections an image kept from 100 proposals (not 100 from 1,000: Mask R-CNN's mask head on 200 detections
    a call was most of these tests' time)."""
    model.transform.min_size, model.transform.max_size = (256,), 320
    if hasattr(model, "roi_heads"):
        model.roi_heads.score_thresh = 0.0
        model.roi_heads.detections_per_img = 10
        model.rpn._post_nms_top_n["testing"] = 100
    else:
        model.score_thresh = 0.0
        model.detections_per_img = 10
    return model.eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return [torch.rand(3, 240, 320), torch.rand(3, 300, 200)]


@pytest.mark.parametrize("name", DETECTORS)
def test_torchvisions_weights_load_unchanged_and_give_its_detections(name, images):
    torch.manual_seed(0)
    tv = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None, num_classes=91)
    randomize_norms(tv)  # running statistics that matter
    sd = tv.state_dict()
    with torch.device("meta"):  # every weight comes from torchvision's: none drawn
        ours = resnets.create_model(name, norm="batch")  # torchvision builds a net without weights with BatchNorm
    assert set(ours.state_dict()) == set(sd)
    assert ours.load_state_dict({k: v.clone() for k, v in sd.items()}, assign=True) is not None
    assert not any(t.is_meta for t in (*ours.parameters(), *ours.buffers()))
    _small(tv), _small(ours)
    with torch.no_grad():
        want, got = tv(images), ours(images)
    for w, g in zip(want, got):
        assert w.keys() == g.keys() and len(g["boxes"]) > 0
        for k in w:
            torch.testing.assert_close(g[k], w[k], rtol=0, atol=1e-4)


def test_published_weights_trained_with_frozen_statistics_load_into_the_default_frozen_norm(images):
    """torchvision's COCO checkpoints hold FrozenBatchNorm buffers (no num_batches_tracked): our default norm takes
    them as they are and computes the function BatchNorm computes in eval mode (to float rounding: FrozenBatchNorm
    folds the statistics into one scale, so the FPN's maps agree to 1e-5 of their range, not bit for bit)."""
    torch.manual_seed(0)
    tv = randomize_norms(torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None))
    sd = {k: v for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked")}
    ours = resnets.create_model("fasterrcnn_resnet50_fpn")
    assert set(ours.state_dict()) == set(sd)
    ours.load_state_dict(sd)
    x = torch.stack([im[:, :224, :192] for im in images])
    with torch.no_grad():
        want, got = tv.eval().backbone(x), ours.eval().backbone(x)
    for k in want:
        scale = want[k].abs().max().item()
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50d", "resnext50_32x4d", "resnetv2_50", "wide_resnet50_2"])
def test_any_backbone_feeds_the_fpn_its_own_stage_maps(backbone):
    det = resnets.create_model("fasterrcnn_resnet50_fpn", backbone=backbone, norm="batch").eval()
    net = resnets.create_model(backbone, num_classes=0).eval()
    net.load_state_dict(det.backbone.body.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = list(det.backbone.body(x).values())
        want = net.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
    assert [m.shape[1] for m in maps] == net.feature_info.channels()[1:]
    for m, w in zip(maps, want):
        torch.testing.assert_close(m, w)


def test_a_small_detector_trains_on_a_cpu():
    torch.manual_seed(0)
    model = resnets.create_model("retinanet_resnet50_fpn", backbone="resnet18", num_classes=3, trainable_layers=5)
    model.transform.min_size, model.transform.max_size = (128,), 160
    images = [torch.rand(3, 120, 160), torch.rand(3, 128, 128)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without boxes
    ]
    losses = model.train()(images, targets)
    assert set(losses) == {"classification", "bbox_regression"}
    sum(losses.values()).backward()
    assert model.backbone.body.conv1.weight.grad is not None


@pytest.mark.parametrize("layers", range(6))
def test_trainable_layers_freeze_what_torchvision_freezes(layers):
    tv = _resnet_fpn_extractor(torchvision.models.resnet50(), layers)
    ours = resnets.create_model("fasterrcnn_resnet50_fpn", trainable_layers=layers, norm="batch").backbone
    trained = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trained == {n for n, p in tv.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "options, needle",
    [
        (dict(backbone="resnet20"), "ImageNet-family"),
        (dict(backbone="nope50"), "unknown model"),
        (dict(trainable_layers=6), "trainable_layers must be a whole number from 0 to 5"),
        (dict(trainable_layers=2.0), "trainable_layers"),
        (dict(shortcut="A"), "does not take option 'shortcut'"),
    ],
)
def test_bad_options_are_one_clear_error(options, needle):
    with pytest.raises(resnets.ResnetsError, match=needle):
        resnets.create_model("fasterrcnn_resnet50_fpn", **options)
    assert issubclass(OptionError, resnets.ResnetsError)


@pytest.mark.parametrize("command", [["summary"], ["bench", "--batch-sizes", "1"]])
def test_commands_that_take_classifiers_refuse_a_detector_in_one_line(command):
    code, _, err = run_cli(command[0], "fasterrcnn_resnet50_fpn", *command[1:])
    one_line_error(code, err, "fasterrcnn_resnet50_fpn is a detector")


def test_sizes_and_box_samples_reach_torchvisions_modules():
    m = resnets.create_model(
        "fasterrcnn_resnet50_fpn", backbone="resnet18", min_size=96, max_size=128, box_batch_size_per_image=32
    )
    assert m.transform.min_size == (96,) and m.transform.max_size == 128
    assert m.roi_heads.fg_bg_sampler.batch_size_per_image == 32
    r = resnets.create_model("retinanet_resnet50_fpn_v2", backbone="resnet18", min_size=64, max_size=64)
    assert r.transform.min_size == (64,)
    for bad in (dict(min_size=8), dict(max_size=10**6), dict(min_size=True)):
        with pytest.raises(OptionError, match="whole number of pixels"):
            resnets.create_model("fasterrcnn_resnet50_fpn", backbone="resnet18", **bad)
    with pytest.raises(OptionError, match="does not take option 'box_batch_size_per_image'"):
        resnets.create_model("retinanet_resnet50_fpn", backbone="resnet18", box_batch_size_per_image=8)


@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "retinanet_resnet50_fpn"])
def test_reset_classes_replaces_only_the_class_layers(name):
    from resnets.models.detection import reset_classes

    m = resnets.create_model(name, backbone="resnet18", num_classes=91, min_size=64, max_size=64)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    reset_classes(m, 5)
    after = m.state_dict()
    changed = {
        k for k in after if k not in before or after[k].shape != before[k].shape or not torch.equal(after[k], before[k])
    }
    assert changed and all(("predictor" in k) or ("cls_logits" in k) for k in changed), changed
    m.eval()
    out = m([torch.rand(3, 64, 64)])[0]
    assert out["labels"].numel() == 0 or int(out["labels"].max()) < 5
    m.train()
    target = {"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([4])}
    if "mask" in name:
        target["masks"] = torch.zeros(1, 64, 64, dtype=torch.uint8)
        target["masks"][0, 4:30, 4:30] = 1
    losses = m([torch.rand(3, 64, 64)], [target])
    assert all(torch.isfinite(v) for v in losses.values())
