"""The batched (device) augmentation, run on CPU tensors: determinism per (seed, epoch, index), the ranges of its
random choices, pixel equality with torchvision's per-image ops where they are meant to be equal, and closeness
where they are not (resizing)."""

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from resnets.data.augment import (
    BatchAugment,
    BatchResizeCrop,
    _Draws,
    _randint,
    erase,
    pad_crop_flip,
    resample,
    rrc_boxes,
    uniform,
)
from resnets.data.transforms import eval_transform


def _photo(size=None):
    from skimage import data as sk

    img = torch.from_numpy(sk.astronaut()).permute(2, 0, 1).contiguous()
    return img if size is None else TF.resize(img, size, antialias=True)


def test_uniforms_are_a_function_of_seed_epoch_index_and_stream():
    idx = torch.arange(1000)
    u = uniform(7, 3, idx, 1)
    assert u.dtype == torch.float32 and 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.03 and abs(u.std().item() - math.sqrt(1 / 12)) < 0.02
    # the same sample gets the same number wherever it stands in a batch, and whatever else is in the batch
    perm = torch.randperm(1000)
    assert torch.equal(uniform(7, 3, idx[perm], 1), u[perm])
    assert torch.equal(uniform(7, 3, idx[500:], 1), u[500:])
    # another seed, epoch or stream: unrelated numbers
    for other in (uniform(8, 3, idx, 1), uniform(7, 4, idx, 1), uniform(7, 3, idx, 2)):
        assert (other == u).float().mean() < 0.01
        assert abs(torch.corrcoef(torch.stack([u, other]))[0, 1].item()) < 0.1
    many = uniform(7, 3, idx, 1, count=10)
    assert many.shape == (1000, 10) and len(torch.unique(many)) > 9900


def test_padded_crop_and_flip_equal_torchvision_pixel_for_pixel():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    d = _Draws(0, 0, torch.arange(64))
    tu, lu, flip = d(), d(), d() < 0.5
    out = pad_crop_flip(x, 32, 4, tu, lu, flip)
    top, left = _randint(tu, 9), _randint(lu, 9)  # 32 + 2 * 4 padded, 32 kept: offsets 0..8
    for i in range(64):
        ref = TF.crop(TF.pad(x[i], [4]), int(top[i]), int(left[i]), 32, 32)
        ref = TF.horizontal_flip(ref) if flip[i] else ref
        assert torch.equal(out[i], ref), i


def test_crop_offsets_cover_their_range_and_flips_are_half():
    x = torch.zeros(4096, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 0, 0] = 255  # a marker pixel: where it lands tells the crop offset
    d = _Draws(1, 0, torch.arange(4096))
    tu, lu, flip = d(), d(), d() < 0.5
    out = pad_crop_flip(x, 28, 2, tu, lu, torch.zeros_like(flip))
    top, left = _randint(tu, 5), _randint(lu, 5)
    assert set(top.tolist()) == set(range(5)) and set(left.tolist()) == set(range(5))
    # the marker sits at (2 - top, 2 - left) when that is inside the crop
    inside = (top <= 2) & (left <= 2)
    rows, cols = (2 - top)[inside], (2 - left)[inside]
    assert torch.all(out[inside.nonzero()[:, 0], 0, rows, cols] == 255)
    assert 0.46 < flip.float().mean().item() < 0.54
    counts = torch.bincount(top, minlength=5).float()
    assert counts.min() / counts.max() > 0.85  # uniform over the offsets


def test_random_erasing_follows_torchvisions_rule():
    x = torch.full((2000, 3, 32, 32), 7, dtype=torch.uint8)
    out = erase(x, _Draws(0, 0, torch.arange(2000)), p=0.5, value=[10, 20, 30])
    erased = (out != 7).any(1)  # (B, H, W)
    hit = erased.flatten(1).any(1)
    assert 0.45 < hit.float().mean().item() < 0.55
    for i in hit.nonzero()[:200, 0].tolist():
        rows, cols = erased[i].any(1).nonzero()[:, 0], erased[i].any(0).nonzero()[:, 0]
        h, w = len(rows), len(cols)
        assert erased[i].sum() == h * w  # one rectangle
        assert rows.max() - rows.min() + 1 == h and cols.max() - cols.min() + 1 == w
        assert h < 32 and w < 32 and 0.02 * 1024 * 0.5 <= h * w <= 0.33 * 1024 * 1.5
        assert torch.equal(out[i, :, rows[0], cols[0]], torch.tensor([10, 20, 30], dtype=torch.uint8))
    # equal to v2's functional erase for the same rectangle
    i = hit.nonzero()[0, 0].item()
    r, c = erased[i].any(1).nonzero()[:, 0], erased[i].any(0).nonzero()[:, 0]
    v = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1).expand(3, len(r), len(c))
    assert torch.equal(out[i], TF.erase(x[i], int(r[0]), int(c[0]), len(r), len(c), v))


