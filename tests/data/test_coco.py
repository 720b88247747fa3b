"""COCO folders read as untrusted files: a file that breaks the schema is refused in one line before any image is
read; each bad annotation kind is named with its file and skipped (or refused with strict data); images without
boxes kept; boxes and masks follow the pixels through the augmentations, the same from the same seed."""

import dataclasses
import itertools
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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
        # each of these raised from pycocotools or Python itself before (TypeError, OverflowError, IndexError)
        (lambda d: d["annotations"][0].update(id="seven"), "its id is not a whole number"),
        (lambda d: d["annotations"][0].update(id=[1]), "its id is not a whole number"),
        (lambda d: d["annotations"][0].update(image_id=[1]), "image id [1] is not in the file"),
        (lambda d: d["annotations"][0].update(image_id=1.5), "image id 1.5 is not in the file"),
        (lambda d: d["annotations"][0].update(category_id=[1]), "unknown category id [1]"),
        (lambda d: d["annotations"][0].update(category_id="1"), "unknown category id '1'"),
        (lambda d: d["annotations"][0].update(bbox=[5, 5, 10**400, 10]), "not a finite number"),
        (lambda d: d["annotations"][0].update(bbox=[5, 5, float("nan"), 10]), "not a finite number"),
        (lambda d: d["annotations"][0].update(segmentation=[]), "an empty list of polygons"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 1, "a", 2, 3, 3]]), "a point that is not a number"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 1, 10**400, 2, 3, 3]]), "not a number"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 1, 2, 2], [1, 1, 2, 2]]), "at least 3 x, y points"),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [64, 64], "counts": "0000"}),
            "an RLE mask of 0 pixels",  # compressed, but sums short: pycocotools decodes stray memory
        ),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [64, 64], "counts": "P"}),
            "not COCO's run-length code",  # a run cut off (its 'more' bit set on the last character)
        ),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [64, 64], "counts": "~~é"}),
            "not COCO's run-length code",
        ),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [64, 64], "counts": ["4096"]}),
            "neither a string nor whole numbers",
        ),
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
    monkeypatch.setenv("RESNETS_MAX_ANNOTATION_MB", "0.001")
    with pytest.raises(ResnetsError, match=r"2,002 bytes is more than the 1,048 allowed \(RESNETS_MAX_ANNOTATION_MB"):
        coco.load(tmp_path)
    monkeypatch.setenv("RESNETS_MAX_ANNOTATION_MB", "lots")
    with pytest.raises(ResnetsError, match="RESNETS_MAX_ANNOTATION_MB='lots': a positive number"):
        coco.load(tmp_path)


def test_brackets_nested_deeper_than_coco_nests_are_refused_in_one_line_before_parsing(tmp_path):
    """200 KB of '[' raised RecursionError out of json.loads; valid JSON 65 deep is refused too (the scan is the
    bound, not the parser's recursion limit), while brackets and escaped quotes inside strings are not counted."""
    file = tmp_path / "instances.json"
    for text in ("[" * 200_000, '{"images": ' + "[" * 65 + "]" * 65 + "}"):
        file.write_text(text)
        start = time.perf_counter()
        with pytest.raises(ResnetsError) as e:
            coco.load(tmp_path)
        assert time.perf_counter() - start < 1
        assert "brackets nested deeper than 64" in str(e.value) and "\n" not in str(e.value)
    name = 'a \\"' + "[" * 100  # a backslash, a quote, then brackets: all inside the string
    file.write_text(json.dumps({"images": [], "categories": [{"id": 1, "name": name}]}))
    assert coco.load(tmp_path).classes == [name]
    assert coco.json_depth(b'{"a": [[1], "]]]", {"b": "\\\\"}]}') == 3


def test_json_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    (tmp_path / "instances.json").write_bytes('{"images": []}'.encode("utf-16"))
    with pytest.raises(ResnetsError, match="UTF-16 text; JSON files are UTF-8"):
        coco.load(tmp_path)


