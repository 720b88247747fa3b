"""The decoder that runs in the sandbox's workers, in this process: the allow-list by signature, the budget in
bytes, the decode at the consumer's size, 8-bit conversion without float64 copies, the OS memory cap."""

import io
import subprocess
import sys

import numpy as np
import pytest
from conftest import every_format, hostile_images
from PIL import Image

from resnets.data import decoder as D

REQ = {"channels": 3, "max_pixels": 89_478_485, "max_bytes": 3 * 89_478_485, "gap": 2.0}


def _saved(im, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_every_allowed_format_is_known_by_its_signature_and_nothing_else_is():
    fmts = {name: D.check_format(data) for name, data in every_format().items()}
    assert set(fmts.values()) == set(D.ALLOWED)
    refused = {name: data for name, (kind, data) in hostile_images().items() if kind == "disallowed"}
    refused["icon.jpg"] = hostile_images()["icon.jpg"][1]
    for name, data in refused.items():
        with pytest.raises(D.Refused) as e:
            D.check_format(data)
        assert e.value.kind == "unsupported_format" and D.ALLOWED_TEXT in e.value.reason, name
    with pytest.raises(D.Refused) as e:
        D.check_format(b"just text")
    assert e.value.kind == "not_an_image"


def test_an_icon_is_refused_before_pillow_opens_it(monkeypatch):
    """Pillow's ICO plugin decodes the PNG inside while opening: the signature check must come first."""
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **kw: opened.append(a))
    with pytest.raises(D.Refused):
        D.decode(hostile_images()["icon.jpg"][1], REQ)
    assert opened == []


def test_the_budget_counts_bytes_per_sample():
    """A 16-bit grey PNG of 4000x3000 is 24 MB: over a 20 MB budget that an 8-bit one of the same pixels (12 MB)
    fits."""
    grey16 = _saved(Image.fromarray(np.zeros((3000, 4000), dtype=np.uint16)), "PNG")
    grey8 = _saved(Image.new("L", (4000, 3000)), "PNG")
    req = {**REQ, "max_bytes": 20_000_000}
    assert D.decode(grey8, req)[1] == (3000, 4000, 3)
    with pytest.raises(D.Refused, match="4000x3000 x 1 channel x 2 bytes per sample is 24,000,000 bytes"):
        D.decode(grey16, req)


def test_deep_images_become_8_bit_as_before_without_float64():
    """16-bit scaled by 255/65535, int32 above 255 likewise, float clipped; band by band: numpy never sees a
    float64 array of the image."""
    ramp = np.linspace(0, 65535, 600 * 700).reshape(600, 700).astype(np.uint16)
    im = Image.fromarray(ramp)
    got = np.asarray(D.to_8bit(im))
    assert got.dtype == np.uint8 and np.array_equal(got, np.round(ramp.astype(np.float64) * 255 / 65535))
    seen = []
    real = np.asarray

    def watch(a, *args, **kw):
        out = real(a, *args, **kw)
        seen.append(out.dtype)
        return out

    np.asarray = watch
    try:
        D.to_8bit(Image.fromarray(ramp.astype(np.int32)))
        D.to_8bit(Image.fromarray(ramp.astype(np.float32) / 200))
    finally:
        np.asarray = real
    assert np.float64 not in seen and seen
    small = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32))
    assert np.asarray(D.to_8bit(small)).tolist() == [[0, 100, 255]]  # int32 within 0-255: taken as is


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_a_large_image_is_decoded_no_smaller_than_twice_what_the_consumer_needs(fmt):
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1800, 2400, 3), dtype=np.uint8))
    data = _saved(im, fmt)
    full = D.decode(data, REQ)
    assert full[1] == (1800, 2400, 3) and full[2]["size"] == [2400, 1800]
    pixels, (h, w, c), info = D.decode(data, {**REQ, "short": 224})
    assert 448 <= min(h, w) < 900 and info["size"] == [2400, 1800]  # 1/2 or 1/3: at least twice 224, at most 4x
    assert abs(w / h - 2400 / 1800) < 0.01
    _, (h2, w2, _), _ = D.decode(data, {**REQ, "short": 224, "exact": True})
    assert (h2, w2) == (1800, 2400)
    _, (h3, w3, _), _ = D.decode(data, {**REQ, "short": 800, "long": 1000})  # a detector: needs 1000 x 750
    assert (h3, w3) == (1800, 2400)  # less than twice that: not reduced


def test_a_detectors_long_side_limit_is_respected_when_reducing():
    data = _saved(Image.new("RGB", (6000, 1000), (50, 60, 70)), "PNG")
    _, (h, w, _), _ = D.decode(data, {**REQ, "short": 800, "long": 1333})
    assert w >= 2 * 1333 and w < 6000  # reduced by 2: 3000 wide, still twice the 1333 the model takes


