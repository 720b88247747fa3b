"""Image bytes read and decoded under bounds with no torch in the process (data/images.py)."""

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from resnets.data.datasets import decode_bytes
from resnets.data.images import BadSample, decode_array, read_image_file


def test_decode_array_is_what_decode_bytes_gives_as_a_tensor():
    """The same pixels, (H, W, C) numpy here, (C, H, W) torch there, and the image's full size."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(buf, "PNG")
    array, full = decode_array(buf.getvalue(), "x.png", 3)
    assert array.shape == (40, 60, 3) and array.dtype == np.uint8 and full == (60, 40)
    assert np.array_equal(array.transpose(2, 0, 1), decode_bytes(buf.getvalue(), "x.png", 3).numpy())
    grey, _ = decode_array(buf.getvalue(), "x.png", 1)
    assert grey.shape == (40, 60, 1)


def test_decode_array_reduces_a_large_image_to_twice_the_size_asked():
    buf = io.BytesIO()
    Image.new("RGB", (2000, 1000), (200, 10, 10)).save(buf, "JPEG")
    array, full = decode_array(buf.getvalue(), "big.jpg", 3, size=100)
    assert full == (2000, 1000) and 200 <= array.shape[0] < 500  # libjpeg's DCT scaling, never below twice


def test_failures_are_bad_samples(tmp_path):
    with pytest.raises(BadSample, match="no such file"):
        read_image_file(tmp_path / "missing.jpg")
    with pytest.raises(BadSample) as e:
        decode_array(b"GIF89a not really", "x.gif", 3)
    assert e.value.kind in ("corrupt_image", "not_an_image")
    with pytest.raises(BadSample) as e:
        decode_array(b"\x00\x00\x01\x00" + bytes(100), "x.ico", 3)  # ICO: refused by signature, before any decoder
    assert e.value.kind in ("unsupported_format", "not_an_image")


def test_imports_no_torch():
    code = "import sys, resnets.data.images, resnets.onnx_predict; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
