"""Pascal VOC folders read as untrusted files: the same records as the COCO reader gives for the same boxes; a
file that is not VOC's XML refused in one line; each bad object named and skipped (or refused when strict);
difficult objects kept as crowd boxes; and a detector trains and is scored on the folder."""

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_DETECTOR, run_cli

from resnets.data import coco, voc
from resnets.errors import ResnetsError


def _xml(file_name, w, h, objects):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for n, d, (x0, y0, x1, y1) in objects
    )
    return f"<annotation><filename>{file_name}</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"


@pytest.fixture(scope="module")
def voc_set(shapes_set, tmp_path_factory):
    """The shapes set rewritten in VOC's layout (train and val ids, one XML per image)."""
    root = tmp_path_factory.mktemp("voc") / "VOC"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for split in ("train", "val"):
        data = json.loads((shapes_set / split / "instances.json").read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        ids = []
        for im in data["images"]:
            i = f"{split}{im['id']:04d}"
            ids.append(i)
            shutil.copy(shapes_set / split / im["file_name"], root / "JPEGImages" / f"{i}.jpg")
            objs = [(names[a["category_id"]], 0, (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]))
                    for a in data["annotations"] if a["image_id"] == im["id"]]  # fmt: skip
            (root / "Annotations" / f"{i}.xml").write_text(_xml(f"{i}.jpg", im["width"], im["height"], objs))
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def test_the_same_boxes_as_the_coco_reader(voc_set, shapes_set):
    v, c = voc.load(voc_set, "val"), coco.load(shapes_set / "val")
    assert v.classes == ["circle", "square", "triangle"] == c.classes  # sorted names = the category order here
    assert len(v) == len(c) == 6
    for a, b in zip(v.records, c.records):
        assert (a.boxes, a.labels, a.crowd, a.width, a.height) == (b.boxes, b.labels, b.crowd, b.width, b.height)
    img, t = v[0]
    assert img.shape == (3, 64, 64) and torch.equal(t["boxes"], c[0][1]["boxes"])


@pytest.mark.parametrize(
    "objects, needle",
    [
        ([("", 0, (1, 1, 5, 5))], "no <name>"),
        ([("circle", 0, (10, 10, 5, 20))], "has no size"),
        ([("circle", 0, (10, 10, 90, 20))], "lies outside the 64x64 image"),
        ([("circle", 0, (10, "x", 20, 20))], "no <bndbox> of 4 numbers"),
        ([("dragon", 0, (1, 1, 5, 5))], "class 'dragon' is not in classes.txt"),
    ],
)
def test_each_bad_object_is_named_and_skipped_or_refused_when_strict(voc_set, tmp_path, caplog, objects, needle):
    root = tmp_path / "VOC"
    shutil.copytree(voc_set, root)
    (root / "classes.txt").write_text("circle\nsquare\ntriangle\n")
    xml = root / "Annotations" / "val0001.xml"
    xml.write_text(_xml("val0001.jpg", 64, 64, [("square", 0, (2, 2, 12, 12)), *objects]))
    with caplog.at_level("WARNING", logger="resnets"):
        ds = voc.load(root, "val")
    assert needle in caplog.text and str(xml) in caplog.text and len(caplog.records) == 1
    assert ds.records[0].boxes == [[2.0, 2.0, 12.0, 12.0]]
    with pytest.raises(ResnetsError, match="strict data is on"):
        voc.load(root, "val", strict=True)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("<annotation><size>", "not XML"),
        ("<root/>", "not VOC's <annotation>"),
        ("<annotation><filename>a.jpg</filename></annotation>", "no <size> with a whole width and height"),
        (_xml("../../etc/passwd", 64, 64, []), "is not a file name inside JPEGImages/"),
        ('<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><annotation>&e;</annotation>', "a DTD"),
        ("<!DOCTYPE annotation><annotation/>", "a DTD"),  # refused where the DTD starts, entities or none
        ("<annotation>&e;</annotation>", "not XML"),  # an entity no DTD declares
        ("<annotation>" + "<a>" * 50_000 + "</a>" * 50_000 + "</annotation>", "nested deeper than 64"),
    ],
)
def test_a_file_that_is_not_a_voc_annotation_is_refused_in_one_line(voc_set, tmp_path, text, needle):
    root = tmp_path / "VOC"
    shutil.copytree(voc_set, root)
    (root / "Annotations" / "val0002.xml").write_text(text)
    with pytest.raises(ResnetsError, match=needle) as e:
        voc.load(root, "val", classes=["circle", "square", "triangle"])
    assert "\n" not in str(e.value)


def _laughs(levels: int, fanout: int) -> str:
    """An annotation whose <filename> expands to fanout**levels 'lol's from a few hundred bytes of entities."""
    ents = "".join(
        f'<!ENTITY l{k} "{(f"&l{k - 1};" if k else "lol") * (fanout if k else 1)}">' for k in range(levels + 1)
    )
    return f"<!DOCTYPE annotation [{ents}]>" + _xml(f"&l{levels};", 64, 64, [])


