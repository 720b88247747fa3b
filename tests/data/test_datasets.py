"""Data: real photos in folders and CSV manifests, CIFAR archives in the official format, samplers, transforms."""

import numpy as np
import pytest
import torch
from conftest import cifar_archive
from torchvision.io import write_png
from torchvision.transforms import v2

from resnets import config as C
from resnets import data as D
from resnets.data.loader import Augmented, Collate, EvalBatches, TrainBatches, make_loader
from resnets.data.transforms import batch_mix, eval_transform, ten_crop_transform, train_transform
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


def test_cifar10_from_an_archive_in_the_official_format(tmp_path):
    arch = tmp_path / "cifar-10-python.tar.gz"
    cifar_archive(arch)
    x, y, classes = D.sources.load_cifar("cifar10", "train", arch)
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.uint8 and len(y) == 100 and classes[3] == "c3"
    xt, yt, _ = D.sources.load_cifar("cifar10", "test", tmp_path)  # a folder holding the archive works too
    assert xt.shape == (20, 3, 32, 32) and yt[:10].tolist() == list(range(10))
    with pytest.raises(ResnetsError, match="not found"):
        D.sources.load_cifar("cifar100", "train", tmp_path / "none.tar.gz")


def test_train_batches_split_the_global_batch_over_ranks_and_resume():
    one = list(TrainBatches(100, 8, seed=3))
    parts = [list(TrainBatches(100, 8, seed=3, rank=r, world=2)) for r in range(2)]
    assert len(one) == 12
    for b in range(12):
        assert sorted(parts[0][b] + parts[1][b]) == sorted(one[b])
    s = TrainBatches(100, 8, seed=3)
    s.set_epoch(0, start=5)
    assert list(s) == one[5:]
    s.set_epoch(1)
    assert [i % 100 for i in next(iter(s))] != [i % 100 for i in one[0]]


def test_eval_batches_cover_every_sample_once():
    seen = [i for r in range(3) for b in EvalBatches(10, 4, r, 3) for i in b]
    assert sorted(seen) == list(range(10))


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    ds = D.synthetic(16, 3, 32)
    tf = train_transform("paper-cifar", crop=32, mean=(0.5, 0.5, 0.5), random_erasing=0.5)
    a, b = Augmented(ds, tf, 0), Augmented(ds, tf, 0)
    assert torch.equal(a[5][0], b[5][0])
    assert not all(torch.equal(a[i][0], a[16 + i][0]) for i in range(16))  # another epoch, other crops


def test_transform_shapes():
    img = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    assert train_transform("paper-imagenet", crop=224, mean=(0.5,) * 3)(img).shape == (3, 224, 224)
    assert train_transform("rrc", crop=176, mean=(0.5,) * 3, auto_augment="trivial")(img).shape == (3, 176, 176)
    assert eval_transform(resize=232, crop=224)(img).shape == (3, 224, 224)
    assert ten_crop_transform(resize=256, crop=224)(img).shape == (10, 3, 224, 224)


def test_mixup_and_cutmix_give_soft_targets():
    mix = batch_mix(10, mixup=0.2, cutmix=1.0)
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8)
    _, t = mix(x, y)
    assert t.shape == (8, 10) and torch.allclose(t.sum(1), torch.ones(8))
    assert batch_mix(10, 0, 0) is None


def test_stratified_split_holds_out_each_class():
    targets = [0] * 50 + [1] * 30
    keep, held = D.stratified_split(targets, 0.2, seed=1)
    assert len(held) == 16 and sorted(keep + held) == list(range(80))
    assert sum(targets[i] for i in held) == 6  # 20% of class 1
    assert D.stratified_split(targets, 0.2, seed=1) == (keep, held)


def test_collate_counts_bad_samples():
    c = Collate()
    batch = c([(torch.zeros(1, 2, 2, dtype=torch.uint8), 1), D.BadSample("x.jpg", "truncated")])
    assert batch.images.shape == (1, 1, 2, 2) and batch.bad == [("x.jpg", "truncated")]


