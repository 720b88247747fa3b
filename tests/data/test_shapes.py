"""The generated shapes set (`resnets data shapes`): COCO instances whose boxes and polygons are the drawn pixels,
semantic masks that agree with them, the same files from the same seed, and nothing written over."""

import json

import numpy as np
import pytest
from PIL import Image

from resnets.data.shapes import CLASSES, generate
from resnets.errors import ResnetsError


def test_boxes_polygons_and_masks_are_the_drawn_shapes(shapes_set):
    from pycocotools import mask as coco_mask

    coco = json.loads((shapes_set / "train" / "instances.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(CLASSES)
    assert len(coco["images"]) == 16 and coco["annotations"]
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for im in coco["images"]:
        sem = np.asarray(Image.open(shapes_set / "train" / "masks" / (im["file_name"][7:-4] + ".png")))
        assert Image.open(shapes_set / "train" / im["file_name"]).size == (im["width"], im["height"])
        assert set(np.unique(sem)) <= {0, 1, 2, 3}
        drawn = np.zeros_like(sem, dtype=bool)
        for a in by_image.get(im["id"], []):
            m = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(a["segmentation"], 64, 64))).astype(bool)
            ys, xs = np.nonzero(m)
            x, y, w, h = a["bbox"]
            # the box is tight around the pixels (pycocotools rasterises polygons a little differently at corners)
            assert abs(xs.min() - x) <= 2 and abs(ys.min() - y) <= 2
            assert abs(xs.max() + 1 - (x + w)) <= 2 and abs(ys.max() + 1 - (y + h)) <= 2
            # the semantic mask holds this shape's class where the polygon is
            assert (sem[m] == a["category_id"]).mean() > 0.9
            assert abs(int(m.sum()) - a["area"]) <= 0.15 * a["area"] + 8
            drawn |= m
        # the rest is background (but for the polygons' edges, rasterised by PIL and pycocotools)
        assert (sem[~drawn] != 0).sum() <= 0.15 * drawn.sum() + 8
    assert (shapes_set / "classes.txt").read_text().split() == ["background", *CLASSES]


def test_the_same_seed_writes_the_same_set(tmp_path):
    a, b, c = (
        generate(tmp_path / n, train=3, val=1, size=48, seed=s, progress=False)
        for n, s in [("a", 1), ("b", 1), ("c", 2)]
    )
    assert a == b

    def same(x, y):
        return (tmp_path / x / "train" / "instances.json").read_bytes() == (
            tmp_path / y / "train" / "instances.json"
        ).read_bytes()

    assert same("a", "b") and not same("a", "c")
    assert (tmp_path / "a/train/images/000002.jpg").read_bytes() == (
        tmp_path / "b/train/images/000002.jpg"
    ).read_bytes()


def test_nothing_is_written_over_and_nothing_half_written(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    with pytest.raises(ResnetsError, match="not an empty folder"):
        generate(tmp_path / "full", train=2, val=1, size=48, progress=False)
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep"
    with pytest.raises(ResnetsError, match="--size"):
        generate(tmp_path / "new", train=2, val=1, size=8, progress=False)
    assert not (tmp_path / "new").exists()
    # an empty folder is filled, and a failure halfway leaves nothing behind
    (tmp_path / "empty").mkdir()
    generate(tmp_path / "empty", train=2, val=1, size=48, progress=False)
    assert (tmp_path / "empty" / "val" / "instances.json").is_file()
    from unittest import mock

    with mock.patch("resnets.data.shapes._image", side_effect=KeyboardInterrupt), pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "stopped", train=2, val=1, size=48, progress=False)
    assert not (tmp_path / "stopped").exists() and not list(tmp_path.glob(".stopped*"))


def test_crops_are_each_shape_cut_out_under_its_class(tmp_path):
    """--crops PX: every annotation once, under its category's folder, the square of 1.5 times its box around the
    box's centre (kept inside the image), PX x PX; without it no crops folder."""
    generate(tmp_path / "c", train=6, val=2, size=64, seed=3, crops=24, progress=False)
    generate(tmp_path / "none", train=2, val=1, size=48, progress=False)
    assert not (tmp_path / "none" / "crops").exists()
    for split in ("train", "val"):
        coco = json.loads((tmp_path / "c" / split / "instances.json").read_text())
        names = {c["id"]: c["name"] for c in coco["categories"]}
        crops = sorted((tmp_path / "c" / "crops" / split).glob("*/*.png"))
        assert {p.name for p in (tmp_path / "c" / "crops" / split).iterdir()} <= set(CLASSES)
        assert len(crops) == len(coco["annotations"]) > 0
        by_id = {a["id"]: a for a in coco["annotations"]}
        for path in crops:
            image, ann = path.stem.split("_")
            a = by_id[int(ann)]
            assert a["image_id"] == int(image) + 1 and names[a["category_id"]] == path.parent.name
            crop = Image.open(path).convert("RGB")
            assert crop.size == (24, 24)
            # an independent cut of the saved JPEG: the same picture but for the JPEG's loss on the background's noise
            # (compared at 6 x 6, where the noise averages out)
            x, y, w, h = a["bbox"]
            side = min(round(1.5 * max(w, h)), 64)
            left = min(max(round(x + w / 2 - side / 2), 0), 64 - side)
            top = min(max(round(y + h / 2 - side / 2), 0), 64 - side)
            src = Image.open(tmp_path / "c" / split / "images" / f"{image}.jpg").convert("RGB")
            ref = src.crop((left, top, left + side, top + side))
            small = [np.asarray(im.resize((6, 6), Image.Resampling.BOX), dtype=np.float32) for im in (crop, ref)]
            assert np.abs(small[0] - small[1]).mean() < 6
    with pytest.raises(ResnetsError, match="--crops"):
        generate(tmp_path / "bad", train=1, val=1, size=48, crops=4, progress=False)
    assert not (tmp_path / "bad").exists()
