import functools
import os

# `make test` runs a pytest-xdist worker per core: each computes on its share of the cores (two workers of two
# threads on two cores would oversubscribe them, OpenMP's spinning threads waiting on each other); set before torch
# and numpy start their thread pools, and inherited by the commands the tests run. OMP_NUM_THREADS given wins.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    _cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cpus // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.io import encode_jpeg, write_png

import resnets
from resnets.weights import Preprocessing

# the architectures torchvision builds and publishes ImageNet weights for (written out, not read from resnets)
TORCHVISION_NETS = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]

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


def count_batch_norms(monkeypatch) -> list:
    """A list that gains an entry each time a batch norm runs (F.batch_norm, which every BatchNorm layer calls)."""
    calls = []
    real = nn.functional.batch_norm
    monkeypatch.setattr(nn.functional, "batch_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.fixture(autouse=True, scope="session")
def _private_home(tmp_path_factory):
    """Caches the tests write (ONNX exports, weights) go to a temporary home, never the user's."""
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


def one_line_error(code: int, err: str, *needles: str) -> None:
    """The command failed as bad input does: exit code 2, one line naming every one of `needles`, no traceback."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1 and all(n in lines[0] for n in needles), err


def saved_weights(path) -> dict:
    """The tensors of a saved model file (safetensors), to compare two runs' weights."""
    from safetensors.torch import load_file

    return load_file(str(path))


# a training run of a few seconds: resnet20 on 256 synthetic 32x32 images of 2 classes, one epoch, no workers
TINY_RUN = [
    "--model",
    "resnet20",
    "--dataset",
    "synthetic",
    "--synthetic-samples",
    "256",
    "--synthetic-classes",
    "2",
    "--train-crop",
    "32",
    "--batch-size",
    "16",
    "--epochs",
    "1",
    "--workers",
    "0",
    "--no-progress",
    "--device",
    "cpu",
]

# a short Fashion-MNIST run for the engine's tests (TrainConfig overrides)
SMALL_RUN = dict(limit_train=1024, limit_val=256, batch_size=64, epochs=2, lr=0.05, progress=False, workers=0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from skimage import data as sk

    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    imgs = {
        "astronaut.jpg": sk.astronaut(),
        "coffee.png": sk.coffee(),
        "sub/chelsea.jpg": sk.chelsea(),
        "camera.png": sk.camera(),
        "sub/rocket.webp": sk.rocket(),
    }
    for name, arr in imgs.items():
        t = torch.from_numpy(np.ascontiguousarray(arr))
        t = t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()
        if name.endswith(".jpg"):
            (root / name).write_bytes(encode_jpeg(t).numpy().tobytes())
        elif name.endswith(".png"):
            write_png(t, str(root / name))
        else:
            from PIL import Image

            Image.fromarray(arr).save(root / name)
    (root / "notes.txt").write_text("not an image")
    good = (root / "astronaut.jpg").read_bytes()
    (root / "sub" / "truncated.jpg").write_bytes(good[:2000])
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A resnet18 of 4 classes (cat, coffee, person, rocket) saved with its record and preprocessing."""
    torch.manual_seed(0)
    m = resnets.create_model("resnet18", num_classes=4)
    m.eval()
    path = tmp_path_factory.mktemp("m") / "r18.safetensors"
    resnets.save(
        m,
        path,
        class_names=["cat", "coffee", "person", "rocket"],
        preprocessing=Preprocessing(84, 72, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).to_dict(),
    )
    return path


@pytest.fixture(scope="session")
def r18_file(tmp_path_factory):
    """A resnet18 with 5 named classes and non-trivial norms, its preprocessing 72 -> 64: for export's tests."""
    torch.manual_seed(0)
    m = randomize_norms(resnets.create_model("resnet18", num_classes=5))
    path = tmp_path_factory.mktemp("exp") / "r18.safetensors"
    resnets.save(m, path, class_names=list("abcde"), preprocessing=Preprocessing(72, 64).to_dict())
    return path


def cifar_archive(path, n_per_batch=20):
    """A CIFAR-10 archive in the official format (python pickles in a .tar.gz) of random images."""
    import io
    import pickle
    import tarfile

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:

        def add(name, obj):
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i in range(1, 6):
            add(
                f"data_batch_{i}",
                {
                    b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                    b"labels": [int(x) for x in rng.integers(0, 10, n_per_batch)],
                },
            )
        add(
            "test_batch",
            {
                b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                b"labels": list(range(10)) * (n_per_batch // 10),
            },
        )
        add("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    path.write_bytes(buf.getvalue())


# --- serving: `resnets serve` in a subprocess, or the app in this process; shared by tests/serve and tests/cli ---

SERVE_CLASSES = ["astronaut", "cat", "coffee", "rocket", "other"]
GREY_CLASSES = ["dark", "\x1b[2Jclass\n", "light"]  # a class (folder) name with an escape code and a newline


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`resnets serve` in a subprocess on a free port, waited for until /readyz says ready."""

    def __init__(self, weights, *args, env=None):
        import subprocess
        import sys
        import time
        from pathlib import Path

        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "resnets", "serve", "--weights", str(weights), "--port", str(self.port)]
        cmd += ["--device", "cpu", *map(str, args)]
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"resnets-serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not get ready: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


async def in_process(api, requests):
    """Each (method, path, kwargs) sent at once to `api` running in this process (its lifespan included)."""
    import asyncio

    import httpx

    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            return await asyncio.gather(*(client.request(m, u, **kw) for m, u, kw in requests))


@pytest.fixture(scope="session")
def serve_files(tmp_path_factory):
    """A small classifier with named classes, and real photos as JPEG and PNG: (weights, photos, folder)."""
    from PIL import Image
    from skimage import data as sk

    d = tmp_path_factory.mktemp("serve")
    model = randomize_norms(resnets.create_model("resnet18", num_classes=len(SERVE_CLASSES))).eval()
    weights = resnets.save(
        model, d / "model.safetensors", class_names=SERVE_CLASSES, preprocessing=Preprocessing(72, 64)
    )
    photos = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(sk, name)()).save(d / f"{name}.jpg", quality=92)
        photos.append(d / f"{name}.jpg")
    Image.fromarray(sk.coffee()).save(d / "coffee.png")
    photos.append(d / "coffee.png")
    return weights, photos, d


@pytest.fixture(scope="session")
def live_server(serve_files):
    """One `resnets serve` for the tests that only send it good requests (started once for the session)."""
    pytest.importorskip("httpx")
    s = Server(serve_files[0], "--max-batch", 8, "--max-wait-ms", 40, "--backend", "eager", "--workers-decode", 2)
    yield s
    assert s.stop() == 0, s.output()


@pytest.fixture(scope="session")
def grey_model(tmp_path_factory):
    """A 1-channel model (as Fashion-MNIST's), one class name with control characters."""
    model = randomize_norms(resnets.create_model("resnet20", num_classes=3, in_chans=1)).eval()
    pre = Preprocessing(36, 32, mean=(0.5,), std=(0.25,))
    return resnets.save(
        model, tmp_path_factory.mktemp("grey") / "grey.safetensors", class_names=GREY_CLASSES, preprocessing=pre
    )


# ---- detection: one small shapes set and one detector trained on it for a few steps, shared by the tests
TINY_DETECTOR = [
    "--model", "fasterrcnn_resnet50_fpn", "--backbone", "resnet18", "--box-batch-size-per-image", "32",
    "--dataset", "coco", "--min-size", "64", "--max-size", "64", "--batch-size", "4", "--lr", "0.01",
    "--workers", "0", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="session")
def shapes_set(tmp_path_factory):
    """`resnets data shapes`: 16 training and 6 validation images of 64 x 64."""
    from resnets.data.shapes import generate

    root = tmp_path_factory.mktemp("shapes") / "set"
    generate(root, train=16, val=6, size=64, seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_detector(shapes_set, tmp_path_factory):
    """A run folder of the detector above, trained 2 epochs (8 steps) on the shapes set."""
    out = tmp_path_factory.mktemp("detector-runs")
    code, printed, err = run_cli(
        "train", *TINY_DETECTOR, "--data", shapes_set, "--epochs", "2", "--out", out, "--name", "r"
    )
    assert code == 0, err
    assert "box mAP" in printed and "on 6 validation images" in printed and f"{out / 'r'}" in printed
    return out / "r"


TINY_SEGMENTER = [
    "--model", "deeplabv3_resnet50", "--backbone", "resnet18", "--output-stride", "16", "--dataset", "masks",
    "--batch-size", "4", "--lr", "0.01", "--workers", "0", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_segmenter(shapes_set, tmp_path_factory):
    """A run folder of the segmenter above, trained 2 epochs (8 steps) on the shapes set's masks."""
    out = tmp_path_factory.mktemp("segmenter-runs")
    code, printed, err = run_cli(
        "train", *TINY_SEGMENTER, "--data", shapes_set, "--epochs", "2", "--out", out, "--name", "r"
    )
    assert code == 0, err
    assert "mIoU" in printed and "on 6 validation images" in printed
    return out / "r"


def tiff_pages(*pages: tuple[int, int, int, int]) -> bytes:
    """A little-endian grey TIFF of uncompressed pages, each (width, height, bits per sample, sample format: 1
    unsigned, 2 signed, 3 float), holding one strip of at most 4 KB of zeros: a page's header may claim far more
    pixels than the file holds."""
    import struct

    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for n, (width, height, bits, fmt) in enumerate(pages):
        data = bytes(min(4096 if n == 0 else 16, width * height * bits // 8))
        entries = [
            (256, 4, width),
            (257, 4, height),
            (258, 3, bits),
            (259, 3, 1),
            (262, 3, 1),
            (273, 4, 0),  # the strip's offset, set below
            (277, 3, 1),
            (278, 4, height),
            (279, 4, len(data)),
            (339, 3, fmt),
        ]
        ifd_at = len(out)
        data_at = ifd_at + 2 + 12 * len(entries) + 4
        out += struct.pack("<H", len(entries))
        for tag, kind, value in entries:
            value = data_at if tag == 273 else value
            out += struct.pack("<HHI", tag, kind, 1) + (
                struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
            )
        out += struct.pack("<I", 0 if n == len(pages) - 1 else data_at + len(data))
        out += data
    return bytes(out)


def hostile_images() -> dict[str, tuple[str, bytes]]:
    """Images made to cost far more memory than their bytes, by class: (class, file bytes) by file name. The classes
    (issue 36): over the pixel limit by their header ("dimensions"), under it but over the budget in bytes
    ("bytes per sample": 16-bit, int32, float), a small image wrapping a huge one ("container"), many frames or
    pages ("frames"), and formats not read at all ("disallowed"). Each one a few KB; none may cost more than the
    decoder's caps."""
    return dict(_hostile_images())  # a copy: a test may change its dict, never the next test's


@functools.cache
def _hostile_images() -> dict[str, tuple[str, bytes]]:
    """hostile_images, made once a process (a few seconds of encoding, the same bytes every time)."""
    import io
    import struct

    from PIL import Image

    def saved(im, fmt, **kw) -> bytes:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    small = Image.new("RGB", (64, 48), (9, 99, 199))
    jpeg = saved(small, "JPEG")
    sof = jpeg.index(b"\xff\xc0")
    bmp, gif = saved(small, "BMP"), saved(small, "GIF")
    webp = saved(small, "WEBP", lossless=True)
    vp8l = webp.index(b"VP8L") + 9
    bits = int.from_bytes(webp[vp8l : vp8l + 4], "little") & ~0xFFFFFFF | (16000 - 1) | (16000 - 1) << 14
    huge_png = png_claiming(25000, 25000)
    ico = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(huge_png), 22) + huge_png
    icns_body = b"ic10" + struct.pack(">I", 8 + len(huge_png)) + huge_png
    frames = [Image.new("RGB", (2500, 2500), (i * 20, 0, 0)) for i in range(12)]  # 25 MB a frame decoded
    grey = [f.convert("L") for f in frames]
    return {
        "dims.jpg": ("dimensions", jpeg[: sof + 5] + struct.pack(">HH", 60000, 60000) + jpeg[sof + 9 :]),
        "dims.png": ("dimensions", png_claiming(30000, 30000)),
        "dims.webp": ("dimensions", webp[:vp8l] + bits.to_bytes(4, "little") + webp[vp8l + 4 :]),
        "dims.bmp": ("dimensions", bmp[:18] + struct.pack("<ii", 30000, 30000) + bmp[26:]),
        "dims.gif": ("dimensions", gif[:6] + struct.pack("<HH", 65535, 65535) + gif[10:]),
        "dims.tif": ("dimensions", tiff_pages((30000, 30000, 8, 1))),
        "rgba16.png": ("bytes per sample", _png16_claiming(7000, 7000)),
        "int32.tif": ("bytes per sample", tiff_pages((9000, 9000, 32, 2))),
        "float.tif": ("bytes per sample", tiff_pages((9000, 9000, 32, 3))),
        "icon.jpg": ("container", ico),  # named as a JPEG: the signature decides
        "apple.tif": ("container", b"icns" + struct.pack(">I", 8 + len(icns_body)) + icns_body),
        "pages.tif": ("container", tiff_pages((64, 48, 8, 1), *[(30000, 30000, 8, 1)] * 200)),
        "frames.gif": ("frames", _gif_frames_on_a_canvas(2000, 4000, 4000)),
        "frames.webp": ("frames", saved(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)),
        "frames.png": ("frames", saved(grey[0], "PNG", save_all=True, append_images=grey[1:], compress_level=1)),
        "qoi.jpg": ("disallowed", b"qoif" + struct.pack(">II", 30000, 30000) + b"\x04\x00" + bytes(64)),
        "dds.png": ("disallowed", b"DDS " + bytes(124)),
        "avif.webp": ("disallowed", struct.pack(">I", 24) + b"ftypavif" + bytes(12)),
        "sgi.bmp": ("disallowed", b"\x01\xda\x00\x01\x00\x03" + struct.pack(">HHH", 30000, 30000, 3) + bytes(500)),
    }


def _png16_claiming(width: int, height: int) -> bytes:
    """A 16-bit RGBA PNG header claiming width x height (8 bytes a pixel), with a few bytes of pixel data."""
    import struct
    import zlib

    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"IDAT", zlib.compress(bytes(64))) + png_chunk(b"IEND", b"")


def _gif_frames_on_a_canvas(frames: int, width: int, height: int) -> bytes:
    """An animated GIF of `frames` one-pixel frames on a width x height canvas: a few KB that a decoder of every
    frame turns into frames x width x height x 3 bytes."""
    import struct

    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = (
        b"\x21\xf9\x04\x00\x01\x00\x00\x00" + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    )
    return head + frame * frames + b"\x3b"
