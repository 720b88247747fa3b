"""Detection scores and boxes: COCO's mAP through torchmetrics equals pycocotools' own COCOeval on the same
detections (the independent reference), an oracle scores 100, and `detect` and `drawn` give boxes and pictures."""

import json

import pytest
import torch
from torch import nn

from resnets import detect
from resnets.data import coco


class Replay(nn.Module):
    """A 'detector' that answers each image with given detections, in the order the images come."""

    def __init__(self, answers):
        super().__init__()
        self.answers, self.calls = answers, 0
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        out = self.answers[self.calls : self.calls + len(images)]
        self.calls += len(images)
        return out


def _noisy(ds, seed=0):
    """Each true box moved a little, scored at random, plus a false box per image: a middling mAP."""
    g = torch.Generator().manual_seed(seed)
    answers = []
    for i in range(len(ds)):
        t = ds[i][1]
        n = len(t["boxes"])
        boxes = torch.cat([t["boxes"] + torch.randn(n, 4, generator=g) * 3, torch.tensor([[1.0, 1.0, 20.0, 20.0]])])
        labels = torch.cat([t["labels"], torch.tensor([1])])
        answers.append({"boxes": boxes.clamp(0, 64), "labels": labels, "scores": torch.rand(n + 1, generator=g)})
    return answers


def test_an_oracle_scores_100(shapes_set):
    ds = coco.load(shapes_set / "val")
    truth = [
        {"boxes": ds[i][1]["boxes"], "labels": ds[i][1]["labels"], "scores": torch.ones(len(ds[i][1]["boxes"]))}
        for i in range(len(ds))
    ]
    res = detect.coco_map(Replay(truth), ds, torch.device("cpu"), batch_size=4)
    assert res["map"] == 100.0 and res["map_50"] == 100.0 and res["n"] == 6
    assert set(res["per_class"]) <= {"circle", "square", "triangle"} and all(
        v in (100.0, -1.0) for v in res["per_class"].values()
    )


