"""Hugging Face image datasets (data/hf.py, `--dataset hf`): a save_to_disk folder and a folder of the Hub's parquet
files read as their stored image bytes (equal, pixel for pixel, to decoding those bytes independently) with the
ClassLabel names as classes; training, `resnets eval` (finding the kind by itself) and loader workers work on them;
what is not an image dataset, a Hub name not in the cache when offline, and an unreadable row are one line or a
named bad sample."""

import io
import json

import numpy as np
import pytest
import torch
from conftest import one_line_error, run_cli
from PIL import Image

from resnets.data import hf
from resnets.data.datasets import BadSample
from resnets.errors import ResnetsError

datasets = pytest.importorskip("datasets")
CLASSES = ["ant", "bee", "cow"]


def _png(rng, c: int) -> bytes:
    h, w = rng.integers(20, 40, 2)
    pixels = (rng.random((h, w, 3)) * 60 + c * 80).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _split(rng, n: int, broken: int | None = None):
    labels = [i % 3 for i in range(n)]
    images = [{"bytes": _png(rng, c), "path": None} for c in labels]
    if broken is not None:
        images[broken] = {"bytes": b"\x89PNG\r\n\x1a\n not really", "path": None}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.fixture(scope="module")
def hf_sets(tmp_path_factory):
    """The same 30 + 9 images saved by save_to_disk and as the Hub's parquet layout; a training row is broken."""
    root = tmp_path_factory.mktemp("hf")
    rng = np.random.default_rng(0)
    dd = datasets.DatasetDict({"train": _split(rng, 30, broken=4), "test": _split(rng, 9)})
    dd.save_to_disk(str(root / "saved"))
    (root / "hub" / "data").mkdir(parents=True)
    for name, split in dd.items():
        split.to_parquet(str(root / "hub" / "data" / f"{name}-00000-of-00001.parquet"))
    return root, dd


def test_rows_are_their_image_bytes_and_labels(hf_sets):
    root, dd = hf_sets
    for data in (root / "saved", root / "hub"):
        train, val = hf.load(str(data), "train"), hf.load(str(data), "test")
        assert train.classes == CLASSES and len(train) == 30 and len(val) == 9
        assert train.targets == dd["train"]["label"] and val.targets == dd["test"]["label"]
        raw = dd["test"].cast_column("image", datasets.Image(decode=False))
        for i in range(len(val)):  # an independent decode of the same bytes
            ref = np.array(Image.open(io.BytesIO(raw[i]["image"]["bytes"])).convert("RGB"))
            assert torch.equal(val[i][0], torch.from_numpy(ref).permute(2, 0, 1))
        with pytest.raises(BadSample, match=r"\[train\]#4"):  # the broken row, named by its split and row
            train[4]
        part = train.subset([5, 1]).relabel({0: 2, 1: 1, 2: 0}, CLASSES[::-1])
        assert part.targets == [0, 1] and torch.equal(part[0][0], train[5][0])


def test_training_evaluating_and_loader_workers(hf_sets, tmp_path):
    root, _ = hf_sets
    args = ["--model", "resnet8", "--dataset", "hf", "--data", root / "saved", "--train-crop", 32, "--eval-crop", 32]
    args += [
        "--eval-resize",
        32,
        "--batch-size",
        10,
        "--epochs",
        1,
        "--no-progress",
        "--out",
        tmp_path,
        "--amp",
        "none",
    ]
    code, out, err = run_cli("train", *args, "--workers", 2, "--name", "r")
    assert code == 0, err
    assert "on 9 validation images" in out and "#4" in err  # the broken row named (skipped), the run went on
    ev = json.loads((tmp_path / "r" / "eval.json").read_text())
    code, out, err = run_cli("eval", "--weights", tmp_path / "r" / "model.safetensors", "--data", root / "saved")
    assert code == 0, err
    assert f"top-1 {ev['top1']:.2f}%" in out and "(9 images)" in out


def test_what_cannot_be_read_is_one_line(hf_sets, tmp_path, monkeypatch):
    root, dd = hf_sets
    plain = dd["test"].cast_column("label", datasets.Value("int64"))
    plain.save_to_disk(str(tmp_path / "plain"))
    monkeypatch.setenv("RESNETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty cache
    for data, needle in (
        (tmp_path / "plain", "needs an Image column and a ClassLabel column; it has image (Image), label (Value)"),
        ("someone/nothing-cached", "cannot open the dataset someone/nothing-cached"),
        (tmp_path / "nowhere" / "x", "not a saved dataset, a folder of parquet/arrow files or a Hub name"),
    ):
        with pytest.raises(ResnetsError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            hf.load(str(data), "train")
        code, _, err = run_cli("train", "--dataset", "hf", "--data", data, "--out", tmp_path / "runs")
        one_line_error(code, err, needle)
    assert not (tmp_path / "runs").exists()
    other = datasets.DatasetDict({"train": dd["test"]})
    other.save_to_disk(str(tmp_path / "trainonly"))
    assert hf.load(str(tmp_path / "trainonly"), "test") is None  # no held-out split: none, not an error
    with pytest.raises(ResnetsError, match="classes not in the training set: cow"):
        hf.load(str(root / "saved"), "test", classes=["ant", "bee"])


def test_a_hugging_face_dataset_is_sharded_image_for_image(hf_sets, tmp_path):
    """`resnets data shard` takes a saved folder or hf:DIR: the stored bytes and labels, the broken row left out."""
    from resnets.data import shards

    root, _ = hf_sets
    for src, out in ((root / "saved", tmp_path / "a"), (f"hf:{root / 'hub'}", tmp_path / "b")):
        code, printed, err = run_cli("data", "shard", src, "--out", out, "--no-progress")
        assert code == 0, err
        assert "29 train, 9 val images" in printed and "#4" in printed  # the broken row named, not written
        ref, got = hf.load(str(root / "saved"), "train"), shards.load(str(out), "train")
        assert got.classes == CLASSES and got.targets == [t for i, t in enumerate(ref.targets) if i != 4]
        kept = [i for i in range(len(ref)) if i != 4]
        assert all(got.read(j) == ref.read(i) for j, i in enumerate(kept))
