"""Data: real photos in folders and CSV manifests, CIFAR archives in the official format, samplers, transforms."""

import pytest
import torch
from torchvision.io import write_png

from resnets import config as C
from resnets import data as D
from resnets.data.loader import Augmented, EvalBatches, make_loader
from resnets.data.transforms import eval_transform
from resnets.errors import ResnetsError


def _photos():
    from skimage import data as sk

    return {"astronaut": sk.astronaut(), "coffee": sk.coffee(), "chelsea": sk.chelsea(), "rocket": sk.rocket()}


@pytest.fixture
def folder(tmp_path):
    """Two classes of real photos (random crops of skimage's images), and one truncated JPEG."""
    from torchvision.io import encode_jpeg

    photos = _photos()
    g = torch.Generator().manual_seed(0)
    for cls, names in {"people": ["astronaut"], "things": ["coffee", "rocket"]}.items():
        d = tmp_path / "train" / cls
        d.mkdir(parents=True)
        for name in names:
            img = torch.from_numpy(photos[name]).permute(2, 0, 1).contiguous()
            for k in range(6):
                y, x = (torch.randint(0, 64, (2,), generator=g)).tolist()
                crop = img[:, y : y + 160, x : x + 160].contiguous()
                (d / f"{name}{k}.jpg").write_bytes(encode_jpeg(crop).numpy().tobytes())
    good = (tmp_path / "train" / "things" / "coffee0.jpg").read_bytes()
    (tmp_path / "train" / "things" / "broken.jpg").write_bytes(good[: len(good) // 3])
    write_png(torch.zeros(1, 40, 40, dtype=torch.uint8), str(tmp_path / "train" / "people" / "grey.png"))
    return tmp_path


def test_image_folder_skips_and_counts_a_corrupt_image(folder, tmp_path):
    cfg = C.resolve(
        overrides=dict(
            dataset="imagefolder",
            data=str(folder),
            model="resnet18",
            epochs=1,
            batch_size=8,
            train_crop=64,
            eval_crop=64,
            augment="rrc",
            progress=False,
            workers=0,
            out=str(tmp_path / "runs"),
            name="f",
            lr=0.01,
        )
    )
    from resnets.engine import train

    result = train(cfg)
    assert result["classes"] == ["people", "things"]
    # 20 files, 10% of each class held out for validation: the broken JPEG is skipped wherever it fell, and counted
    assert result["skipped_images"] + result["val_skipped_images"] == 1
    ds = D.image_folder(folder / "train")
    bad = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("broken.jpg")][0]
    with pytest.raises(D.BadSample):
        ds[bad]
    loader = make_loader(Augmented(ds, eval_transform(resize=64, crop=64), 0), EvalBatches(len(ds), 64), workers=1)
    batch = next(iter(loader))  # the bad sample crosses from the worker process
    assert len(batch.bad) == 1 and batch.bad[0][0].endswith("broken.jpg") and len(batch.labels) == len(ds) - 1
    assert batch.images.shape[1:] == (3, 64, 64)  # the grey PNG became 3 channels
    strict = make_loader(
        Augmented(ds, eval_transform(resize=64, crop=64), 0), EvalBatches(len(ds), 64), workers=0, strict=True
    )
    with pytest.raises(ResnetsError, match="broken.jpg"):
        next(iter(strict))


def test_csv_manifest(folder):
    rows = (
        ["path,label"]
        + [f"train/people/astronaut{k}.jpg,person" for k in range(3)]
        + [f"train/things/rocket{k}.jpg,object" for k in range(3)]
    )
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    ds = D.csv_manifest(folder / "m.csv")
    assert ds.classes == ["object", "person"] and len(ds) == 6 and ds[0][1] == 1
    assert ds[0][0].shape[0] == 3
    (folder / "bad.csv").write_text("path,label\nx.jpg\n")
    with pytest.raises(ResnetsError, match="path,label"):
        D.csv_manifest(folder / "bad.csv")