@pytest.mark.parametrize("levels, fanout", [(9, 10), (3, 10)], ids=["billion-laughs", "a-thousand-laughs"])
def test_entity_expansion_is_refused_in_one_line_before_it_expands(voc_set, tmp_path, levels, fanout):
    """Billion laughs (1e9 'lol's from 1 KB): expat's own guard trips only past 8 MB of expansion, so a file that
    multiplies itself less (the thousand) was parsed before; the DTD is refused where it starts, either way."""
    root = tmp_path / "VOC"
    shutil.copytree(voc_set, root)
    (root / "Annotations" / "val0002.xml").write_text(_laughs(levels, fanout))
    start = time.perf_counter()
    with pytest.raises(ResnetsError) as e:
        voc.load(root, "val", classes=["circle", "square", "triangle"])
    assert time.perf_counter() - start < 1 and "\n" not in str(e.value)
    assert str(e.value).endswith(
        "val0002.xml: a DTD (<!DOCTYPE ...>), which could declare entities; VOC's XML has none, refused"
    )


def test_an_image_with_more_objects_than_the_cap_is_named_and_skipped(voc_set, tmp_path, monkeypatch, caplog):
    root = tmp_path / "VOC"
    shutil.copytree(voc_set, root)
    xml = root / "Annotations" / "val0001.xml"
    xml.write_text(_xml("val0001.jpg", 64, 64, [("square", 0, (2, 2, 12, 12))] * 3))
    monkeypatch.setenv("RESNETS_MAX_OBJECTS", "2")
    with caplog.at_level("WARNING", logger="resnets"):
        ds = voc.load(root, "val", classes=["circle", "square", "triangle"])
    assert f"{xml}: 3 objects, more than the 2 an image may have (RESNETS_MAX_OBJECTS raises it)" in caplog.text
    assert "val0001.jpg" not in [Path(r.path).name for r in ds.records] and all(len(r.boxes) <= 2 for r in ds.records)
    with pytest.raises(ResnetsError, match="3 objects.*strict data is on"):
        voc.load(root, "val", strict=True, classes=["circle", "square", "triangle"])


def test_difficult_objects_missing_files_and_ids(voc_set, tmp_path, monkeypatch, caplog):
    root = tmp_path / "VOC"
    shutil.copytree(voc_set, root)
    (root / "Annotations" / "val0001.xml").write_text(_xml("val0001.jpg", 64, 64, [("circle", 1, (2, 2, 12, 12))]))
    (root / "Annotations" / "val0003.xml").unlink()
    with caplog.at_level("WARNING", logger="resnets"):
        ds = voc.load(root, "val", classes=["circle", "square", "triangle"])
    assert ds.records[0].crowd == [1] and len(ds) == 5 and "val0003.xml: missing" in caplog.text
    monkeypatch.setattr(voc, "MAX_XML_BYTES", 10)
    with pytest.raises(ResnetsError, match="more than the 10 a VOC annotation may have"):
        voc.load(root, "val", classes=["circle"])
    monkeypatch.setattr(voc, "MAX_LIST_BYTES", 1000)  # train.txt is 160 bytes
    (root / "classes.txt").write_text("circle\n" * 300)
    with pytest.raises(ResnetsError, match="classes.txt is larger than 1,000 bytes"):
        voc.load(root, "train")
    (root / "ImageSets" / "Main" / "train.txt").write_text("train0000\n" * 101)
    with pytest.raises(ResnetsError, match="train.txt is larger than 1,000 bytes"):
        voc.load(root, "train")
    (root / "ImageSets" / "Main" / "val.txt").write_text("../escape\n")
    with pytest.raises(ResnetsError, match="is not an image id"):
        voc.load(root, "val", classes=["circle"])
    with pytest.raises(ResnetsError, match="no Annotations/ folder"):
        voc.load(tmp_path, "train")


def test_a_detector_trains_and_is_scored_on_a_voc_folder(voc_set, tmp_path):
    args = [a if a != "coco" else "voc" for a in TINY_DETECTOR]
    code, out, err = run_cli(
        "train", *args, "--data", voc_set, "--epochs", "1", "--limit-train", "8", "--out", tmp_path, "--name", "v"
    )
    assert code == 0, err
    assert "box mAP" in out and "on 6 validation images" in out
    code, out, err = run_cli("eval", "--weights", tmp_path / "v", "--data", voc_set, "--out", tmp_path / "ev")
    assert code == 0 and "box mAP" in out, err
    code, _, err = run_cli(
        "train",
        *[a if a != "fasterrcnn_resnet50_fpn" else "maskrcnn_resnet50_fpn" for a in args],
        "--data",
        voc_set,
        "--out",
        tmp_path,
    )
    assert code == 2 and "holds boxes, not instance masks" in err
