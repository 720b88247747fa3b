"""COCO folders read as untrusted files: a file that breaks the schema is refused in one line before any image is
read; each bad annotation kind is named with its file and skipped (or refused with strict data); images without
boxes kept; boxes and masks follow the pixels through the augmentations, the same from the same seed."""

import json
import shutil

import pytest
import torch

from resnets.data import coco
from resnets.data.datasets import BadSample
from resnets.errors import ResnetsError


def _folder(tmp_path, shapes_set, edit=None):
    """A copy of the shapes set's val split, its instances.json changed by `edit(data)`."""
    root = tmp_path / "val"
    shutil.copytree(shapes_set / "val", root)
    data = json.loads((root / "instances.json").read_text())
    if edit is not None:
        edit(data)
    (root / "instances.json").write_text(json.dumps(data))
    return root


def test_a_folder_reads_as_torchvision_detection_targets(shapes_set):
    ds = coco.load(shapes_set / "val", masks=True)
    raw = json.loads((shapes_set / "val" / "instances.json").read_text())
    assert ds.classes == ["circle", "square", "triangle"] and len(ds) == 6
    img, t = ds[0]
    assert img.dtype == torch.float32 and img.shape == (3, 64, 64) and 0 <= img.min() and img.max() <= 1
    mine = [a for a in raw["annotations"] if a["image_id"] == raw["images"][0]["id"]]
    want = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in mine)], dtype=torch.float32)
    assert torch.equal(t["boxes"], want.reshape(-1, 4))
    assert t["labels"].tolist() == [a["category_id"] for a in mine]  # ids 1..3 are labels 1..3 here
    assert t["masks"].shape == (len(mine), 64, 64) and t["masks"].dtype == torch.uint8
    assert t["image_id"] == raw["images"][0]["id"]


def test_category_ids_with_gaps_become_labels_1_to_k_in_id_order(tmp_path, shapes_set):
    def renumber(d):
        new = {1: 90, 2: 7, 3: 42}
        for c in d["categories"]:
            c["id"] = new[c["id"]]
        for a in d["annotations"]:
            a["category_id"] = new[a["category_id"]]

    ds = coco.load(_folder(tmp_path, shapes_set, renumber))
    assert ds.classes == ["square", "triangle", "circle"]  # ids 7, 42, 90
    rec = next(r for r in ds.records if r.labels)
    raw = json.loads((shapes_set / "val" / "instances.json").read_text())
    first = [a for a in raw["annotations"] if a["image_id"] == rec.image_id]
    assert [ds.classes[label - 1] for label in rec.labels] == [
        raw["categories"][a["category_id"] - 1]["name"] for a in first
    ]


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda d: d["annotations"][0].update(bbox=[50, 50, 40, 10]), "lies outside the 64x64 image"),
        (lambda d: d["annotations"][0].update(bbox=[-9, 5, 10, 10]), "lies outside the 64x64 image"),
        (lambda d: d["annotations"][0].update(bbox=[5, 5, -3, 10]), "has a negative size"),
        (lambda d: d["annotations"][0].update(bbox=[5, 5, 0, 10]), "has a zero size"),
        (lambda d: d["annotations"][0].update(bbox=[5, 5, "wide", 10]), "not a finite number"),
        (lambda d: d["annotations"][0].update(bbox=[5, 5, 10]), "no bbox of 4 numbers"),
        (lambda d: d["annotations"][0].update(category_id=99), "unknown category id 99"),
        (lambda d: d["annotations"][0].update(image_id=12345), "image id 12345 is not in the file"),
        (lambda d: d["annotations"][0].update(iscrowd=2), "iscrowd is 2"),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [32, 64], "counts": [2048]}),
            "the mask is 64x32, the image 64x64",
        ),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [64, 64], "counts": [100]}),
            "an RLE mask of 100 pixels",
        ),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 1, 200, 1, 100, 50]]), "a polygon lies outside"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 1, 2]]), "at least 3 x, y points"),
        (lambda d: d["annotations"][0].pop("segmentation"), "no segmentation (the model predicts masks)"),
        (lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]), "a second annotation with this id"),
    ],
)
def test_each_bad_annotation_is_named_and_skipped_or_refused_when_strict(tmp_path, shapes_set, caplog, edit, needle):
    root = _folder(tmp_path, shapes_set, edit)
    n = len(json.loads((root / "instances.json").read_text())["annotations"])
    with caplog.at_level("WARNING", logger="resnets"):
        ds = coco.load(root, masks=True)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and needle in lines[0] and str(root / "instances.json") in lines[0], lines
    assert sum(len(r.boxes) for r in ds.records) == n - 1  # that one skipped, the rest kept
    with pytest.raises(ResnetsError, match="strict data") as e:
        coco.load(root, masks=True, strict=True)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "the top level is not an object"),
        ('{"images": [], "annotations": []}', '"categories" must be a list of objects'),
        ('{"images": [], "categories": []}', '"categories" must name 1 to'),
        ('{"images": {}, "categories": [{"id": 1, "name": "a"}]}', '"images" must be a list of objects'),
        ('{"images": [], "categories": [{"id": 1}]}', "every category needs a whole-number id and a name"),
        (
            '{"images": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}',
            "two categories share an id",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg", "width": 0, "height": 5}], "categories": [{"id": 1, "name": "a"}]}',
            "needs a whole-number id",
        ),
        (
            '{"images": [{"id": 1, "file_name": "../../etc/passwd", "width": 5, "height": 5}], "categories": [{"id": 1, "name": "a"}]}',
            "is not a path inside",
        ),
        (
            '{"images": [{"id": 1, "file_name": "/etc/passwd", "width": 5, "height": 5}], "categories": [{"id": 1, "name": "a"}]}',
            "is not a path inside",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg", "width": 5, "height": 5}, {"id": 1, "file_name": "b.jpg", "width": 5, "height": 5}], "categories": [{"id": 1, "name": "a"}]}',
            "two images share the id 1",
        ),
    ],
)
def test_a_file_that_breaks_the_schema_is_refused_in_one_line(tmp_path, text, needle):
    (tmp_path / "instances.json").write_text(text)
    with pytest.raises(ResnetsError) as e:
        coco.load(tmp_path)
    assert needle in str(e.value) and "not a COCO instances file" in str(e.value) and "\n" not in str(e.value)


