"""Hostile inputs and outputs: images that used to end a whole command (animations, 16-bit, decompression bombs,
EXIF-rotated photos), outputs that replaced what they should not, damaged model files and ONNX caches, names with
control characters, and environment errors. Each is one named, skipped file or one line with a non-zero exit."""

import csv
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from conftest import _gif_frames_on_a_canvas, run_cli
from PIL import Image

import resnets
from resnets.data import datasets as D
from resnets.data.datasets import BadSample, decode, read_header
from resnets.weights import Preprocessing

CLASSES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    torch.manual_seed(0)
    m = resnets.create_model("resnet20", num_classes=3).eval()
    path = tmp_path_factory.mktemp("m") / "r20.safetensors"
    resnets.save(
        m, path, class_names=CLASSES, preprocessing=Preprocessing(36, 32, "bilinear", (0.5,) * 3, (0.25,) * 3).to_dict()
    )
    return path


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height pixels and holds no pixel data at all: refusing it proves the
    limit is read from the header, before any decoding."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def _animated_gif(path):
    frames = [Image.new("RGB", (24, 16), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _png16(path):
    a = np.zeros((16, 24), dtype=np.uint16)
    a[:, :12] = 65535
    a[:, 12:] = 32768
    Image.fromarray(a).save(path)  # mode I;16


def _portrait_jpeg(path):
    """Stored 40 wide and 20 high, with EXIF orientation 6: shown upright it is 20 wide and 40 high; its left
    half (as stored) is white, which ends up on top."""
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(path, exif=exif.tobytes(), quality=95)


def test_animation_16_bit_and_exif_orientation_decode(tmp_path):
    _animated_gif(tmp_path / "a.gif")
    x = decode(tmp_path / "a.gif")
    assert x.shape == (3, 16, 24) and x.dtype == torch.uint8
    assert x[0].float().mean() > 250 and x[2].float().mean() < 5  # the first frame (red), not the blue second

    _png16(tmp_path / "deep.png")
    for channels in (3, 1):
        x = decode(tmp_path / "deep.png", channels)
        assert x.shape == (channels, 16, 24) and x.dtype == torch.uint8
        assert int(x[0, 0, 0]) == 255 and abs(int(x[0, 0, 20]) - 128) <= 1  # scaled, not clipped to 255

    _portrait_jpeg(tmp_path / "portrait.jpg")
    assert read_header((tmp_path / "portrait.jpg").read_bytes(), "portrait.jpg").orientation == 6
    x = decode(tmp_path / "portrait.jpg")
    assert x.shape == (3, 40, 20)
    assert x[:, :20].float().mean() > 200 and x[:, 20:].float().mean() < 50


def test_the_pixel_limit_is_read_from_the_header(tmp_path, monkeypatch):
    _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(BadSample, match="400,000,000 pixels, over the limit"):
        decode(tmp_path / "bomb.png")
    _png_header_only(tmp_path / "under-twice.png", 10000, 10000)  # between our limit and Pillow's error at twice it
    with pytest.raises(BadSample, match="10000x10000 is 100,000,000 pixels, over the limit"):
        decode(tmp_path / "under-twice.png")
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    assert decode(tmp_path / "big.png").shape == (3, 200, 300)
    monkeypatch.setenv("RESNETS_MAX_PIXELS", "50000")
    with pytest.raises(BadSample, match="over the limit of 50,000"):
        decode(tmp_path / "big.png")


def test_a_bad_image_says_what_kind_of_bad_it_is(tmp_path):
    """BadSample.kind, which `resnets serve` answers by (413, 415, 422, 400), from what failed, not from words of
    the message; it survives the trip from a loader worker (pickling)."""
    import pickle

    from resnets.data.datasets import decode_bytes

    photo = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(photo, "JPEG")
    png = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(png, "PNG")
    _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    cases = {
        "not_an_image": b"just some words, not an image",
        "corrupt_image": photo.getvalue()[: len(photo.getvalue()) // 2],
        "empty": b"",
        "too_many_pixels": (tmp_path / "bomb.png").read_bytes(),
    }
    for kind, data in cases.items():
        with pytest.raises(BadSample) as e:
            decode_bytes(data, "upload")
        assert e.value.kind == kind, (kind, e.value.reason)
        again = pickle.loads(pickle.dumps(e.value))
        assert (again.path, again.reason, again.kind) == ("upload", e.value.reason, kind)
    with pytest.raises(BadSample) as e:  # a PNG cut short: Pillow knows the format, the data is broken
        decode_bytes(png.getvalue()[:60], "short.png")
    assert e.value.kind == "corrupt_image"
    with pytest.raises(BadSample) as e:
        decode(tmp_path / "missing.jpg")
    assert e.value.kind == "unreadable"


def test_every_format_comes_out_with_the_models_channels(tmp_path):
    """torchvision gives 3 channels for GIF and WebP even when asked for grey; every format, mode and animation
    must come out with the channels asked for, grey the same luma whichever decoder made it."""
    from conftest import every_format

    from resnets.data.datasets import decode_bytes

    for name, data in every_format((48, 40)).items():
        (tmp_path / name).write_bytes(data)
        colour = decode_bytes(data, name, 3)
        for channels in (1, 3):
            x = decode(tmp_path / name, channels)
            assert x.shape == (channels, 40, 48) and x.dtype == torch.uint8, (name, channels, x.shape)
        grey = decode(tmp_path / name, 1).float()
        luma = (colour.float() * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, keepdim=True)
        assert (grey - luma).abs().mean() < 3, name


def test_a_header_that_cannot_be_read_is_never_decoded(tmp_path):
    """Fail closed: a PNG whose header Pillow refuses (an ancillary chunk of an unknown compression method before
    its pixels) was decoded by libpng unchecked, 20000x20000 from 389 KB; now every known format whose header
    cannot be read is a corrupt image (422 from the server), and a file of no known format not an image (415)."""
    from conftest import broken_headers, png_chunk, png_claiming

    from resnets.data.datasets import decode_bytes

    cases = {**broken_headers(), "ztxt-20000.png": png_claiming(20000, 20000, png_chunk(b"zTXt", b"k\x00\x01junk"))}
    for name, data in cases.items():
        for limit in (None, 10**12):  # refused whatever the limit: the size was never read
            with pytest.raises(BadSample) as e:
                decode_bytes(data, name, max_pixels=limit)
            assert e.value.kind == "corrupt_image" and "header cannot be read" in e.value.reason, (name, e.value.reason)
            assert "object at 0x" not in e.value.reason
    with pytest.raises(BadSample) as e:
        decode_bytes(b"%PDF-1.4 not an image", "doc.pdf")
    assert e.value.kind == "unsupported_format" and "a PDF file" in e.value.reason
    with pytest.raises(BadSample) as e:
        decode_bytes(b"plain text, no image at all", "notes.txt")
    assert e.value.kind == "not_an_image" and "object at 0x" not in e.value.reason


def test_an_animation_costs_one_frame_of_memory(tmp_path):
    """A GIF of 40 frames on a 3000x3000 canvas (under the pixel limit) is decoded as its first frame: ~27 MB,
    not 40 x 27 MB. Measured in a process of its own (the peak resident memory before and after) and in its
    decoder (the sandbox's worker, a child process: its peak once it has exited)."""
    gif = tmp_path / "frames.gif"
    gif.write_bytes(_gif_frames_on_a_canvas(40, 3000, 3000))
    assert gif.stat().st_size < 1000
    code = (
        "import resource, sys, torch, torchvision.io, PIL.Image\n"
        "from resnets.data.datasets import decode\n"
        "from resnets.data.sandbox import pool\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "x = decode(sys.argv[1])\n"
        "grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(tuple(x.shape), grew // 1024, pool().peak_mb)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(gif)], capture_output=True, text=True, timeout=120)
    line = out.stdout.strip()
    assert line.startswith("(3, 3000, 3000)"), out.stderr
    grew_mb, decoder_mb = map(int, line.rsplit(")", 1)[1].split())
    assert grew_mb < 200, f"decoding grew the process by {grew_mb} MB"
    assert 0 < decoder_mb < 200, f"the decoder peaked at {decoder_mb} MB"


def test_a_grey_model_predicts_and_trains_on_every_format(tmp_path):
    """A 1-channel model (Fashion-MNIST's kind) over a folder of every format, with an empty file and broken
    headers among them: one row per file, the bad ones named, exit 1; training on such a folder runs."""
    from conftest import broken_headers, every_format

    photos = tmp_path / "photos"
    photos.mkdir()
    good = every_format((40, 40))
    for name, data in {**good, **broken_headers(), "empty.png": b"", "words.jpg": b"not an image"}.items():
        (photos / name).write_bytes(data)
    model = resnets.create_model("resnet20", num_classes=3, in_chans=1)
    weights = resnets.save(
        model,
        tmp_path / "grey.safetensors",
        class_names=CLASSES,
        preprocessing=Preprocessing(36, 32, "bilinear", (0.5,), (0.25,)).to_dict(),
    )
    code, out, err = run_cli(
        "predict", photos, "--weights", weights, "--workers", 0, "--format", "json", "--batch-size", 4
    )
    assert code == 1 and "Traceback" not in err, err
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(out)}
    assert len(rows) == len(good) + len(broken_headers()) + 2
    assert all("top" in rows[n] for n in good), [n for n in good if "top" not in rows[n]]
    assert rows["empty.png"]["error"] == "empty file" and "not an image" in rows["words.jpg"]["error"]
    assert all("header cannot be read" in rows[n]["error"] for n in broken_headers())

    data = tmp_path / "data"
    names = sorted(good)
    for split in ("train", "val"):
        for i, cls in enumerate(("a", "b")):
            (data / split / cls).mkdir(parents=True)
            for n in names[i::2]:
                (data / split / cls / n).write_bytes(good[n])
    code, out, err = run_cli(
        "train",
        "--model",
        "resnet8" if "resnet8" in resnets.list_models() else "resnet20",
        "--in-chans",
        1,
        "--dataset",
        "imagefolder",
        "--data",
        data,
        "--epochs",
        1,
        "--batch-size",
        4,
        "--train-crop",
        32,
        "--eval-resize",
        36,
        "--eval-crop",
        32,
        "--workers",
        0,
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        tmp_path / "runs",
        "--name",
        "g",
    )
    assert code == 0 and "Traceback" not in err and "skipped" not in err, err


@pytest.fixture
def hostile_folder(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    _animated_gif(root / "anim.gif")
    _png16(root / "deep.png")
    _portrait_jpeg(root / "portrait.jpg")
    _png_header_only(root / "bomb.png", 20000, 20000)
    Image.new("RGB", (300, 200), (0, 200, 0)).save(root / "big.png")
    Image.new("RGB", (40, 40), (0, 0, 200)).save(root / "evil\n\x1b[31mname.png")
    return root


def test_predict_survives_every_hostile_image_and_names_the_skipped_ones(hostile_folder, tiny_model_file):
    code, out, err = run_cli(
        "predict", hostile_folder, "--weights", tiny_model_file, "--workers", 0, "--format", "json"
    )
    assert code == 1 and "Traceback" not in err, err  # 1: an input could not be read; the rest are answered
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(out)}
    assert set(rows) == {"anim.gif", "deep.png", "portrait.jpg", "bomb.png", "big.png", "evil\n\x1b[31mname.png"}
    assert "over the limit" in rows["bomb.png"]["error"] and "1 of 6 files" in err
    assert all("top" in r for name, r in rows.items() if name != "bomb.png")
    # a lower limit from the command line: big.png is now refused too, by name
    code, out, err = run_cli(
        "predict",
        hostile_folder,
        "--weights",
        tiny_model_file,
        "--workers",
        0,
        "--format",
        "json",
        "--max-pixels",
        50_000,
    )
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(out)}
    assert code == 1 and "over the limit of 50,000" in rows["big.png"]["error"] and "2 of 6 files" in err
    code, out, err = run_cli("predict", hostile_folder / "big.png", "--weights", tiny_model_file, "--workers", 0)
    assert code == 0 and "could not be read" not in err  # all read: 0


def test_train_on_a_folder_with_hostile_images_skips_and_names_them(hostile_folder, tmp_path):
    data = tmp_path / "data"
    for cls, files in {"a": ["anim.gif", "deep.png", "bomb.png"], "b": ["portrait.jpg", "big.png"]}.items():
        (data / "train" / cls).mkdir(parents=True)
        (data / "val" / cls).mkdir(parents=True)
        for f in files:
            shutil.copy(hostile_folder / f, data / "train" / cls / f)
            shutil.copy(hostile_folder / f, data / "val" / cls / f)
    shutil.copy(hostile_folder / "bomb.png", data / "train" / "a" / "b\x1b[2J\x07omb.png")  # escape code and bell
    code, out, err = run_cli(
        "train",
        "--model",
        "resnet20",
        "--dataset",
        "imagefolder",
        "--data",
        data,
        "--epochs",
        1,
        "--batch-size",
        2,
        "--train-crop",
        32,
        "--eval-resize",
        36,
        "--eval-crop",
        32,
        "--workers",
        0,
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        tmp_path / "runs",
        "--name",
        "r",
    )
    assert code == 0 and "Traceback" not in err, err
    assert (
        "bomb.png" in err and "bomb.png (validation)" in err
    )  # the skipped file is named, in training and in validation
    assert "\x1b" not in err and "\x07" not in err and "b\\x1b[2J\\x07omb.png" in err  # named, escaped
    code, out, err = run_cli(
        "eval",
        "--weights",
        tmp_path / "runs" / "r" / "model.safetensors",
        "--dataset",
        "imagefolder",
        "--data",
        data / "val",
        "--workers",
        0,
        "--device",
        "cpu",
    )
    assert code == 0 and "skipped 1 unreadable images" in out and "bomb.png: " in err and "over the limit" in err, err
    assert (tmp_path / "runs" / "r" / "model.safetensors").is_file()


def _run_folder(tmp_path, tiny_model_file):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    shutil.copy(tiny_model_file, run / "model.safetensors")
    (run / "last.pt").write_bytes(b"a checkpoint")
    return run


def test_outputs_never_replace_a_run_or_a_file_unasked(tmp_path, tiny_model_file, hostile_folder):
    run = _run_folder(tmp_path, tiny_model_file)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    photo = hostile_folder / "big.png"
    cases = [
        (
            ["embed", photo, "--weights", tiny_model_file, "--out", run / "model.safetensors", "--force"],
            "belongs to the training run",
        ),
        (["embed", photo, "--weights", tiny_model_file, "--out", run / "last.pt"], "is a .safetensors file"),
        (["embed", photo, "--weights", tiny_model_file, "--out", tmp_path / "x.npy"], "is a .safetensors file"),
        (["export", "--weights", tiny_model_file, "--out", run / "model.safetensors", "--force"], "is a .onnx file"),
        (["export", "--weights", tiny_model_file, "--out", tmp_path], "is a folder"),
        (["export", "--weights", tiny_model_file, "--format", "torchscript", "--out", tmp_path / "m.onnx"], "is a .pt"),
        (
            ["explain", photo, "--weights", tiny_model_file, "--out", run / "curves.png", "--force"],
            "belongs to the training run",
        ),
    ]
    for args, needle in cases:
        code, _, err = run_cli(*args)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert not (tmp_path / "x.npy").exists()

    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(b"something of mine")
    code, _, err = run_cli("embed", photo, "--weights", tiny_model_file, "--out", mine)
    assert code == 2 and "exists; pass --force" in err and mine.read_bytes() == b"something of mine"
    code, _, err = run_cli("embed", photo, "--weights", tiny_model_file, "--out", mine, "--force", "--workers", 0)
    assert code == 0, err
    assert resnets.inference.load_index(mine)[0].shape == (1, 64)


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("preprocessing", {"resize": 36, "mean": [0.5] * 3, "std": [0.25] * 3}, "crop must be a whole number"),
        ("preprocessing", {"resize": 36, "crop": -32}, "crop must be a whole number"),
        ("preprocessing", {"resize": 36, "crop": 32, "std": [0, 1, 1]}, "std must be positive"),
        ("preprocessing", {"resize": 36, "crop": 32, "interpolation": "lanczos9"}, "interpolation must be"),
        ("options", ["a", "list"], "options metadata should be a dict"),
        ("class_names", 7, "class_names metadata should be a list"),
        ("class_names", "{not json", "not valid JSON"),
        # a record that disagrees with the file's own tensors is damage, not a reason to swap in a random classifier
        ("options", {"num_classes": 11}, "its record says 11 classes, its classifier has 3"),
        ("options", {"in_chans": 1}, "its record says 1 input channels, its first conv takes 3"),
        ("class_names", ["red", "green", "blue", "pink"], "it names 4 classes for a classifier of 3"),
        # numbers that would build a model of gigabytes, or feed it images of gigapixels
        ("options", {"in_chans": 100000}, "its record is damaged (in_chans must be a whole number from 1 to 64"),
        ("options", {"num_classes": 10**6}, "num_classes must be a whole number from 0 to 100,000"),
        ("options", {"num_classes": 10.7}, "num_classes must be a whole number"),
        ("preprocessing", {"resize": 1200, "crop": 5000}, "crop must be a whole number of pixels from 1 to 1024"),
        ("preprocessing", {"resize": 5000, "crop": 224}, "resize must be a whole number of pixels from 1 to 2048"),
        ("preprocessing", {"resize": 36, "crop": 32, "mean": [1e308] * 3}, "mean must be a list of finite numbers"),
        # tensors that are not float weights would be cast silently
        ("tensor", torch.int8, "fc.weight is int8"),
        ("tensor", torch.bool, "fc.weight is bool"),
        ("tensor", torch.float8_e4m3fn, "fc.weight is float8_e4m3fn"),
    ],
)
def test_damaged_metadata_is_one_line(tmp_path, tiny_model_file, hostile_folder, field, value, needle):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tiny_model_file), framework="pt") as f:
        meta, sd = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    if field == "tensor":
        sd["fc.weight"] = sd["fc.weight"].to(value)
    elif field == "options" and isinstance(value, dict):  # merged into the file's own options
        meta[field] = json.dumps({**json.loads(meta[field]), **value})
    else:
        meta[field] = value if isinstance(value, str) else json.dumps(value)
    save_file(sd, str(tmp_path / "bad.safetensors"), metadata=meta)
    code, _, err = run_cli(
        "predict", hostile_folder / "big.png", "--weights", tmp_path / "bad.safetensors", "--workers", 0
    )
    assert code == 2 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_the_onnx_cache_is_verified_and_rebuilt(tmp_path, tiny_model_file, hostile_folder):
    from resnets import inference as I
    from resnets.backends import onnx_cache_path

    model = resnets.load(tiny_model_file)
    other = resnets.load(tiny_model_file)
    with torch.no_grad():
        other.fc.bias.copy_(torch.tensor([10.0, 0.0, -10.0]))  # another model: always "red"
    eager = [r.get("top") for r in I.predict(model, [hostile_folder], workers=0, top_k=3)]
    I.predict(other, [hostile_folder], workers=0, backend="onnxruntime")
    cached = onnx_cache_path(model, torch.randn(2, 3, 32, 32))
    other_file = onnx_cache_path(other, torch.randn(2, 3, 32, 32))
    assert other_file.is_file() and other_file != cached

    def agree(rows):
        for a, b in zip(eager, [r.get("top") for r in rows]):
            assert (a is None) == (b is None)
            for ta, tb in zip(a or [], b or []):
                assert ta["index"] == tb["index"] and ta["prob"] == pytest.approx(tb["prob"], abs=1e-4)

    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(other_file, cached)  # another model's file under this model's name
    agree(I.predict(model, [hostile_folder], workers=0, top_k=3, backend="onnxruntime"))
    # one weight damaged: the file still loads, its hash no longer matches (a truncated file fails the same check)
    data = bytearray(cached.read_bytes())
    big = max(range(0, len(data) - 4096, 4096), key=lambda i: len(set(data[i : i + 64])))
    data[big : big + 64] = bytes(64)
    cached.write_bytes(bytes(data))
    agree(I.predict(model, [hostile_folder], workers=0, top_k=3, backend="onnxruntime"))
    assert cached.with_suffix(".sha256").read_text().strip() == hashlib.sha256(cached.read_bytes()).hexdigest()