def test_the_scores_are_pycocotools_own(shapes_set, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ds = coco.load(shapes_set / "val")
    answers = _noisy(ds)
    ours = detect.coco_map(Replay(answers), ds, torch.device("cpu"), batch_size=4)
    # the same detections through pycocotools alone, from the file itself (category ids = labels here)
    gt = COCO(str(shapes_set / "val" / "instances.json"))
    dets = [
        {"image_id": rec.image_id, "category_id": int(c), "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(s)}
        for rec, a in zip(ds.records, answers)
        for (x0, y0, x1, y1), c, s in zip(a["boxes"].tolist(), a["labels"], a["scores"])
    ]
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert 5 < ours["map"] < 95  # a middling score, not a trivial one
    for k, stat in [("map", 0), ("map_50", 1), ("map_75", 2), ("mar_100", 8)]:
        assert ours[k] == pytest.approx(100 * ev.stats[stat], abs=1e-3), k


def _sized_set(root):
    """Two 240 x 240 images whose objects' COCO areas put them in another size range than their boxes do (a disc
    fills ~79% of its box): 40 x 40 boxes of area 900 (small; medium by the box), 100 x 100 ones of area 7,850
    (medium; large by the box), and some whose area agrees with their box."""
    from torchvision.io import write_png

    (root / "images").mkdir(parents=True)
    boxes = [
        [[10, 10, 40, 40, 900], [60, 10, 40, 40, 1600], [10, 120, 100, 100, 7850]],
        [[20, 20, 100, 100, 10000], [140, 140, 40, 40, 900], [140, 20, 20, 20, 400], [130, 80, 60, 50, 2300]],
    ]
    images, anns = [], []
    for i, objects in enumerate(boxes):
        write_png(torch.zeros(3, 240, 240, dtype=torch.uint8), str(root / "images" / f"{i}.png"))
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 240, "height": 240})
        for j, (x, y, w, h, area) in enumerate(objects):
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": 1 + j % 2, "bbox": [x, y, w, h],
                 "area": area, "iscrowd": 0}
            )  # fmt: skip
    categories = [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return root


def test_the_size_split_scores_are_cocoevals_with_the_files_areas(tmp_path):
    """map_small/medium/large size each object by its annotation's area, as COCOeval does (once they sized it by its
    box: 0.500 against COCOeval's 0.650 on a set like this)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ds = coco.load(_sized_set(tmp_path / "sized"))
    g = torch.Generator().manual_seed(1)
    answers = []
    for i in range(len(ds)):
        t = ds[i][1]
        n = len(t["boxes"])
        found = t["boxes"] + torch.randn(n, 4, generator=g) * 4  # some kept at IoU .5 only, some at .75
        extra = torch.tensor([[150.0, 150.0, 190.0, 190.0], [0.0, 0.0, 60.0, 60.0]])
        labels = torch.cat([t["labels"], torch.tensor([1, 2])])
        answers.append({"boxes": torch.cat([found, extra]), "labels": labels, "scores": torch.rand(n + 2, generator=g)})
    ours = detect.coco_map(Replay(answers), ds, torch.device("cpu"), batch_size=2)
    gt = COCO(str(tmp_path / "sized" / "instances.json"))
    dets = [
        {"image_id": rec.image_id, "category_id": int(c), "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(s)}
        for rec, a in zip(ds.records, answers)
        for (x0, y0, x1, y1), c, s in zip(a["boxes"].tolist(), a["labels"], a["scores"])
    ]
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    for k, stat in [("map", 0), ("map_small", 3), ("map_medium", 4), ("map_large", 5), ("mar_100", 8)]:
        assert ours[k] == pytest.approx(100 * ev.stats[stat], abs=1e-3), k
    assert len({ours["map_small"], ours["map_medium"], ours["map_large"]}) == 3  # each range holds objects


def test_detect_finds_boxes_in_files_and_names_the_unreadable(tiny_detector, shapes_set, tmp_path):
    from resnets.factory import load

    model = load(tiny_detector)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    files = sorted((shapes_set / "val" / "images").iterdir())[:3]
    res = detect.detect(model, [*map(str, files), str(tmp_path / "broken.jpg")], score=0.0, batch_size=2)
    assert [r["path"] for r in res] == [*map(str, files), str(tmp_path / "broken.jpg")]
    assert "error" in res[3] and all("error" not in r for r in res[:3])
    for r in res[:3]:
        assert (r["width"], r["height"]) == (64, 64)
        for b in r["boxes"]:
            x0, y0, x1, y1 = b["box"]
            assert 0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 64 and 0 <= b["score"] <= 1
            assert b["class"] == ["__background__", "circle", "square", "triangle"][b["label"]]
        assert [b["score"] for b in r["boxes"]] == sorted((b["score"] for b in r["boxes"]), reverse=True)
    high = detect.detect(model, [str(files[0])], score=0.99)
    assert all(b["score"] >= 0.99 for b in high[0]["boxes"])


def test_drawn_draws_each_box(shapes_set):
    path = str(sorted((shapes_set / "val" / "images").iterdir())[0])
    plain = detect.drawn(path, {"boxes": []})
    boxed = detect.drawn(path, {"boxes": [{"box": [10, 10, 40, 30], "class": "circle", "score": 0.9}]})
    changed = (plain != boxed).any(0)
    assert changed[10, 10:40].all() and changed[10:30, 10].all()  # the outline
    assert not changed[20:25, 20:30].any() or changed[20:25, 20:30].float().mean() < 0.5  # inside: a label at most
    assert not changed[45:, 45:].any()  # elsewhere untouched


def test_class_names_fall_back_to_numbers():
    m = Replay([])
    assert detect.class_names(m)[:3] == ["__background__", "class 1", "class 2"]
    assert json.dumps(detect.SCORES)


def _iou(a, b) -> float:
    from torchvision.ops import box_iou

    return float(box_iou(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))[0, 0])


class Brightest(nn.Module):
    """A 'detector' with torchvision's own transform (each image resized to min_size / max_size, boxes brought
    back to the image given): one box around the pixels brighter than half."""

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        from torchvision.models.detection.transform import GeneralizedRCNNTransform

        self.transform = GeneralizedRCNNTransform(min_size, max_size, [0.0] * 3, [1.0] * 3)
        self.w = nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, images):
        sizes = [tuple(im.shape[-2:]) for im in images]
        self.seen += [(im.dtype, tuple(im.shape)) for im in images]
        batch, _ = self.transform(images)
        outs = []
        for t, (h, w) in zip(batch.tensors, batch.image_sizes):
            ys, xs = torch.nonzero(t[0, :h, :w] > 0.5, as_tuple=True)
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            outs.append({"boxes": box, "labels": torch.tensor([1]), "scores": torch.tensor([1.0])})
        return self.transform.postprocess(outs, batch.image_sizes, sizes)


@pytest.fixture(scope="module")
def big_photo(tmp_path_factory):
    """A 3000 x 2000 JPEG: a white rectangle at (600, 400, 2400, 1600) on grey."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (3000, 2000), (60, 60, 60))
    ImageDraw.Draw(im).rectangle((600, 400, 2399, 1599), fill=(250, 250, 250))
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    im.save(path, quality=90)
    return path