def test_an_oversized_file_is_refused_unread(tmp_path, monkeypatch):
    (tmp_path / "instances.json").write_text(" " * 2000 + "{}")
    monkeypatch.setattr(coco, "MAX_JSON_BYTES", 1000)
    with pytest.raises(ResnetsError, match="2,002 bytes is more than the 1,000 allowed"):
        coco.load(tmp_path)


def test_an_image_of_another_size_than_its_record_is_a_named_bad_sample(tmp_path, shapes_set):
    root = _folder(tmp_path, shapes_set, lambda d: d["images"][0].update(width=65))
    ds = coco.load(root)
    with pytest.raises(BadSample, match="the image is 64x64, instances.json says 65x64"):
        ds[0]
    assert isinstance(coco.Safe(ds)[0], BadSample) and not isinstance(coco.Safe(ds)[1], BadSample)
    # a missing image file too
    (root / json.loads((root / "instances.json").read_text())["images"][1]["file_name"]).unlink()
    assert "no such file" in coco.Safe(ds)[1].reason


def test_images_without_boxes_are_kept(tmp_path, shapes_set):
    root = _folder(tmp_path, shapes_set, lambda d: d.update(annotations=[]))
    ds = coco.load(root).with_augment("ssd")
    assert len(ds) == 6
    img, t = ds[0]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and img.ndim == 3


def test_a_flip_moves_the_boxes_and_masks_with_the_pixels(shapes_set):
    plain = coco.load(shapes_set / "val", masks=True)
    flipped = plain.with_augment("hflip", seed=0)
    for key in range(12):  # some draws flip, some do not: each must agree with its pixels
        img, t = flipped[key]
        ref, rt = plain[key % len(plain)]
        if torch.equal(img, ref):
            assert torch.equal(t["boxes"], rt["boxes"])
            continue
        assert torch.equal(img, ref.flip(-1))
        x0, y0, x1, y1 = rt["boxes"].unbind(1)
        assert torch.allclose(t["boxes"], torch.stack([64 - x1, y0, 64 - x0, y1], 1))
        assert torch.equal(t["masks"], rt["masks"].flip(-1))


def test_augmentation_is_seeded_by_seed_epoch_and_index(shapes_set):
    ds = coco.load(shapes_set / "train").with_augment("ssd", seed=3)
    again = coco.load(shapes_set / "train").with_augment("ssd", seed=3)
    a, b = ds[16 + 2], again[16 + 2]  # epoch 1, image 2
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    shapes = {tuple(ds[16 * e + 2][0].shape) for e in range(6)}
    assert len(shapes) > 1  # the crop differs from epoch to epoch


def test_find_names_the_splits(tmp_path, shapes_set):
    assert coco.find(shapes_set, "train") == shapes_set / "train" / "instances.json"
    assert coco.find(shapes_set, "val") == shapes_set / "val" / "instances.json"
    assert coco.find(shapes_set / "val", "val") == shapes_set / "val" / "instances.json"
    assert coco.find(tmp_path, "val") is None
    with pytest.raises(ResnetsError, match="data folder not found"):
        coco.find(tmp_path / "nope", "train")
    with pytest.raises(ResnetsError, match="its categories"):
        coco.load(shapes_set / "val", classes=["a", "b"])