def test_one_dataset_registry_feeds_the_config_the_cli_and_evaluation(tmp_path):
    from conftest import run_cli

    from resnets.cli import build_parser
    from resnets.config import RULES
    from resnets.data.registry import DATASETS, get_dataset

    assert RULES["dataset"].choices == tuple(DATASETS)
    eval_choices = next(
        a for a in build_parser()._subparsers._group_actions[0].choices["eval"]._actions if a.dest == "dataset"
    ).choices
    assert set(eval_choices) == {n for n, s in DATASETS.items() if s.kind != "synthetic"}
    code, out, _ = run_cli("data", "--list")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == list(DATASETS)
    with pytest.raises(ResnetsError, match="did you mean cifar10"):
        get_dataset("cifar-10")
    fm = get_dataset("fashion-mnist")
    assert (fm.channels, fm.native, fm.mean) == (1, 28, (0.2860,))
    # image files: train/ and val/, or a single folder (evaluated whole, or split for training)
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "f" / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / "f" / split / c / "x.png")
    spec = get_dataset("imagefolder")
    assert spec.load("test", str(tmp_path / "f")).samples[0][0].startswith(str(tmp_path / "f" / "val"))
    assert spec.load("test", str(tmp_path / "f" / "train")) is None
    assert spec.evaluation(str(tmp_path / "f" / "train")).classes == ["a", "b"]


def test_eval_resize_applies_when_resize_equals_crop():
    # timm's crop_pct 1.0 configs give resize == crop: a photo is resized, not cropped raw
    from skimage import data as skdata

    img = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1)  # 300 x 451
    out = eval_transform(resize=224, crop=224)(img)
    ref = v2.CenterCrop(224)(v2.Resize(224, antialias=True)(img))
    assert torch.equal(out, ref) and not torch.equal(out, v2.CenterCrop(224)(img))
    small = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    assert torch.equal(eval_transform(resize=28, crop=28)(small), small)


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket"])
def test_nearest_resize_is_pillows(name):
    # "nearest" means Pillow's (Keras' load_img, timm): torchvision's NEAREST samples other pixels
    from PIL import Image
    from skimage import data as skdata

    from resnets.data.transforms import NearestResize

    a = getattr(skdata, name)()
    img = torch.from_numpy(a).permute(2, 0, 1)
    for size in [(224, 224), (299, 256), (180, 224)]:
        ref = np.asarray(Image.fromarray(a).resize(size[::-1], Image.NEAREST))
        assert np.array_equal(NearestResize(size)(img).permute(1, 2, 0).numpy(), ref)
    squashed = eval_transform(resize=256, crop=224, interpolation="nearest", crop_mode="squash")(img)
    ref = np.asarray(Image.fromarray(a).resize((256, 256), Image.NEAREST))[16:240, 16:240]
    assert np.array_equal(squashed.permute(1, 2, 0).numpy(), ref)


def test_downloads_are_checked_and_leave_nothing_behind(tmp_path, monkeypatch):
    """The dataset download (torchvision's downloader, behind our temporary folder) from a real HTTP server on this
    machine: a good file lands; one failing its md5 and an unreachable one are one clear error, nothing left."""
    import functools
    import hashlib
    import http.server
    import threading

    from resnets.data.sources import fetch_file
    from resnets.errors import ResnetsError

    served = tmp_path / "served"
    served.mkdir()
    payload = bytes(range(256)) * 40
    (served / "train-images-idx3-ubyte.gz").write_bytes(payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/train-images-idx3-ubyte.gz"
    dest = tmp_path / "data" / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    try:
        fetch_file(url, dest, hashlib.md5(payload).hexdigest())
        assert dest.read_bytes() == payload
        other = dest.with_name("other.gz")
        with pytest.raises(ResnetsError, match="failed its checksum"):
            fetch_file(url, other, "0" * 32)
        with pytest.raises(ResnetsError, match="cannot download"):
            fetch_file(url.replace("train-images", "missing"), other, "0" * 32)
        assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no temporary, no bad file
        # the command's path (`resnets data fashion-mnist --download`), its four files from this server
        from resnets.data import sources

        files = {f"{n}.gz": payload[: 100 * (i + 1)] for i, n in enumerate(("a", "b", "c", "d"))}
        for name, data in files.items():
            (served / name).write_bytes(data)
        monkeypatch.setattr(sources, "find_fashion_mnist", lambda root=None: None)  # not the machine's copy
        monkeypatch.setattr(sources, "FASHION_URL", url.rsplit("/", 1)[0] + "/")
        monkeypatch.setattr(sources, "FASHION_FILES", {n: hashlib.md5(d).hexdigest() for n, d in files.items()})
        monkeypatch.setenv("RESNETS_DATA", str(tmp_path / "home"))
        got = sources.fetch_fashion_mnist(download=True)
        assert {p.name: p.read_bytes() for p in got.iterdir()} == files
    finally:
        server.shutdown()
