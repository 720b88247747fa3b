"""The package's top level as a timm or torchvision user calls it (issue 38): `resnets.predict`, `embed`, `explain`,
`detect`, `segment` and `train` beside `create_model` and `load`; `dir(resnets)` the API only; a model's training
transform beside its evaluation one."""

import pytest
import torch
from PIL import Image

import resnets


def test_dir_shows_the_api_only_and_every_name_resolves():
    names = set(dir(resnets))
    assert names == {*resnets.__all__, "__version__"}
    assert not names & {"importlib", "TYPE_CHECKING", "annotations"}
    assert all(getattr(resnets, n) is not None for n in resnets.__all__)


def test_predict_embed_and_explain_at_the_top_level(photos, tmp_path):
    model = resnets.create_model("resnet18", num_classes=3).eval()
    path = photos / "coffee.png"  # lossless: a file and its pixels in memory are the same input
    by_file = resnets.predict(model, [str(path)], top_k=2)
    by_image = resnets.predict(model, [Image.open(path).convert("RGB")], top_k=2)
    assert set(by_file[0]) == set(by_image[0]) == {"input", "path", "top"}  # one shape for files and images
    assert (by_file[0]["input"], by_file[0]["path"]) == (0, str(path)) and (
        by_image[0]["input"],
        by_image[0]["path"],
    ) == (0, None)
    bad = resnets.predict(model, [str(path), str(tmp_path / "missing.jpg")])
    assert [r["input"] for r in bad] == [0, 1] and set(bad[1]) == {"input", "path", "error"}
    assert [c["index"] for c in by_file[0]["top"]] == [c["index"] for c in by_image[0]["top"]]
    assert abs(by_file[0]["top"][0]["prob"] - by_image[0]["top"][0]["prob"]) < 1e-5
    features, files, bad = resnets.embed(model, [str(path), str(photos / "astronaut.jpg")])
    assert features.shape == (2, model.num_features) and not bad
    out = resnets.explain(model, path, tmp_path / "cam.png")
    assert (tmp_path / "cam.png").is_file() and "class" in out
    alone = resnets.explain(model, path)  # the heatmap without a picture (out was required)
    assert alone["out"] is None and torch.equal(alone["heatmap"], out["heatmap"])
    with pytest.raises(resnets.errors.ResnetsError, match="is a folder; explain takes one image file"):
        resnets.explain(model, photos)


def test_detect_and_segment_are_callable_modules(photos):
    detector = resnets.create_model(
        "fasterrcnn_resnet50_fpn", backbone="resnet18", num_classes=3, min_size=64, max_size=64
    ).eval()
    found = resnets.detect(detector, [str(photos / "coffee.png")], score=0.0)
    assert found[0]["path"].endswith("coffee.png") and isinstance(found[0]["boxes"], list)
    assert resnets.detect.coco_map is not None  # the module's own names stay reachable
    segmenter = resnets.create_model("fcn_resnet50", backbone="resnet18", num_classes=2).eval()
    maps = resnets.segment(segmenter, [str(photos / "coffee.png")], size=64)
    assert maps[0]["mask"].shape[0] == 64 or maps[0]["mask"].shape[1] == 64


def test_a_models_training_transform_beside_its_evaluation_one(photos):
    pre = resnets.create_model("resnet18").meta.preprocessing
    image = Image.open(photos / "coffee.png").convert("RGB")
    train, val = pre.transforms(train=True), pre.transforms()
    a, b = train(image), train(image)
    assert a.shape == b.shape == val(image).shape == (3, pre.crop, pre.crop) and a.dtype == torch.float32
    assert not torch.equal(a, b) and torch.equal(val(image), val(image))  # random crops and flips; a fixed one
    assert abs(float(val(image).mean())) < 3  # normalised, as the model takes it
    assert "train: rrc" in repr(train)
