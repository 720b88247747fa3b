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
