import pytest
import torch
from torch import nn

# tests that need a GPU: skipped without one; `pytest -m cuda` runs only them (the whole suite is slow there)
cuda = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]


def needs_cuda(fn):
    for mark in cuda:
        fn = mark(fn)
    return fn


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters, so a parity test would notice a BN that is
    misplaced or misnamed (fresh BNs are identities in eval mode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            elif isinstance(m, nn.GroupNorm):  # no statistics: the affine parameters
                n = m.num_channels
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model


@pytest.fixture(autouse=True, scope="session")
def _private_home(tmp_path_factory):
    """Caches the tests write (ONNX exports, weights) go to a temporary home, never the user's."""
    import os

    old = os.environ.get("RESNETS_HOME")
    os.environ["RESNETS_HOME"] = str(tmp_path_factory.mktemp("resnets-home"))
    yield
    if old is None:
        os.environ.pop("RESNETS_HOME", None)
    else:
        os.environ["RESNETS_HOME"] = old


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty weights cache and torch.hub dir, so no test sees or writes a user's files."""
    monkeypatch.setenv("RESNETS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "home" / "weights"


def run_cli(*args) -> tuple[int, str, str]:
    """`resnets ARGS` run in this process: (exit code, stdout, stderr). A subprocess would pay ~6 s of imports
    (torch, torchvision) per call; tests that need a process of their own (signals, torchrun, environment
    variables, the console script) start one themselves."""
    import contextlib
    import io
    import os
    from unittest import mock

    from resnets.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), mock.patch.dict(os.environ):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    return code, out.getvalue(), err.getvalue()


def every_format(size=(48, 40)) -> dict[str, bytes]:
    """One small image in each format and mode a user's folder or an upload may hold, as file bytes by file name:
    colour, grey, palette, alpha, 16-bit; JPEG, PNG, GIF and WebP (still and animated), BMP, TIFF."""
    import io

    import numpy as np
    from PIL import Image

    w, h = size
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    frames = [Image.new("RGB", size, c) for c in ((200, 30, 30), (30, 30, 200), (30, 200, 30))]
    images = {
        "rgb.jpg": (rgb, "JPEG", {}),
        "grey.jpg": (rgb.convert("L"), "JPEG", {}),
        "cmyk.jpg": (rgb.convert("CMYK"), "JPEG", {}),
        "rgb.png": (rgb, "PNG", {}),
        "rgba.png": (rgb.convert("RGBA"), "PNG", {}),
        "grey.png": (rgb.convert("L"), "PNG", {}),
        "grey-alpha.png": (rgb.convert("LA"), "PNG", {}),
        "palette.png": (rgb.convert("P"), "PNG", {}),
        "deep.png": (Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)), "PNG", {}),
        "anim.png": (frames[0], "PNG", {"save_all": True, "append_images": frames[1:]}),
        "still.gif": (rgb, "GIF", {}),
        "anim.gif": (frames[0], "GIF", {"save_all": True, "append_images": frames[1:]}),
        "rgb.webp": (rgb, "WEBP", {}),
        "rgba.webp": (rgb.convert("RGBA"), "WEBP", {"lossless": True}),
        "anim.webp": (frames[0], "WEBP", {"save_all": True, "append_images": frames[1:]}),
        "rgb.bmp": (rgb, "BMP", {}),
        "grey.tif": (rgb.convert("L"), "TIFF", {}),
        "rgb.tif": (rgb, "TIFF", {}),
    }
    out = {}
    for name, (im, fmt, kw) in images.items():
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        out[name] = buf.getvalue()
    return out


def png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, *before_pixels: bytes, pixels: bool = False) -> bytes:
    """A grey PNG whose header claims width x height, with `before_pixels` chunks between the header and the
    pixel data; the pixel data (zeros, compressed to almost nothing) only with `pixels`."""
    import struct
    import zlib

    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    idat = b""
    if pixels:
        z = zlib.compressobj(9)
        row = bytes(width + 1)
        idat = png_chunk(b"IDAT", b"".join(z.compress(row) for _ in range(height)) + z.flush())
    return b"\x89PNG\r\n\x1a\n" + ihdr + b"".join(before_pixels) + idat + png_chunk(b"IEND", b"")


def broken_headers() -> dict[str, bytes]:
    """Known formats whose header cannot be read: each must be refused before any decoder sees its pixels."""
    import io

    from PIL import Image

    jpeg = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(jpeg, "JPEG")
    gif = io.BytesIO()
    Image.new("RGB", (64, 48)).save(gif, "GIF")
    return {
        # chunks Pillow refuses while reading the header (an unknown compression method), before 20000x20000 pixels
        "ztxt.png": png_claiming(2000, 2000, png_chunk(b"zTXt", b"k\x00\x01junk"), pixels=True),
        "iccp.png": png_claiming(2000, 2000, png_chunk(b"iCCP", b"p\x00\x01junk"), pixels=True),
        "jpeg-cut-in-header.jpg": jpeg.getvalue()[:40],
        "gif-cut-in-header.gif": gif.getvalue()[:9],
    }
