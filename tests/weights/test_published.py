"""resnets.weights.published: torchvision's ImageNet weights registered from torchvision's own records."""

import pytest
import torch
from conftest import TORCHVISION_NETS, randomize_norms

import resnets


def test_registered_weights_match_torchvisions_own_records():
    """Every ImageNet weight torchvision publishes for our architectures is registered under timm's name for it,
    with torchvision's URL, hash prefix, accuracy, eval transforms and categories (read from its records)."""
    from torchvision.models import get_model_weights

    for arch in TORCHVISION_NETS:
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


DETECTORS = [
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
]


def test_torchvisions_coco_detectors_are_registered_from_its_records():
    from torchvision.models import get_model_weights

    for arch in DETECTORS:
        tv = get_model_weights(arch).COCO_V1
        spec = resnets.get_weights(f"{arch}.tv_coco")
        assert spec.url == tv.url and spec.url.rsplit("-", 1)[1].startswith(spec.sha256)
        assert spec.metrics["box_map"] == tv.meta["_metrics"]["COCO-val2017"]["box_map"]
        assert spec.metrics.get("mask_map") == tv.meta["_metrics"]["COCO-val2017"].get("mask_map")
        assert spec.class_names() == tv.meta["categories"] and spec.num_classes == 91
        assert spec.preprocessing is None  # a detector resizes and normalises itself


@pytest.mark.parametrize("arch", DETECTORS)
def test_a_coco_detector_by_name_gives_torchvisions_detections(arch, offline_cache, tmp_path, monkeypatch):
    """The file (random weights in the published file's layout) put where each library looks for it: torchvision's
    own builder loads it as it loads the real one (eps 0 for the v1 models' FrozenBatchNorm), and ours must give
    the same detections to 1e-4."""
    import torchvision

    torch.manual_seed(0)
    tv = randomize_norms(getattr(torchvision.models.detection, arch)(weights=None, weights_backbone=None))
    sd = tv.state_dict()
    if not arch.endswith("_v2"):  # the v1 files hold FrozenBatchNorm buffers
        sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    name = resnets.get_weights(f"{arch}.tv_coco").file_name
    offline_cache.mkdir(parents=True, exist_ok=True)
    torch.save(sd, offline_cache / name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(sd, tmp_path / "torch" / "hub" / "checkpoints" / name)
    sizes = (
        dict(min_size=160, max_size=200, box_score_thresh=0.0)
        if "retina" not in arch
        else dict(min_size=160, max_size=200, score_thresh=0.0)
    )
    want_model = getattr(torchvision.models.detection, arch)(weights="COCO_V1", **sizes).eval()
    ours = resnets.create_model(f"{arch}.tv_coco", min_size=160, max_size=200).eval()
    if hasattr(ours, "roi_heads"):
        ours.roi_heads.score_thresh = 0.0
    else:
        ours.score_thresh = 0.0
    for model in (want_model, ours):  # 10 detections an image from 100 proposals (not 100 of 1,000): Mask R-CNN's
        if hasattr(model, "roi_heads"):  # mask head on 200 detections a call was most of this test's time
            model.roi_heads.detections_per_img, model.rpn._post_nms_top_n["testing"] = 10, 100
        else:
            model.detections_per_img = 10
    assert ours.meta.class_names[:2] == ["__background__", "person"]
    images = [torch.rand(3, 150, 200), torch.rand(3, 180, 160)]
    with torch.no_grad():
        want, got = want_model(images), ours(images)
    for w, g in zip(want, got):
        assert w.keys() == g.keys() and len(g["boxes"]) > 0
        for k in w:
            torch.testing.assert_close(g[k], w[k], rtol=0, atol=1e-4)
