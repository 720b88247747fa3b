"""resnets.weights.published: torchvision's ImageNet weights registered from torchvision's own records."""

from conftest import TORCHVISION_NETS

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