def _runs(mask: torch.Tensor) -> list[int]:
    """COCO's uncompressed RLE of a (H, W) mask: run lengths down the columns, zeros first."""
    flat = mask.T.reshape(-1).tolist()
    runs = [len(list(g)) for _, g in itertools.groupby(flat)]
    return [0, *runs] if flat[0] else runs


def test_compressed_rle_reads_as_the_same_mask_as_uncompressed_rle_and_the_polygon(tmp_path, shapes_set):
    """COCO's crowd annotations may give counts as a string; pycocotools' frPyObjects raised ValueError on it."""
    from pycocotools import mask as coco_mask

    want = coco.load(shapes_set / "val", masks=True)[0][1]["masks"][0]  # object 1 of image 1, from its polygon
    raw = json.loads((shapes_set / "val" / "instances.json").read_text())
    first = next(k for k, a in enumerate(raw["annotations"]) if a["image_id"] == raw["images"][0]["id"])
    text = coco_mask.encode(np.asfortranarray(want.numpy()))["counts"].decode()
    assert coco.rle_counts(text) == _runs(want) and want.sum() > 0
    for counts in (text, _runs(want)):
        seg = {"size": [64, 64], "counts": counts}
        root = _folder(
            tmp_path / str(type(counts)),
            shapes_set,
            lambda d: d["annotations"][first].update(segmentation=seg, iscrowd=1),
        )
        img, t = coco.load(root, masks=True)[0]
        assert torch.equal(t["masks"][0], want) and t["iscrowd"][0] == 1


def _crowded_folder(root, objects: int, polygons: int):
    """A 640 x 480 image holding `objects` objects of one small triangle each, and another holding one object of
    `polygons` small triangles (a 1.1 MB instances.json for 5,000 of each)."""
    root.mkdir(parents=True)
    for name in ("crowded.png", "one.png"):
        Image.new("RGB", (640, 480)).save(root / name)
    tri = lambda k: [k % 600 + 1, k // 600 * 40 + 1, k % 600 + 9, k // 600 * 40 + 1, k % 600 + 5, k // 600 * 40 + 9]  # noqa: E731
    anns = [{"id": k + 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8], "segmentation": [tri(k)]}
            for k in range(objects)]  # fmt: skip
    anns.append({"id": objects + 1, "image_id": 2, "category_id": 1, "bbox": [1, 1, 600, 400],
                 "segmentation": [tri(k) for k in range(polygons)]})  # fmt: skip
    (root / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "crowded.png", "width": 640, "height": 480},
                   {"id": 2, "file_name": "one.png", "width": 640, "height": 480}],
        "categories": [{"id": 1, "name": "tri"}], "annotations": anns,
    }))  # fmt: skip
    return root