def test_random_resized_crop_boxes_keep_scale_and_ratio():
    n = 4000
    h, w = torch.full((n,), 375), torch.full((n,), 500)
    boxes = rrc_boxes(_Draws(0, 0, torch.arange(n)), h, w, (0.08, 1.0))
    top, left, bh, bw = boxes.unbind(1)
    assert torch.all(top >= 0) and torch.all(left >= 0) and torch.all(top + bh <= 375) and torch.all(left + bw <= 500)
    area = bh * bw / (375 * 500)
    ratio = bw / bh
    assert area.min() >= 0.075 and area.max() <= 1.0 and ratio.min() >= 0.74 and ratio.max() <= 1.35
    assert area.min() < 0.1 and area.max() > 0.9  # the whole range is used
    # an image too thin for any try gives torchvision's fallback: the centred crop of the clamped ratio
    thin = rrc_boxes(_Draws(0, 0, torch.arange(50)), torch.full((50,), 10), torch.full((50,), 1000), (0.9, 1.0))
    assert (
        torch.all(thin[:, 2] == 10)
        and torch.all(thin[:, 3] == round(10 * 4 / 3))
        and torch.all(thin[:, 1] == (1000 - 13) // 2)
    )


def test_resampling_an_unscaled_integer_box_is_a_plain_crop():
    x = torch.randint(0, 256, (4, 3, 40, 50), dtype=torch.uint8)
    boxes = torch.tensor([[0, 0, 32, 32], [3, 7, 32, 32], [8, 18, 32, 32], [5, 5, 32, 32]], dtype=torch.float64)
    out = resample(x, boxes, 32).round().to(torch.uint8)
    for i, (t, left, _, _) in enumerate(boxes.long().tolist()):
        assert torch.equal(out[i], x[i, :, t : t + 32, left : left + 32])
    # a list of images of different sizes gives the same as one batch
    sizes = [(t + 32 + i, left + 32 + 2 * i) for i, (t, left, _, _) in enumerate(boxes.long().tolist())]
    listed = resample([x[i, :, :h, :w] for i, (h, w) in enumerate(sizes)], boxes, 32).round().to(torch.uint8)
    assert torch.equal(listed, out)


def test_batched_eval_resize_and_crop_is_close_to_torchvisions():
    img = _photo()  # 512 x 512 astronaut
    photos = [img[:, :400, :], img[:, 50:, 100:]]  # 400x512 and 462x412
    out = BatchResizeCrop(256, 224)(photos)
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.uint8
    ref = torch.stack([eval_transform(resize=256, crop=224)(p) for p in photos])
    diff = (out.float() - ref.float()).abs()
    assert diff.mean() < 2.0 and diff.quantile(0.99) < 20  # an area-averaging sampler, not the same filter
    # identity at the native size (the 28/32-pixel nets)
    x = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    assert BatchResizeCrop(28, 28)(x) is x


def test_squashed_eval_resize_matches_on_the_host_and_in_batches():
    img = _photo()
    photos = [img[:, :400, :], img[:, 50:, 100:]]
    out = BatchResizeCrop(240, 224, squash=True)(photos)
    ref = torch.stack([eval_transform(resize=240, crop=224, crop_mode="squash")(p) for p in photos])
    diff = (out.float() - ref.float()).abs()
    assert diff.mean() < 2.0 and diff.quantile(0.99) < 20
    # squash is not the shorter-side resize: the whole width is kept
    centre = torch.stack([eval_transform(resize=240, crop=224)(p) for p in photos])
    assert (centre.float() - ref.float()).abs().mean() > 10


@pytest.mark.parametrize("augment", ["paper-cifar", "crop-flip", "paper-imagenet", "rrc", "strong", "none"])
def test_batch_augment_shapes_determinism_and_lists(augment):
    crop = 64 if augment not in ("paper-cifar", "crop-flip") else 32
    big = augment in ("paper-imagenet", "rrc", "strong", "none")
    x = torch.stack([_photo(96 if big else 32)] * 6)  # one photo six times: what differs is the augmentation
    aug = BatchAugment(augment, crop=crop, mean=(0.485, 0.456, 0.406), seed=3, random_erasing=0.5)
    idx = torch.tensor([5, 1, 9, 4, 4, 2])
    a = aug(x, idx, epoch=2)
    assert a.shape == (6, 3, crop, crop) and a.dtype == torch.uint8
    assert torch.equal(a, aug(x, idx, epoch=2))  # a function of (seed, epoch, index)
    assert torch.equal(a[3], a[4])  # the same index, the same augmentation
    if augment != "none":
        assert not torch.equal(a, aug(x, idx, epoch=3))
    assert torch.equal(aug(list(x), idx, epoch=2), a)  # decoded files come as a list: the same result


def test_paper_imagenet_scale_augmentation_shows_the_expected_zoom():
    """The shorter side goes to 256..480 before a 224 crop. On vertical stripes of an 8-pixel period in a 480-pixel
    image, the period seen in the crop gives back the sampled shorter side: it must cover 256..480."""
    img = torch.zeros(1, 3, 480, 480, dtype=torch.uint8)
    img[..., (torch.arange(480) // 4) % 2 == 1] = 255
    aug = BatchAugment("paper-imagenet", crop=224, mean=(0.5,) * 3, seed=0)
    out = aug(img.expand(300, -1, -1, -1), torch.arange(300), 0).float().mean(1)  # (B, 224, 224), grey
    row = out[:, 112, :]
    on = row > row.mean(1, keepdim=True)  # colour jitter moves the levels; the stripes stay
    transitions = (on[:, 1:] != on[:, :-1]).sum(1).float()
    short = 480 * (2 * 223 / transitions) / 8  # period in crop pixels x 480 / 8
    assert short.min() > 240 and short.max() < 500
    assert short.min() < 290 and short.max() > 440  # the whole scale range is used


def test_the_engine_trains_with_either_loader_on_cpu(tmp_path):
    from resnets import config as C
    from resnets.engine import train

    common = dict(
        dataset="synthetic",
        synthetic_samples=128,
        synthetic_classes=4,
        train_crop=32,
        augment="crop-flip",
        random_erasing=0.5,
        batch_size=32,
        epochs=1,
        progress=False,
        workers=0,
        out=str(tmp_path),
        lr=0.01,
    )
    dev = train(C.resolve(overrides=dict(common, name="d", loader="device")))
    host = train(C.resolve(overrides=dict(common, name="h", loader="host")))
    assert dev["loader"] == "device" and host["loader"] == "host"
    assert dev["n"] == host["n"] == 16
