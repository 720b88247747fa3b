"""Segmentation scores and masks: mIoU from torchmetrics' confusion matrix equals torchmetrics' Jaccard index, an
oracle scores 100, and `segment` gives each file a class map at its own size, coloured and laid over the photo."""

import torch
from torch import nn

from resnets import segment
from resnets.data import masks


class Oracle(nn.Module):
    """A 'segmenter' that answers each image with the given maps, in order (as logits)."""

    def __init__(self, maps, k):
        super().__init__()
        self.maps, self.k, self.calls = maps, k, 0
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.stack(
            [
                nn.functional.one_hot(m, self.k).permute(2, 0, 1).float()
                for m in self.maps[self.calls : self.calls + len(x)]
            ]
        )
        self.calls += len(x)
        return {"out": out}


def test_an_oracle_scores_100_and_a_noisy_one_what_torchmetrics_says(shapes_set):
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    ds = masks.load(shapes_set, "val")
    truth = [ds[i][1] for i in range(len(ds))]
    perfect = segment.mask_scores(Oracle(truth, 4), ds, torch.device("cpu"), batch_size=4)
    assert perfect["miou"] == 100.0 and perfect["pixel_acc"] == 100.0 and perfect["n"] == 6
    g = torch.Generator().manual_seed(0)
    noisy = [
        torch.where(torch.rand(t.shape, generator=g) < 0.2, torch.randint(0, 4, t.shape, generator=g), t) for t in truth
    ]
    got = segment.mask_scores(Oracle(noisy, 4), ds, torch.device("cpu"), batch_size=4)
    jaccard, acc = MulticlassJaccardIndex(4, average="macro"), MulticlassAccuracy(4, average="micro")
    for p, t in zip(noisy, truth):
        jaccard.update(p.flatten(), t.flatten()), acc.update(p.flatten(), t.flatten())
    assert 20 < got["miou"] < 95
    assert abs(got["miou"] - 100 * jaccard.compute().item()) < 1e-3
    assert abs(got["pixel_acc"] - 100 * acc.compute().item()) < 1e-3
    assert set(got["per_class"]) == {"background", "circle", "square", "triangle"}


def test_segment_gives_each_file_a_map_at_its_size(tiny_segmenter, shapes_set, tmp_path):
    from resnets.factory import load

    model = load(tiny_segmenter)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    files = [str(p) for p in sorted((shapes_set / "val" / "images").iterdir())[:2]] + [str(tmp_path / "bad.png")]
    res = segment.segment(model, files, size=64)
    assert "error" in res[2] and all("error" not in r for r in res[:2])
    for r in res[:2]:
        assert r["mask"].shape == (64, 64) and r["mask"].dtype == torch.int64
        assert abs(sum(r["classes"].values()) - 1) < 1e-3 and set(r["classes"]) <= {
            "background",
            "circle",
            "square",
            "triangle",
        }


def test_colours_and_overlays():
    p = segment.palette(21)
    assert p.shape == (21, 3) and p[0].tolist() == [0, 0, 0] and len({tuple(c) for c in p.tolist()}) == 21
    assert p[1].tolist() == [128, 0, 0] and p[2].tolist() == [0, 128, 0]  # Pascal VOC's colours
    mask = torch.zeros(8, 8, dtype=torch.int64)
    mask[2:4, 2:4] = 1
    img = torch.full((3, 8, 8), 200, dtype=torch.uint8)
    over = segment.overlay(img, mask, 3)
    assert not torch.equal(over[:, 2:4, 2:4], img[:, 2:4, 2:4]) and torch.equal(over[:, 5:, 5:], img[:, 5:, 5:])
    assert segment.coloured(mask, 3)[:, 2, 2].tolist() == [128, 0, 0]


def test_a_large_photo_is_segmented_at_the_models_size(tiny_segmenter, shapes_set, tmp_path, monkeypatch):
    """A 3000 x 2000 JPEG is fed at the model's size (decoded small, resized in uint8) and its map kept at that
    size, with the photo's own width and height: nearly the map of the exact path (decoded whole); the overlay is
    drawn at the map's size. A panorama's longer side is at most twice `size`."""
    from PIL import Image

    from resnets.factory import load

    model = load(tiny_segmenter)
    shape = Image.open(sorted((shapes_set / "val" / "images").iterdir())[0]).convert("RGB")
    big = tmp_path / "big.jpg"
    shape.resize((3000, 2000), Image.BICUBIC).save(big, quality=92)
    (r,) = segment.segment(model, [str(big)], size=64)
    assert (r["width"], r["height"]) == (3000, 2000) and r["mask"].shape == (64, 96)
    assert abs(sum(r["classes"].values()) - 1) < 1e-3
    assert segment.overlaid(str(big), r, 4).shape == (3, 64, 96)
    monkeypatch.setenv("RESNETS_EXACT_DECODE", "1")
    (exact,) = segment.segment(model, [str(big)], size=64)
    assert (r["mask"] == exact["mask"]).float().mean() > 0.95
    assert segment.input_size(2000, 200, 64) == (13, 128) and segment.input_size(64, 64, 64) == (64, 64)
    assert segment.overlay(torch.zeros(3, 128, 192, dtype=torch.uint8), r["mask"], 4).shape == (3, 128, 192)