def test_a_large_photo_is_seen_at_the_models_size_and_answered_in_its_own_coordinates(big_photo, monkeypatch):
    """A 3000 x 2000 JPEG reaches a detector of 200 / 300 as uint8 resized to 300 x 200 (never a float image of its
    full size): its box, in the full image's coordinates, is where the rectangle is, as the exact path (decoded at
    full size) and the old one (the whole image as float into the model) find it; drawn, the picture is the model's
    size with the box scaled to it."""
    from resnets.data.datasets import decode

    truth = [600, 400, 2400, 1600]
    model = Brightest(200, 300)
    got = detect.detect(model, [str(big_photo)], score=0.0)[0]
    assert model.seen == [(torch.float32, (3, 200, 300))]  # what the model's transform would resize it to
    assert (got["width"], got["height"]) == (3000, 2000) and _iou(got["boxes"][0]["box"], truth) > 0.97, got
    monkeypatch.setenv("RESNETS_EXACT_DECODE", "1")
    exact = detect.detect(model, [str(big_photo)], score=0.0)[0]
    with torch.no_grad():
        old = model([decode(big_photo, 3).float() / 255])[0]
    assert _iou(got["boxes"][0]["box"], exact["boxes"][0]["box"]) > 0.97
    assert _iou(got["boxes"][0]["box"], old["boxes"][0].tolist()) > 0.97
    monkeypatch.delenv("RESNETS_EXACT_DECODE")
    picture = detect.drawn(str(big_photo), got, (200, 300))
    plain = detect.drawn(str(big_photo), {"boxes": []}, (200, 300))
    assert picture.shape == (3, 200, 300)
    changed = (picture != plain).any(0)
    assert changed[40, 70:170].all() and changed[60:150, 60].all() and not changed[100:150, 100:150].any()


def test_a_trained_detector_answers_a_large_photo_as_the_exact_path_does(tiny_detector, big_photo, monkeypatch):
    """The tests' small detector (min_size 64) on the 3000 x 2000 JPEG: decoded at 1/8 and reduced, or decoded
    whole ($RESNETS_EXACT_DECODE), it finds the same top boxes, in the full image's coordinates."""
    from resnets.factory import load

    model = load(tiny_detector).eval()
    got = detect.detect(model, [str(big_photo)], score=0.0)[0]
    monkeypatch.setenv("RESNETS_EXACT_DECODE", "1")
    exact = detect.detect(model, [str(big_photo)], score=0.0)[0]
    assert (got["width"], got["height"]) == (3000, 2000) and got["boxes"]
    assert all(
        0 <= b["box"][0] <= b["box"][2] <= 3000 and 0 <= b["box"][1] <= b["box"][3] <= 2000 for b in got["boxes"]
    )
    assert max(b["box"][2] for b in got["boxes"]) > 64 * 4  # the full image's coordinates, not the model's
    # its top boxes: those of the first three scoring above the many it ties at its floor (trained 8 steps, it scores
    # most boxes alike; which of those come first is a tie), each one of the exact path's top five
    floor = got["boxes"][min(19, len(got["boxes"]) - 1)]["score"]
    for b in [b for b in got["boxes"][:3] if b["score"] > floor] or got["boxes"][:1]:
        assert any(b["class"] == e["class"] and _iou(b["box"], e["box"]) > 0.9 for e in exact["boxes"][:5]), b
