"""Image bytes from anywhere (files, uploads, shards), read and decoded under enforced bounds, with no torch in
the process: the file read refused unread past the budget, the header read and the pixels decoded in the sandbox
(data/sandbox.py: capped worker processes), the format allowed by signature, the pixel limit and the budget in
bytes checked before any pixel is decoded; every failure a BadSample naming its kind. datasets.py makes tensors of
what this gives; the ONNX Runtime path of `resnets predict` (onnx_predict.py) uses it as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .sandbox import Failed, decode_timeout, pool

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class BadSample(Exception):
    """An image that cannot be used; the loader skips and counts it (or stops, with strict data). `kind` says
    why, for callers that answer differently (a server's status codes): one of BAD_KINDS."""

    def __init__(self, path: str, reason: str, kind: str = "unreadable"):
        assert kind in BAD_KINDS, kind
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.kind = path, reason, kind

    def __reduce__(self):  # crosses from loader worker processes
        return (BadSample, (self.path, self.reason, self.kind))


BAD_KINDS = (
    "unreadable",  # no such file, not a file, a read error; or an image the transform cannot take (too small)
    "empty",  # no bytes at all
    "too_many_pixels",  # over the pixel limit or the decode budget in bytes, or the decoder's memory cap
    "not_an_image",  # no decoder knows its format
    "unsupported_format",  # an image of a format not read (ICO, ICNS, AVIF, ...): refused before any decoder runs
    "corrupt_image",  # a known format whose data is broken (a truncated JPEG or PNG), or a decoder that crashed
    "too_slow",  # its decoder overran the time cap
)


# images larger than this many pixels are refused from their header, before any decoding (decompression
# bombs: a 1 MB PNG can hold 20000 x 20000 pixels); RESNETS_MAX_PIXELS (or --max-pixels) sets it. Pillow's own
# default limit. The decode budget in bytes is 3 bytes a pixel of it (8-bit RGB): width x height x channels x
# bytes per sample, so a 16-bit RGBA image (8 bytes a pixel) gets 3/8 of the pixels.
DEFAULT_MAX_PIXELS = 89_478_485
BYTES_PER_PIXEL_BUDGET = 3

# the most bytes a file may have per pixel of the limit before it is refused unread: the decode budget's (an image
# stored raw within the budget is no larger; anything past that is not pixels the decoder may keep)
BYTES_PER_PIXEL_BOUND = BYTES_PER_PIXEL_BUDGET
# seconds a header may take to read (the time cap, at most): markers and tables, no pixels
HEADER_TIMEOUT = 5.0

# how much larger than what the consumer needs an image is decoded (a JPEG by DCT scaling, anything else reduced by
# a whole factor right after decoding), as Pillow's thumbnail's reducing_gap: the resize that follows still
# averages at least two pixels per output pixel. RESNETS_EXACT_DECODE=1 (--exact-decode) decodes at full size.
DECODE_GAP = 2.0

# the thinnest image decoded for a consumer that resizes its shorter side (a classifier's resize): a 1 x 100,000
# sliver holds few pixels, but resized to 256 it would be 25.6 million pixels long (20 GB of floats, outside any
# cap). 1:64 keeps panoramas; refused from the header, before any pixel is decoded
MAX_ASPECT = 64


def max_pixels() -> int:
    """The pixel limit in force: $RESNETS_MAX_PIXELS (set by --max-pixels, and seen by loader workers), else the
    default."""
    try:
        return int(os.environ.get("RESNETS_MAX_PIXELS", DEFAULT_MAX_PIXELS))
    except ValueError:
        return DEFAULT_MAX_PIXELS


def exact_decode() -> bool:
    """Whether images are decoded at full size whatever the consumer needs ($RESNETS_EXACT_DECODE, --exact-decode):
    for bit-exact reproduction of a full-size pipeline."""
    return os.environ.get("RESNETS_EXACT_DECODE", "") not in ("", "0")


@dataclass(frozen=True)
class Header:
    """What an image's header says, read before any pixel is decoded."""

    format: str  # JPEG, PNG, GIF, WEBP, BMP, TIFF (by signature; the allow-list)
    width: int
    height: int
    orientation: int  # EXIF orientation: 1 is upright (or unknown)


def _ask(req: dict, data: bytes, name: str, limit: int | None, timeout: float | None = None) -> tuple[dict, bytearray]:
    """The sandbox's answer to `req` about the image `data` (named `name`), under the pixel limit `limit` (default
    the process's) and its budget in bytes: (reply, pixels), or its BadSample."""
    if not data:
        raise BadSample(name, "empty file", "empty")
    limit = max_pixels() if limit is None else limit
    req = {**req, "max_pixels": limit, "max_bytes": limit * BYTES_PER_PIXEL_BUDGET}
    try:
        reply, pixels = pool().decode(req, data, timeout=timeout)
    except Failed as e:
        raise BadSample(name, e.reason, e.kind) from None
    if not reply.get("ok"):
        kind = reply.get("kind") if reply.get("kind") in BAD_KINDS else "corrupt_image"
        raise BadSample(name, str(reply.get("reason", "cannot decode image"))[:200], kind)
    return reply, pixels


def read_header(data: bytes, name: str, limit: int | None = None) -> Header:
    """The header of the image in `data`, read in the sandbox (a TIFF's tables or a JPEG's markers can cost memory
    and time before a single pixel) by the plugin of its format only (the format known by its signature and
    allowed), refused if it is over the pixel limit (`limit`, default the process's) or the decode budget in bytes.
    Fails closed: an image whose size cannot be read from its header is never decoded."""
    reply, _ = _ask({"op": "header"}, data, name, limit, timeout=min(HEADER_TIMEOUT, decode_timeout()))
    return Header(str(reply["format"]), int(reply["width"]), int(reply["height"]), int(reply["orientation"]))


def read_image_file(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """A file's bytes, refused unread when it is larger than any image within the pixel limit can be."""
    path = os.fspath(path)
    limit = max_pixels() if limit is None else limit
    try:
        size = os.stat(path).st_size
        if not os.path.isfile(path):
            raise BadSample(path, "not a file")
        if size > limit * BYTES_PER_PIXEL_BOUND + (1 << 20):
            raise BadSample(
                path,
                f"{size:,} bytes is more than any image within the pixel limit of {limit:,} holds "
                "(--max-pixels raises it)",
                "too_many_pixels",
            )
        with open(path, "rb") as f:
            return f.read(limit * BYTES_PER_PIXEL_BOUND + (1 << 20) + 1)
    except FileNotFoundError:
        raise BadSample(path, "no such file") from None
    except OSError as e:
        raise BadSample(path, f"cannot read file ({e.strerror or e})") from None


def decode_array(
    data: bytes,
    name: str,
    channels: int = 3,
    *,
    max_pixels: int | None = None,
    size: int | tuple[int, int | None] | None = None,
):
    """The image in `data` decoded in the sandbox as a numpy uint8 array (H, W, channels), and its full (width,
    height), upright; or BadSample. `size` as datasets.decode_bytes takes it (what the consumer resizes to: the
    image is decoded no larger than twice that)."""
    short, long = (size, None) if isinstance(size, int) or size is None else size
    req = {"channels": channels, "short": short, "long": long, "gap": DECODE_GAP, "exact": exact_decode()}
    reply, pixels = _ask({**req, "max_aspect": MAX_ASPECT}, data, name, max_pixels)
    h, w, c = reply["shape"]
    if len(pixels) != h * w * c or c != channels:
        raise BadSample(name, "the decoder sent back a malformed image", "corrupt_image")
    full_w, full_h = reply.get("size") or (w, h)
    return np.frombuffer(pixels, dtype=np.uint8).reshape(h, w, c), (int(full_w), int(full_h))


def decode_labels(data: bytes, name: str, *, max_pixels: int | None = None):
    """A mask (a one-channel PNG of class indices: L, P, 16- or 32-bit) decoded in the sandbox, its values as
    stored, at full size: a numpy array (H, W) of uint8, uint16 or int32; or BadSample."""
    reply, pixels = _ask({"op": "labels"}, data, name, max_pixels)
    h, w, _ = reply["shape"]
    dtype = np.dtype(str(reply.get("dtype"))).newbyteorder("<")
    if dtype.name not in ("uint8", "uint16", "int32") or len(pixels) != h * w * dtype.itemsize:
        raise BadSample(name, "the decoder sent back a malformed mask", "corrupt_image")
    return np.frombuffer(pixels, dtype).reshape(h, w)