def test_names_with_control_characters_are_escaped_in_tables_and_exact_in_csv(
    tmp_path, tiny_model_file, hostile_folder
):
    from safetensors import safe_open
    from safetensors.torch import save_file

    evil = ["\x1b[31m", "../../", "line\nbreak"]
    with safe_open(str(tiny_model_file), framework="pt") as f:
        meta, sd = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(sd, str(tmp_path / "evil.safetensors"), metadata={**meta, "class_names": json.dumps(evil)})
    photo = next(p for p in hostile_folder.iterdir() if "evil" in p.name)
    code, out, err = run_cli("predict", photo, "--weights", tmp_path / "evil.safetensors", "--workers", 0, "--top-k", 3)
    assert code == 0, err
    assert "\x1b" not in out and len(out.splitlines()) == 2  # a header and one row for one file, no escape codes
    assert "\\x1b[31m" in out and "line\\nbreak" in out and "evil\\n\\x1b[31mname.png" in out
    code, out, err = run_cli(
        "predict", photo, "--weights", tmp_path / "evil.safetensors", "--workers", 0, "--top-k", 3, "--format", "csv"
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 3
    assert {r["path"] for r in rows} == {str(photo)} and {r["class"] for r in rows} == set(evil)


def test_environment_errors_are_one_line(tmp_path, tiny_model_file, hostile_folder):
    (tmp_path / "afile").write_text("x")
    S = [
        "--model",
        "resnet20",
        "--dataset",
        "synthetic",
        "--synthetic-samples",
        64,
        "--train-crop",
        32,
        "--epochs",
        1,
        "--workers",
        0,
        "--no-progress",
        "--device",
        "cpu",
    ]
    code, _, err = run_cli("train", *S, "--out", tmp_path, "--name", "afile")
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli("train", *S, "--out", tmp_path / "afile")
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    binary = tmp_path / "bin.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    code, _, err = run_cli("train", *S[:2], "--dataset", "csv", "--data", binary, *S[6:], "--out", tmp_path / "r")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for args in (["--top-k", -3], ["--batch-size", 0], ["--workers", -1]):
        code, _, err = run_cli("predict", hostile_folder / "big.png", "--weights", tiny_model_file, *args)
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(
        "explain",
        hostile_folder / "big.png",
        "--weights",
        tiny_model_file,
        "--layer",
        "fc",
        "--out",
        tmp_path / "cam.png",
    )
    assert code == 2 and "--layer is one of" in err and not (tmp_path / "cam.png").exists(), err


def test_a_closed_pipe_is_not_an_error():
    p = subprocess.run(
        f"{sys.executable} -m resnets list | true", shell=True, capture_output=True, text=True, timeout=120
    )
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr


def test_predict_takes_one_input_as_one(tmp_path, tiny_model_file):
    """`predict(model, "photo.jpg")` used to iterate the string's characters (and reach "/", walking the whole
    filesystem): one path, PIL image or image tensor is one input; a batch tensor is its images."""
    from resnets.inference import predict

    model = resnets.load(tiny_model_file)
    Image.new("RGB", (40, 30), (200, 0, 0)).save(tmp_path / "red.png")
    for one in (str(tmp_path / "red.png"), tmp_path / "red.png"):
        r = predict(model, one, workers=0)
        assert len(r) == 1 and r[0]["path"] == str(tmp_path / "red.png") and "top" in r[0]
    im = Image.open(tmp_path / "red.png")
    t = decode(tmp_path / "red.png")
    assert [len(predict(model, x)) for x in (im, t, torch.stack([t, t]))] == [1, 1, 2]
    with pytest.raises(resnets.ResnetsError, match="1-4 channels"):
        predict(model, torch.zeros(7, 8, 8))


def test_folder_outputs_never_replace_a_run(tmp_path, tiny_model_file):
    """`export --format hub --out RUN --force` replaced a run's config.json and model.safetensors (then --resume
    failed): a run's folder is never an output folder, --force or not; another folder with files needs --force."""
    run = _run_folder(tmp_path, tiny_model_file)
    (run / "config.json").write_text(json.dumps({"model": "resnet20", "epochs": 1}))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for extra in ([], ["--force"]):
        code, _, err = run_cli("export", "--weights", tiny_model_file, "--format", "hub", "--out", run, *extra)
        assert code == 2 and "is a training run's folder" in err and len(err.strip().splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, _, err = run_cli("export", "--weights", tiny_model_file, "--format", "hub", "--out", mine)
    assert code == 2 and "--force" in err and (mine / "notes.txt").read_text() == "mine"


def test_the_gpu_file_loader_sends_only_upright_jpegs_to_the_batch_decoder(tmp_path):
    """nvJPEG ignores EXIF orientation: a rotated JPEG is decoded (and turned upright) on the CPU instead; a bomb
    is refused from its header in the worker."""
    from resnets.data.device_loader import Encoded

    _portrait_jpeg(tmp_path / "portrait.jpg")
    Image.new("RGB", (40, 20), (9, 9, 9)).save(tmp_path / "plain.jpg")
    _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    ds = D.FileDataset([(str(tmp_path / n), 0) for n in ("portrait.jpg", "plain.jpg", "bomb.png")], ["x"], 3)
    enc = Encoded(ds)
    _, _, _, pixels, is_jpeg = enc[0]
    assert not is_jpeg and pixels.shape == (3, 40, 20)
    _, _, _, data, is_jpeg = enc[1]
    assert is_jpeg and data.ndim == 1 and data[:2].tolist() == [0xFF, 0xD8]
    assert isinstance(enc[2], BadSample) and "over the limit" in enc[2].reason


@pytest.fixture(scope="module")
def hostile_set(tmp_path_factory):
    """Every class of hostile image (conftest.hostile_images), a 9000x9000 16-bit PNG that is within the budget
    (162 MB of samples from a few hundred KB), and one small good photo, in a folder."""
    from conftest import hostile_images

    root = tmp_path_factory.mktemp("hostile")
    images = hostile_images()
    for name, (_, data) in images.items():
        (root / name).write_bytes(data)
    Image.fromarray(np.zeros((9000, 9000), dtype=np.uint16)).save(root / "deep-9000.png", compress_level=1)
    Image.new("RGB", (64, 48), (200, 20, 20)).save(root / "good.png")
    return root, {name: kind for name, (kind, _) in images.items()}


def _peak_mb(*args) -> tuple[int, str, str, int]:
    """`resnets ARGS` in a process of its own: (exit code, stdout, stderr, the peak resident memory in MB of the
    largest process it ran: the command itself (its decoders, children started from it, are counted by Linux with
    the command's memory at their start, so their own peaks are measured apart: `Pool.peak_mb`))."""
    code = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run([sys.executable, '-m', 'resnets', *sys.argv[1:]], capture_output=True, text=True)\n"
        "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, file=sys.stderr)\n"
        "sys.exit(p.returncode)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
    err, _, peak = p.stderr.rstrip().rpartition("\n")
    return p.returncode, p.stdout, err, int(peak)


def test_every_class_of_hostile_image_costs_at_most_400_mb_through_the_cli(hostile_set, tiny_model_file):
    """For every allowed format a bomb by dimensions, by bytes per sample (where a format has deep samples), one
    wrapped in a container, one of many frames or pages; formats not read: each answered in one line (a refusal
    or the first frame's classes), no traceback, and the largest process at most 400 MB above a run on one small
    image (on main before the sandbox: 3.18 GB for the ICO alone)."""
    root, kinds = hostile_set
    code, out, err, small = _peak_mb("predict", root / "good.png", "--weights", tiny_model_file, "--format", "json")
    assert code == 0, err
    code, out, err, peak = _peak_mb("predict", root, "--weights", tiny_model_file, "--format", "json")
    assert code == 1 and "Traceback" not in err, err
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(out)}
    assert set(rows) == {*kinds, "deep-9000.png", "good.png"}
    for name, kind in kinds.items():
        if kind == "frames" or name == "pages.tif":  # the first frame or page, a good image
            assert "top" in rows[name], rows[name]
        else:
            assert "\n" not in rows[name]["error"] and len(rows[name]["error"]) < 200, rows[name]
    assert all(kinds[n] != "disallowed" or "the formats read are" in rows[n]["error"] for n in kinds)
    assert "top" in rows["deep-9000.png"] and "top" in rows["good.png"]
    assert peak - small <= 400, f"{peak} MB against {small} MB for one small image"


def test_every_class_of_hostile_image_costs_its_decoder_at_most_400_mb(hostile_set, monkeypatch):
    """The same files through the sandbox's decoder as predict sends them (at the tiny model's size): the peak
    resident memory any decoder reported, at most 400 MB above its peak for the small image; 16-bit at 9000x9000
    among them."""
    from resnets.data import sandbox

    root, kinds = hostile_set
    pool = sandbox.Pool(1)
    monkeypatch.setattr(sandbox, "_POOL", pool)
    try:
        D.decode(root / "good.png", 3, size=36)
        small = pool.peak_mb
        for name in [*kinds, "deep-9000.png"]:
            try:
                D.decode(root / name, 3, size=36)
            except BadSample:
                pass
        assert 0 < small and pool.peak_mb - small <= 400, f"{pool.peak_mb} MB against {small} MB"
    finally:
        pool.close()


def test_every_class_of_hostile_image_is_answered_by_the_server_in_one_line(hostile_set, serve_files):
    """The same files uploaded to a real `resnets serve`: 413, 415 or 422 with a one-line detail for each refusal,
    200 for the first frames, the server and its decoders' memory at most 400 MB above what it held before, and a
    good image still answered after them all."""
    import httpx
    from conftest import Server

    root, kinds = hostile_set
    s = Server(serve_files[0], "--backend", "eager", "--workers-decode", 2)
    try:

        def resident_mb() -> int:
            pids = [s.proc.pid]
            for task in os.listdir(f"/proc/{s.proc.pid}/task"):
                pids += map(int, open(f"/proc/{s.proc.pid}/task/{task}/children").read().split())
            total = 0
            for pid in pids:
                status = open(f"/proc/{pid}/status").read()
                total += int(status.split("VmHWM:")[1].split()[0]) // 1024
            return total

        httpx.post(s.url + "/v1/predict", files={"files": ("good.png", (root / "good.png").read_bytes())}, timeout=60)
        before = resident_mb()
        for name in [*kinds, "deep-9000.png"]:
            r = httpx.post(s.url + "/v1/predict", files={"files": (name, (root / name).read_bytes())}, timeout=60)
            if kinds.get(name) == "frames" or name in ("pages.tif", "deep-9000.png"):
                assert r.status_code == 200, (name, r.text)
            else:
                assert r.status_code in (413, 415, 422), (name, r.status_code, r.text)
                detail = r.json()["detail"]
                assert "\n" not in detail and name in detail, detail
        assert resident_mb() - before <= 400
        r = httpx.post(s.url + "/v1/predict", files={"files": ("good.png", (root / "good.png").read_bytes())})
        assert r.status_code == 200
    finally:
        assert s.stop() == 0, s.output()


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_a_hub_dataset_name_is_taken_only_from_the_command_line(tmp_path, monkeypatch, suffix):
    """`dataset = "hf"` with a Hub name (`data = "user/name"`) in a --config file or a run's config.json fetched the
    dataset from the Hub: a value that reaches the network comes from the command line only, as a pipe: command or
    a URL does. From a file it is one line and nothing is opened; on the command line, or naming a local folder,
    it is taken."""
    from resnets import config as C
    from resnets.data import hf

    monkeypatch.chdir(tmp_path)
    opened = []
    monkeypatch.setattr(hf, "load", lambda data, *a, **kw: opened.append(data))
    path = tmp_path / f"evil{suffix}"
    values = {"dataset": "hf", "data": "someone/their-data"}
    path.write_text(
        json.dumps(values) if suffix == ".json" else "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    )
    code, _, err = run_cli("train", "--config", path, "--model", "resnet20", "--epochs", "1", "--out", "runs")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"evil{suffix}'s data fetches from the Hugging Face Hub (someone/their-data)" in lines[0], err
    assert "give --data there" in lines[0] and opened == [] and not (tmp_path / "runs").exists()
    # the dataset named on the command line, the Hub name in the file: the same
    (tmp_path / "data.toml").write_text('data = "someone/their-data"\n')
    with pytest.raises(resnets.ResnetsError, match="data.toml's data fetches from the Hugging Face Hub"):
        C.resolve(None, tmp_path / "data.toml", {"dataset": "hf"})
    # a run's config.json (read by --resume) is held to the same rule
    with pytest.raises(resnets.ResnetsError, match="config.json's data fetches from the Hugging Face Hub"):
        C.only_from_command_line(values | {"model": "resnet20"}, "runs/x/config.json", {"epochs": 2})
    # the user's own command line, a file whose dataset is another, a local folder: taken
    assert C.resolve(None, path, {"data": "someone/their-data"}).data == "someone/their-data"
    assert C.resolve(None, tmp_path / "data.toml", {"dataset": "imagefolder"}).data == "someone/their-data"
    (tmp_path / "someone" / "their-data").mkdir(parents=True)
    assert C.resolve(None, path).data == "someone/their-data"
    assert opened == []


def test_a_photo_folder_without_a_recipe_trains_on_random_resized_crops(tmp_path):
    """`resnets train --dataset imagefolder --data DIR` took the CIFAR default (paper-cifar: a padded random crop of
    the photo at full size, a 224 patch of a 4000x3000 photo). Image files whose augment neither a recipe, a file
    nor the command line says now train with rrc; tensors and detectors keep theirs, and an augment said is kept."""
    from resnets import config as C

    for dataset in ("imagefolder", "csv", "wds", "hf"):
        assert C.resolve(None, None, {"dataset": dataset, "data": "photos"}).augment == "rrc", dataset
    assert C.resolve(None, None, {"dataset": "cifar10"}).augment == "paper-cifar"
    said = {"dataset": "imagefolder", "data": "photos"}
    assert C.resolve(None, None, said | {"augment": "crop-flip"}).augment == "crop-flip"
    (tmp_path / "c.toml").write_text('augment = "none"\n')
    assert C.resolve(None, tmp_path / "c.toml", said).augment == "none"
    assert C.resolve("paper-imagenet", None, said).augment == "paper-imagenet"
    assert C.resolve("finetune", None, said | {"weights": "resnet18.tv_in1k"}).augment == "strong"
    coco = C.resolve(None, None, {"model": "fasterrcnn_resnet50_fpn", "dataset": "coco", "data": "boxes"})
    assert coco.augment == "hflip"  # a detector's own default, said in the config (was the classifier's, unapplied)


def test_a_runs_decoding_limits_are_its_config_kept_in_config_json(tmp_path, monkeypatch):
    """`train --max-pixels N --exact-decode`: config keys, written to the run's config.json (so a resume or a
    re-evaluation decodes as the run did), in force for the run's loaders (an image over N pixels is a named bad
    sample) and given back after it."""
    import json

    from PIL import Image

    monkeypatch.delenv("RESNETS_MAX_PIXELS", raising=False)
    monkeypatch.delenv("RESNETS_EXACT_DECODE", raising=False)
    data = tmp_path / "data"
    for split in ("train", "val"):
        for cls, colour in (("a", (200, 0, 0)), ("b", (0, 0, 200))):
            (data / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), colour).save(data / split / cls / f"{i}.png")
    Image.new("RGB", (120, 100), (9, 9, 9)).save(data / "train" / "a" / "large.png")  # 12,000 pixels
    args = ["--model", "resnet20", "--dataset", "imagefolder", "--data", data, "--epochs", 1, "--batch-size", 2]
    args += ["--train-crop", 32, "--eval-resize", 36, "--eval-crop", 32, "--workers", 0, "--no-progress"]
    code, _, err = run_cli(
        "train", *args, "--max-pixels", 5000, "--exact-decode", "--out", tmp_path / "runs", "--name", "r"
    )
    assert code == 0 and "large.png" in err and "pixel" in err, err
    saved = json.loads((tmp_path / "runs" / "r" / "config.json").read_text())
    assert saved["max_pixels"] == 5000 and saved["exact_decode"] is True
    assert "RESNETS_MAX_PIXELS" not in os.environ and "RESNETS_EXACT_DECODE" not in os.environ
    code, _, err = run_cli("train", *args, "--out", tmp_path / "runs", "--name", "s")
    assert code == 0 and "large.png" not in err, err  # the default limit takes it


def test_a_sliver_is_refused_before_its_resize_grows_it(serve_files, tmp_path):
    """A 1 x 4000 PNG holds 4,000 pixels, but resized to a classifier's shorter side it would be a million pixels
    long (a 1 x 100,000 one took 21 GB): refused from its header, by every path that resizes a shorter side
    (predict through PyTorch and through ONNX Runtime, the server's 413), while a 1:32 panorama is classified."""
    import asyncio
    from pathlib import Path

    from conftest import in_process
    from PIL import Image

    from resnets.serve import app

    weights, photos, _ = serve_files
    thin, wide = tmp_path / "thin.png", tmp_path / "wide.png"
    Image.new("RGB", (4000, 1), (90, 90, 90)).save(thin)
    Image.new("RGB", (640, 20), (90, 90, 90)).save(wide)
    onnx = tmp_path / "m.onnx"
    assert run_cli("export", "--weights", weights, "--out", onnx)[0] == 0
    for w, backend in ((weights, "eager"), (onnx, "auto")):
        code, out, err = run_cli("predict", thin, wide, photos[0], "--weights", w, "--backend", backend, "--json")
        rows = {Path(r["path"]).name: r for r in json.loads(out)}
        assert code == 1 and "thinner than 1:64" in rows["thin.png"]["error"], (backend, err)
        assert "top" in rows["wide.png"] and "top" in rows[photos[0].name], backend
    (r,) = asyncio.run(
        in_process(
            app(weights, device="cpu"), [("POST", "/v1/predict", {"files": {"files": ("t.png", thin.read_bytes())}})]
        )
    )
    assert r.status_code == 413 and "thinner" in r.json()["detail"], r.text