def test_an_image_of_5000_polygons_is_named_and_skipped_and_never_a_5000_mask_tensor(tmp_path, caplog):
    """5,000 polygons on one 640 x 480 image: as 5,000 objects, over RESNETS_MAX_OBJECTS (1,000), the image is
    named and skipped at load (it made a (5000, 480, 640) mask tensor, 1.5 GB, and decoded each); as one object's
    polygons, they are merged before decoding into one mask. Measured in a process of its own: a sample made from
    the crowded record anyway (not through load) is a BadSample, and the process's peak memory hardly grows."""
    root = _crowded_folder(tmp_path / "set", 5000, 5000)
    with caplog.at_level("WARNING", logger="resnets"):
        ds = coco.load(root, masks=True)
    assert [Path(r.path).name for r in ds.records] == ["one.png"]
    assert "crowded.png: 5,000 objects, more than the 1,000 an image may have (RESNETS_MAX_OBJECTS" in caplog.text
    with pytest.raises(ResnetsError, match="5,000 objects.*strict data is on"):
        coco.load(root, masks=True, strict=True)
    script = textwrap.dedent(f"""
        import json, resource
        from pathlib import Path
        from resnets.data import coco
        from resnets.data.datasets import BadSample

        root = Path({str(root)!r})
        ds = coco.load(root, masks=True)
        coco.transforms("none"), ds[0]  # imports and first-call allocations out of the measure
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        img, t = ds[0]
        raw = json.loads((root / "instances.json").read_text())["annotations"][:5000]
        rec = coco.Record(str(root / "crowded.png"), 1, 640, 480, [[1, 1, 9, 9]] * 5000, [1] * 5000, [0] * 5000,
                          [a["segmentation"] for a in raw])
        bad = coco.Safe(coco.CocoDetection([rec], ["tri"], root, masks=True))[0]
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(json.dumps({{"masks": list(t["masks"].shape), "dtype": str(t["masks"].dtype), "grew_mb": grew,
                           "bad": bad.reason if isinstance(bad, BadSample) else None}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["masks"] == [1, 480, 640] and got["dtype"] == "torch.uint8"
    assert "5,000 objects, more than the 1,000" in got["bad"]
    assert got["grew_mb"] < 100, got  # the old way: 1,500 MB of masks and more


def test_the_object_cap_and_the_mask_budget_are_stated_and_settable(tmp_path, shapes_set, monkeypatch, caplog):
    """Under the defaults, 900 objects of 640 x 480 are within the object cap but their masks are 264 MB, over the
    256 MB budget: skipped with masks, kept without. Both limits move with their environment variables."""
    root = _crowded_folder(tmp_path / "set", 900, 3)
    with caplog.at_level("WARNING", logger="resnets"):
        assert len(coco.load(root, masks=True)) == 1
    assert "crowded.png: 900 masks of 640x480 take 264 MB, more than the 256 MB allowed" in caplog.text
    assert len(coco.load(root)) == 2 and len(coco.load(root)[0][1]["boxes"]) == 900
    monkeypatch.setenv("RESNETS_MAX_MASK_MB", "300")
    assert len(coco.load(root, masks=True)) == 2
    monkeypatch.setenv("RESNETS_MAX_OBJECTS", "2")
    counts = [len(r.boxes) for r in coco.load(shapes_set / "val").records]
    assert counts and max(counts) <= 2 and len(counts) < 6


def test_a_mask_that_cannot_be_made_is_a_named_bad_sample(tmp_path, shapes_set, monkeypatch):
    """Records made past load's checks: pycocotools' error is a BadSample naming the object, not a ValueError out
    of the loader; and polygons whose rasterising would take more than the budget are refused before it starts
    (a 0.5 MB polygon zigzagging across a 2000 x 2000 image took 2 GB in pycocotools)."""
    ds = coco.load(shapes_set / "val", masks=True)
    rec = ds.records[0]
    broken = dataclasses.replace(rec, segmentations=[{"size": [64, 64], "counts": ["many"]}] + rec.segmentations[1:])
    bad = coco.Safe(coco.CocoDetection([broken], ds.classes, ds.source, masks=True))[0]
    assert (
        isinstance(bad, BadSample) and bad.kind == "corrupt_image" and "object 1's mask cannot be decoded" in bad.reason
    )
    zigzag = [v for k in range(2000) for v in (0 if k % 2 else 63, k * 63 / 2000)]
    spiky = dataclasses.replace(rec, segmentations=[[zigzag]] + rec.segmentations[1:])
    assert coco.polygon_bytes([zigzag]) > 2**20  # 1999 edges across the image, 5 points a pixel, 16 bytes each
    monkeypatch.setenv("RESNETS_MAX_MASK_MB", "1")
    bad = coco.Safe(coco.CocoDetection([spiky], ds.classes, ds.source, masks=True))[0]
    assert (
        isinstance(bad, BadSample) and "rasterising its polygons takes 10 MB, more than the 1 MB allowed" in bad.reason
    )


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
