"""Mask folders read as untrusted files: classes.txt checked, an image without its mask named and skipped (refused
when strict), masks of the wrong size, channels or values named bad samples, and the augmentations moving the
mask with the pixels."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.data import masks
from resnets.data.datasets import BadSample
from resnets.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from resnets.errors import ResnetsError


@pytest.fixture
def folder(tmp_path, shapes_set):
    root = tmp_path / "set"
    shutil.copytree(shapes_set, root)
    return root


def test_the_shapes_set_reads_as_images_and_class_maps(shapes_set):
    ds = masks.load(shapes_set, "val")
    assert ds.classes == ["background", "circle", "square", "triangle"] and len(ds) == 6
    img, m = ds[0]
    raw = torch.from_numpy(np.array(Image.open(shapes_set / "val" / "images" / "000000.jpg"))).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(img, (raw.float() / 255 - mean) / std, atol=1e-5, rtol=0)
    want = torch.from_numpy(np.array(Image.open(shapes_set / "val" / "masks" / "000000.png")).astype(np.int64))
    assert m.dtype == torch.int64 and torch.equal(m, want)
    assert masks.load(shapes_set, "train").classes == ds.classes and len(masks.load(shapes_set, "train")) == 16


def test_flips_and_scale_crops_move_the_mask_with_the_pixels(shapes_set):
    plain = masks.load(shapes_set, "val")
    flipped = plain.with_augment("hflip", 64, seed=1)
    for key in range(8):
        img, m = flipped[key]
        ref, rm = plain[key % 6]
        assert (
            torch.equal(m, rm)
            if torch.equal(img, ref)
            else (torch.equal(img, ref.flip(-1)) and torch.equal(m, rm.flip(-1)))
        )
    scaled = plain.with_augment("scale", 48, seed=1)
    for key in range(6):
        img, m = scaled[key]
        assert img.shape == (3, 48, 48) and m.shape == (48, 48)
        assert set(m.unique().tolist()) <= {0, 1, 2, 3, masks.IGNORE}


@pytest.mark.parametrize(
    "break_it, needle",
    [
        (lambda p: Image.new("L", (32, 64)).save(p), "the mask is 32x64, its image 000000.jpg 64x64"),
        (lambda p: Image.new("RGB", (64, 64)).save(p), "one channel of class indices; this one is RGB"),
        (lambda p: Image.fromarray(np.full((64, 64), 7, np.uint8)).save(p), "pixel value 7 is not a class"),
        (lambda p: Image.new("L", (64, 64)).save(p, format="JPEG"), "a mask is a PNG; this is JPEG"),
        (lambda p: p.write_bytes(p.read_bytes()[:-40]), "a broken PNG ("),  # an OSError escaped
    ],
)
def test_a_bad_mask_is_a_named_bad_sample(folder, break_it, needle):
    path = folder / "val" / "masks" / "000000.png"
    break_it(path)
    ds = masks.load(folder, "val")
    with pytest.raises(BadSample, match=needle.replace("(", r"\(")) as e:
        ds[0]
    assert e.value.path == str(path)
    # 255 is "ignore", not an error
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(path)
    assert (ds[0][1] == masks.IGNORE).all()


def test_an_image_without_its_mask_is_named_and_skipped_or_refused(folder, caplog):
    (folder / "val" / "masks" / "000002.png").unlink()
    with caplog.at_level("WARNING", logger="resnets"):
        ds = masks.load(folder, "val")
    assert len(ds) == 5 and "000002.jpg has no mask" in caplog.text
    with pytest.raises(ResnetsError, match="has no mask .* \\(strict data is on\\)"):
        masks.load(folder, "val", strict=True)


@pytest.mark.parametrize(
    "text, needle",
    [
        (None, "no classes.txt"),
        ("one\n", "names 1 classes"),
        ("a\nb\na\n", "names a class twice"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_classes_txt_is_checked(folder, text, needle):
    path = folder / "classes.txt"
    if text is None:
        path.unlink()
    elif isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ResnetsError, match=needle):
        masks.load(folder, "train")


def test_a_validation_split_with_other_classes_is_refused(folder):
    with pytest.raises(ResnetsError, match="does not list the classes of training"):
        masks.load(folder, "val", classes=["background", "cat"])
    assert masks.load(folder / "val", "val") is None  # a split folder has no val/ of its own


def test_masks_are_decoded_in_the_sandbox_not_in_the_loader(tmp_path, monkeypatch):
    """A mask's PNG is decoded by the sandbox's workers like every image (a hostile review once timed a 72 MB mask
    of private chunks at 29 s and 1.5 GB in the training process): here Pillow may not decode in this process at
    all, and 8-bit, palette and 16-bit masks still come back with their values."""
    values = np.arange(12, dtype=np.uint8).reshape(3, 4) % 3
    for name, im in {
        "grey.png": Image.fromarray(values),
        "palette.png": Image.fromarray(values).convert("P"),
        "deep.png": Image.fromarray(values.astype(np.uint16)),
    }.items():
        im.save(tmp_path / name)
    monkeypatch.setattr(Image, "open", lambda *a, **kw: pytest.fail("decoded in the loader's process"))
    monkeypatch.setattr(Image.Image, "load", lambda *a, **kw: pytest.fail("decoded in the loader's process"))
    for name in ("grey.png", "palette.png", "deep.png"):
        m = masks.read_mask(str(tmp_path / name), 3, (3, 4), "image.jpg")
        assert m.dtype == torch.int64 and m.tolist() == values.tolist(), name