def test_orientation_is_applied_and_the_full_size_given_upright():
    im = Image.new("RGB", (400, 200), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 200, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _saved(im, "JPEG", exif=exif.tobytes(), quality=95)
    pixels, (h, w, c), info = D.decode(data, REQ)
    assert (h, w) == (400, 200) and info["size"] == [200, 400]
    a = np.frombuffer(pixels, np.uint8).reshape(h, w, c)
    assert a[:200].mean() > 200 and a[200:].mean() < 50


def test_a_header_that_lies_ends_at_the_address_space_cap():
    """The cap is set to what the header says the decode needs; a decoder that takes more (simulated: the estimate
    made tiny) fails with MemoryError inside the worker, which answers in one line and lives."""
    code = (
        "import io, numpy as np\n"
        "from PIL import Image\n"
        "from resnets.data import decoder as D\n"
        "b = io.BytesIO(); Image.fromarray(np.full((3000, 4000, 3), 7, np.uint8)).save(b, 'PNG')\n"
        "D.memory_needed = lambda *a: 1 << 20\n"
        "try:\n"
        "    D.decode(b.getvalue(), dict(channels=3, max_pixels=10**8, max_bytes=10**9), capped=True)\n"
        "except D.Refused as e:\n"
        "    print(e.kind, '|', e.reason)\n"
        "print('alive', len(bytearray(50 << 20)))\n"  # the cap is lifted after the decode
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"too_many_pixels | {D.MEMORY_CAP}: decoding it needed more than its header promised",
        f"alive {50 << 20}",
    ]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("size", [(3000, 2000), (2001, 1999), (4032, 3024), (640, 480)])
def test_the_size_counted_before_decoding_is_the_size_decoded(fmt, size):
    """What the server counts from a header (decoded_size) is what decode gives, for a classifier's and a
    detector's sizes."""
    data = _saved(Image.new("RGB", size, (30, 60, 90)), fmt)
    for short, long in ((224, None), (36, None), (800, 1333), (256, 512)):
        _, (h, w, _), _ = D.decode(data, {**REQ, "short": short, "long": long})
        assert D.decoded_size(*size, fmt, short, long, 2.0) == (w, h), (short, long)


def test_a_turned_tiff_gives_its_full_size_upright_as_a_jpeg_does():
    """Pillow reports a TIFF's size already turned by its EXIF orientation; a JPEG's as stored."""
    im = Image.new("RGB", (300, 200), (10, 20, 30))
    for fmt in ("TIFF", "JPEG"):
        exif = Image.Exif()
        exif[0x0112] = 6
        _, (h, w, _), info = D.decode(_saved(im, fmt, exif=exif), REQ)
        assert (w, h) == (200, 300) and info["size"] == [200, 300], fmt


def _mode_image(mode: str, size: tuple[int, int]):
    """An image of `mode` (P, 1, L, LA, PA, I;16, RGB) and `size` with content in every band: a random tile repeated."""
    w, h = size
    tile = np.random.default_rng(0).integers(0, 256, (61, 67), dtype=np.uint8)
    a = np.tile(tile, (h // 61 + 1, w // 67 + 1))[:h, :w]
    if mode == "1":
        return Image.fromarray(a > 127)
    if mode == "I;16":
        return Image.fromarray(a.astype(np.uint16) * 251)
    if mode in ("LA", "PA"):
        return Image.merge("LA", [Image.fromarray(a), Image.fromarray(a[::-1].copy())]).convert(mode)
    if mode == "RGB":
        return Image.merge("RGB", [Image.fromarray(b.copy()) for b in (a, a[::-1], a[:, ::-1])])
    im = Image.fromarray(a)
    if mode == "P":
        im = im.convert("P")
        im.putpalette([(i * k) % 256 for i in range(256) for k in (1, 3, 7)])
    return im


def _file(im) -> bytes:
    """PNG, but PA (which PNG does not store): TIFF."""
    return _saved(im, "TIFF") if im.mode == "PA" else _saved(im, "PNG", compress_level=1)


@pytest.mark.parametrize("mode", ["P", "1", "L", "LA", "PA", "I;16", "RGB"])
@pytest.mark.parametrize("channels", [3, 1])
def test_an_image_reduced_band_by_band_is_the_image_converted_and_reduced_whole(mode, channels):
    """Reduced a band of rows at a time (three bands and a partial box at the edges here) is what Pillow gives
    converting the whole image (to_mode) and reducing it."""
    im = _mode_image(mode, (1301, 1100))
    assert im.mode == mode
    req = {**REQ, "channels": channels, "short": 150}  # a factor of 3
    pixels, (h, w, c), _ = D.decode(_file(im), req)
    ref = np.asarray(D.to_mode(im, channels).reduce(3)).reshape(h, w, c)
    got = np.frombuffer(pixels, np.uint8).reshape(h, w, c)
    assert (h, w) == (367, 434) and np.abs(got.astype(int) - ref).max() <= 1


@pytest.mark.parametrize("mode", ["P", "1", "L", "LA", "PA", "I;16"])
def test_reducing_a_large_image_costs_its_decoder_no_full_size_copy(mode):
    """A 9459x9459 image (the pixel limit) reduced for a small model: its decoder's peak memory (`peak_mb`, a worker
    of its own) within 64 MB above what it must hold (a small image's peak, the file's bytes, the decoded image).
    A palette image converted to RGB at full size before reducing cost 460 MB (P) where 136 MB do now."""
    from resnets.data import sandbox

    def peak(data: bytes, shape: list) -> int:
        pool = sandbox.Pool(1)
        try:
            reply, _ = pool.decode({**REQ, "short": 36}, data)
        finally:
            pool.close()
        assert reply["ok"] and reply["shape"] == shape, reply
        return reply["peak_mb"]

    small = peak(_saved(Image.new("RGB", (64, 48)), "PNG"), [48, 64, 3])
    n = 9459
    data = _file(_mode_image(mode, (n, n)))
    held = n * n * {"P": 1, "1": 1, "L": 1, "I;16": 2, "LA": 4, "PA": 4}[mode] >> 20  # (Pillow keeps LA in 4 bytes)
    assert peak(data, [73, 73, 3]) - small <= (len(data) >> 20) + held + 64, (mode, small, len(data) >> 20, held)
