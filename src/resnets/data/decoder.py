"""The image decoder that untrusted bytes meet: Pillow alone (and numpy), no torch, run in capped worker processes
(data/sandbox.py starts them as `python -m resnets.data.decoder`) so that a limit a decoder could talk past is
enforced by the operating system instead.

What a worker does with each image, in this order:
1. its format by signature against an allow-list (JPEG, PNG, WebP, BMP, GIF, TIFF: the README's); anything else
   (ICO and ICNS, whose Pillow plugins decode inside `Image.open`, AVIF, QOI, DDS, ...) is refused unread;
2. its header, read by that format's plugin only, with Pillow's own decompression-bomb limit on (at our limit);
3. its cost in bytes, width x height x channels x bytes per sample (16-bit, int32 and float TIFFs count 2 and 4),
   against the budget; then the address-space limit (RLIMIT_AS) set to what that decode needs, so a header that
   lies ends in MemoryError, not in gigabytes;
4. the decode at the size the consumer needs: a JPEG larger than `gap` times that size is decoded with libjpeg's
   DCT scaling (Pillow's `draft`, as `Image.thumbnail` does), any other format is reduced by a whole factor right
   after decoding (`Image.reduce`), converted and reduced a band of rows at a time (`reduced`: no converted copy at
   full size); `exact` decodes at full size. The first frame only; EXIF orientation applied;
5. the pixels as uint8 RGB or L with no float64 copy (16-bit, int32 and float images are scaled band by band).

The protocol on stdin/stdout: a request is a 4-byte length, that many bytes of JSON, an 8-byte length and the
image's bytes; a reply is a 4-byte length and JSON ({"ok": true, "shape": [h, w, c], ...} or {"ok": false, "kind",
"reason"}), then an 8-byte length and the pixels. Standard library, Pillow and numpy only: importing this module
(and `resnets`, `resnets.data` above it) never loads torch.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import signal
import struct
import sys
import warnings

# the formats read, by signature (the README's list); Pillow's plugin names for each
ALLOWED = {
    "JPEG": ("JPEG", "MPO"),
    "PNG": ("PNG",),
    "GIF": ("GIF",),
    "BMP": ("BMP",),
    "TIFF": ("TIFF",),
    "WEBP": ("WEBP",),
}
ALLOWED_TEXT = "JPEG, PNG, WebP, BMP, GIF and TIFF"
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
# formats refused by name, so the one line says what the file is
_OTHERS = (
    (b"\x00\x00\x01\x00", "an ICO icon"),
    (b"icns", "an ICNS icon"),
    (b"qoif", "a QOI image"),
    (b"DDS ", "a DDS texture"),
    (b"\x01\xda", "an SGI image"),
    (b"8BPS", "a Photoshop file"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 file"),
    (b"\xffO\xffQ", "a JPEG 2000 codestream"),
    (b"%PDF", "a PDF file"),
    (b"II+\x00", "a BigTIFF file"),
    (b"MM\x00+", "a BigTIFF file"),
)

# bytes per sample of Pillow's modes (what a decoded image holds per channel)
_BYTES_PER_SAMPLE = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I;16S": 2}
# bytes per pixel that Pillow keeps in memory for a mode (RGB and every 3-4 channel mode are stored in 4 bytes)
_MEMORY_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I;16S": 2}
SLACK = 48 << 20  # address space above the decode's own needs (the decoders' tables and buffers)
MEMORY_CAP = "over the decoder's memory cap"
# what a header may take beyond twice the file's bytes (a TIFF's tag tables, an animated WebP's canvases)
HEADER_MEMORY = 192 << 20


class Refused(Exception):
    """An image refused or failed: `kind` is one of datasets.BAD_KINDS."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def signature(data: bytes) -> str | None:
    """The allowed format `data` starts with, or None."""
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_format(data: bytes) -> str:
    """The allowed format of `data` by its signature, or Refused before any decoder sees it."""
    if not data:
        raise Refused("empty", "empty file")
    fmt = signature(data)
    if fmt is not None:
        return fmt
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1"):
        what = "an AVIF/HEIF image"
    else:
        what = next((name for magic, name in _OTHERS if data.startswith(magic)), None)
    if what is None:
        raise Refused("not_an_image", f"not an image (the formats read are {ALLOWED_TEXT})")
    raise Refused("unsupported_format", f"{what}; the formats read are {ALLOWED_TEXT}")


def first_line(e: BaseException) -> str:
    """The first line of a decoder's message, without the repr of our own buffer (`<_io.BytesIO object at 0x..>`)."""
    text = re.sub(r"<[^<>]* object at 0x[0-9a-fA-F]+>", "the data", str(e)).strip()
    return text.splitlines()[0][:120] if text else type(e).__name__


def open_header(data: bytes, max_pixels: int):
    """(the Pillow image, its format) with only the header read: the allowed format's own plugin, Pillow's bomb
    limit on at `max_pixels` (a warning is an error), our limit checked too. Refused when anything is wrong."""
    from PIL import Image

    fmt = check_format(data)
    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's own check: an error at twice it (ours, with the size, below)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ALLOWED[fmt])
            w, h = im.size
    except Image.DecompressionBombError as e:
        n = re.search(r"\((\d+) pixels\)", str(e))
        what = f"{int(n.group(1)):,} pixels" if n else "the image"
        raise Refused("too_many_pixels", f"{what}, over the limit of {max_pixels:,} (--max-pixels raises it)") from None
    except MemoryError:
        raise Refused("too_many_pixels", f"{MEMORY_CAP}: its header alone needed more") from None
    except Exception as e:  # Pillow raises many types for broken headers
        raise Refused("corrupt_image", f"a broken {fmt} file: its header cannot be read ({first_line(e)})") from None
    if w * h > max_pixels or w <= 0 or h <= 0:
        raise Refused(
            "too_many_pixels",
            f"{w}x{h} is {w * h:,} pixels, over the limit of {max_pixels:,} (--max-pixels raises it)",
        )
    return im, fmt


def sample_bytes(im) -> int:
    """Bytes per sample of the image as stored: its mode's, or its data's where that is deeper (a 16-bit RGBA PNG
    is read into 8-bit RGBA, from 16-bit samples)."""
    per = _BYTES_PER_SAMPLE.get(im.mode, 1)
    for tile in getattr(im, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str):
            per = max(per, 4 if "32" in raw else 2 if "16" in raw else 1)
    return per


def declared_bytes(im) -> int:
    """width x height x channels x bytes per sample: what the decoded image holds."""
    w, h = im.size
    return w * h * len(im.getbands()) * sample_bytes(im)


def check_bytes(im, max_bytes: int) -> None:
    n = declared_bytes(im)
    if n > max_bytes:
        w, h = im.size
        bands, per = len(im.getbands()), sample_bytes(im)
        raise Refused(
            "too_many_pixels",
            f"{w}x{h} x {bands} channel{'s' * (bands > 1)} x {per} byte{'s' * (per > 1)} per sample is {n:,} bytes, "
            f"over the decode budget of {max_bytes:,} (--max-pixels raises it)",
        )


def orientation(im, fmt: str) -> int:
    """EXIF orientation from the header (1: upright): JPEG, TIFF and WebP read it with the header."""
    if fmt not in ("JPEG", "TIFF", "WEBP"):
        return 1
    try:
        o = im.getexif().get(0x0112, 1)
    except Exception:
        return 1
    return o if isinstance(o, int) and 1 <= o <= 8 else 1


def reduction(size: tuple[int, int], short: int | None, long: int | None, gap: float) -> int:
    """The whole factor an image of `size` may be reduced by and still be at least `gap` times what a consumer
    that resizes its shorter side to `short` (its longer side to at most `long`) needs; 1: none."""
    if not short:
        return 1
    w, h = size
    scale = short / min(w, h)
    if long:
        scale = min(scale, long / max(w, h))
    return max(1, int(1 / (gap * scale))) if scale * gap < 1 else 1


def _deep(mode: str) -> bool:
    return mode in ("I", "F") or mode.startswith("I;16")


def decoded_size(width: int, height: int, fmt: str, short: int | None, long: int | None, gap: float) -> tuple[int, int]:
    """The size `decode` gives an image of width x height (before its EXIF turn) for a consumer of `short`/`long`:
    a JPEG by libjpeg's 1/2, 1/4 or 1/8 first (Pillow's draft picks the largest that keeps what was asked), then
    the whole factor. For counting pixels before decoding (the server's admission); a CMYK JPEG, which is not
    drafted, comes out no larger than this says after the whole factor."""
    factor = reduction((width, height), short, long, gap)
    if factor > 1 and fmt == "JPEG":
        want = (math.ceil(width / factor), math.ceil(height / factor))
        scale = min(width // want[0], height // want[1])
        draft = next(s for s in (8, 4, 2, 1) if scale >= s)
        width, height = math.ceil(width / draft), math.ceil(height / draft)
        factor = reduction((width, height), short, long, gap)
    return math.ceil(width / factor), math.ceil(height / factor)


def memory_needed(im, channels: int, factor: int, orient: int = 1, full: tuple[int, int] | None = None) -> int:
    """Bytes the decode of `im` (after draft) may hold at once, step by step as `decode` goes: the decoded image,
    its 8-bit or colour copy at full size where one is made (unreduced), or one band of rows cut, made 8-bit,
    converted and reduced (`reduced`), the reduced or converted image, the upright copy and the pixels sent back;
    and what the decoders keep beside the image: a progressive JPEG's coefficients at its stored size (`full`:
    libjpeg keeps them whatever the DCT scaling), a compressed TIFF's strip or tile buffer (counted as a second
    image)."""
    w, h = im.size
    n, mode = w * h, im.mode
    held = n * _MEMORY_PER_PIXEL.get(mode, 4)
    colour = 4 if channels == 3 else 1
    if factor > 1:
        # a band: cut (4 bytes a pixel at most), numpy's copies of a deep one (16), converted (4), reduce's own (4)
        eight = _band_rows(factor) * w * 28
        m = n // (factor * factor) + w + h
        after = m * (4 + colour + 4 + channels)  # reduced, converted, upright, sent
    else:
        eight = n + 512 * w * 16 if _deep(mode) or mode == "1" else 0  # an L copy, made 512 rows at a time
        after = n * (colour + (colour if orient != 1 else 0) + channels)
    beside = 0
    if im.format in ("JPEG", "MPO") and (im.info.get("progressive") or im.info.get("progression")):
        fw, fh = full or im.size
        beside = fw * fh * 2 * max(3, len(im.getbands()))  # 16-bit coefficients of every component
    elif im.format == "TIFF" and im.info.get("compression", "raw") != "raw":
        beside = declared_bytes(im)
    return held + eight + after + beside + SLACK


def _scaled_rows(im, fn):
    """`im` (I;16, I or F) as an L image, `fn` (a numpy band -> uint8 band) applied 512 rows at a time: no full-size
    float copy."""
    import numpy as np
    from PIL import Image

    w, h = im.size
    out = bytearray(w * h)
    for top in range(0, h, 512):
        band = np.asarray(im.crop((0, top, w, min(h, top + 512))))
        out[top * w : top * w + band.size] = fn(band).astype(np.uint8).tobytes()
    return Image.frombuffer("L", (w, h), out, "raw", "L", 0, 1)


def _eight_bit(im):
    """How a 16-bit, int32 or float image becomes 8-bit, as before: a numpy band -> uint8 band function, chosen
    from the whole image (16-bit scaled by 255/65535, int32 too when it holds values above 255, else taken as is,
    float clipped to [0, 255]; rounded)."""
    import numpy as np

    def scaled(b):  # (b * 255 + 32767) // 65535, in place: one copy of the band
        b *= 255
        b += 32767
        b //= 65535
        return b

    if im.mode.startswith("I;16"):
        return lambda a: scaled(a.astype(np.uint32))
    if im.mode == "I":
        lo, hi = im.getextrema()
        if hi > 255:
            return lambda a: scaled(np.clip(a, 0, 65535).astype(np.int64))
        return lambda a: np.clip(a, 0, 255)
    return lambda a: np.clip(np.nan_to_num(a, nan=0.0), 0, 255).round()


def to_8bit(im):
    """A 16-bit, int32 or float image as 8-bit grey ("L") (`_eight_bit`'s scaling)."""
    return _scaled_rows(im, _eight_bit(im))


def to_mode(im, channels: int, eight=None):
    """`im` as "RGB" (channels 3) or "L" (1): alpha dropped, palettes expanded, CMYK converted, deep images scaled
    (by `eight`, when a band of an image is given: the whole image's scaling)."""
    if _deep(im.mode):
        im = _scaled_rows(im, eight) if eight is not None else to_8bit(im)
    if im.mode == "1":
        im = im.convert("L")
    want = "RGB" if channels == 3 else "L"
    return im if im.mode == want else im.convert(want)


def _band_rows(factor: int) -> int:
    """The rows of a band `reduced` converts at once: about 512, a whole number of `factor`s."""
    return max(1, 512 // factor) * factor


def reduced(im, channels: int, factor: int):
    """`im` as to_mode gives it, reduced by the whole `factor` (Pillow's box average, `Image.reduce`), a band of
    rows at a time: the full-size image is never converted whole (a palette or 1-bit image of 9459x9459 made an RGB
    copy of 358 MB; one with alpha, reduce's premultiplied copy as large). Bands are whole numbers of `factor`
    rows, so every box averages the pixels it would in the whole image."""
    from PIL import Image

    w, h = im.size
    rows = _band_rows(factor)
    eight = _eight_bit(im) if _deep(im.mode) else None
    # reduced in the smallest mode that gives the same result: grey stays grey (1, 16-bit, LA: made L first)
    grey = channels == 1 or im.mode in ("1", "LA", "La") or eight is not None
    out = Image.new("RGB" if channels == 3 else "L", (math.ceil(w / factor), math.ceil(h / factor)))
    for top in range(0, h, rows):
        box = (0, top, w, min(h, top + rows))
        if im.mode in ("L", "RGB"):
            band = im.reduce(factor, box)  # no copy of the band
        else:
            band = to_mode(im.crop(box), 1 if grey else 3, eight).reduce(factor)
        out.paste(to_mode(band, channels), (0, top // factor))
    return out


def _set_address_space(limit: int | None) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = resource.RLIM_INFINITY if limit is None else limit
    if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft > hard):
        soft = hard
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def address_space() -> int | None:
    """This process's virtual size in bytes (what RLIMIT_AS counts); None where /proc does not say (macOS, whose
    kernel does not enforce RLIMIT_AS anyway: there the time cap and the budget in bytes remain)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def decode(data: bytes, req: dict, *, capped: bool = False):
    """The image in `data` as (pixels: bytes, (h, w, c), info), or Refused. `req`: channels (1 or 3), max_pixels,
    max_bytes, short / long (the consumer's resize; None: full size), gap, exact, max_aspect (with a shorter side
    to resize to and no longest side: the thinnest image taken, its long side over its short one). With `capped` the address space
    is limited to the decode's needs while it runs."""
    from PIL import ImageOps

    channels = int(req.get("channels", 3))
    base = address_space() if capped else None
    if base is not None:  # a header's tables (a TIFF's strip offsets, ...) within bounds too
        _set_address_space(base + HEADER_MEMORY + 2 * len(data))
    try:
        im, fmt = open_header(data, int(req["max_pixels"]))
        full = im.size
        check_bytes(im, int(req["max_bytes"]))
        orient = orientation(im, fmt)  # a quarter turn swaps the sides: their min and max stay
        if req.get("op") == "header":
            return b"", (0, 0, 0), {"format": fmt, "width": full[0], "height": full[1], "orientation": orient}
        if req.get("op") == "labels":  # a mask: its values as stored (class indices), full size, no conversion
            return _labels(im, base)
        thin = req.get("max_aspect")  # resized to a shorter side, a sliver would grow without bound: refused
        if thin and req.get("short") and req.get("long") is None and max(full) > thin * max(min(full), 1):
            side = req["short"] * max(full) // max(min(full), 1)
            raise Refused(
                "too_many_pixels",
                f"{full[0]}x{full[1]} is thinner than 1:{thin:g}: its shorter side resized to {req['short']} would "
                f"make it {side:,} pixels long",
            )
        short, long = (None, None) if req.get("exact") else (req.get("short"), req.get("long"))
        gap = float(req.get("gap", 2.0))
        factor = reduction(full, short, long, gap)
        if factor > 1 and fmt == "JPEG" and im.mode in ("RGB", "L", "YCbCr"):
            want = (math.ceil(full[0] / factor), math.ceil(full[1] / factor))
            im.draft("RGB" if channels == 3 else "L", want)  # libjpeg's DCT scaling: 1/2, 1/4 or 1/8, at least `want`
            factor = reduction(im.size, short, long, gap)
        if base is not None:  # from what the header holds now (bounded above): an animated WebP's decoder, ...
            _set_address_space(max(base, address_space() or base) + memory_needed(im, channels, factor, orient, full))
        im.load()  # the first frame only
        im = reduced(im, channels, factor) if factor > 1 else to_mode(im, channels)
        if orient != 1:
            im = ImageOps.exif_transpose(im)
        pixels = im.tobytes()
    except MemoryError:
        raise Refused("too_many_pixels", f"{MEMORY_CAP}: decoding it needed more than its header promised") from None
    except Refused:
        raise
    except Exception as e:  # a known format whose data is broken
        raise Refused("corrupt_image", f"cannot decode image ({first_line(e)})") from None
    finally:
        if base is not None:
            _set_address_space(None)
    w, h = im.size
    # the full size as the decoded image stands (Pillow already reports a turned TIFF's size upright)
    upright = full if orient not in (5, 6, 7, 8) or (w >= h) == (full[0] >= full[1]) else full[::-1]
    return pixels, (h, w, channels), {"format": fmt, "size": list(upright)}


_LABEL_DTYPES = {"L": "uint8", "P": "uint8", "I;16": "uint16", "I": "int32"}


def _labels(im, base: int | None):
    """A one-channel image's values as stored: (bytes, (h, w, 1), {"dtype"}), or Refused for other modes."""
    if im.mode not in _LABEL_DTYPES:
        raise Refused("corrupt_image", f"a mask has one channel of class indices; this one is {im.mode}")
    w, h = im.size
    if base is not None:
        _set_address_space(max(base, address_space() or base) + 2 * declared_bytes(im) + SLACK)
    im.load()
    return im.tobytes(), (h, w, 1), {"format": im.format, "size": [w, h], "dtype": _LABEL_DTYPES[im.mode]}


def peak_mb() -> int | None:
    """This worker's peak resident memory since it started, in MB (VmHWM; None where /proc does not say)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return None


def _read_exact(f, n: int) -> bytes:
    out = f.read(n)
    if len(out) != n:
        raise EOFError
    return out


def serve(stdin=None, stdout=None) -> None:
    """The worker's loop: a request in, a reply out, until stdin closes. After a MemoryError the worker exits (the
    pool starts a fresh one)."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but replies on the protocol's stream
    while True:
        try:
            (n,) = struct.unpack("<I", _read_exact(stdin, 4))
            req = json.loads(_read_exact(stdin, n))
            (m,) = struct.unpack("<Q", _read_exact(stdin, 8))
            data = _read_exact(stdin, m)
        except EOFError:
            return
        pixels, fresh = b"", True
        try:
            pixels, shape, info = decode(data, req, capped=True)
            reply = {"ok": True, "shape": list(shape), **info}
        except Refused as e:
            reply = {"ok": False, "kind": e.kind, "reason": e.reason}
            fresh = not e.reason.startswith(MEMORY_CAP)
        except MemoryError:
            reply, fresh = {"ok": False, "kind": "too_many_pixels", "reason": MEMORY_CAP}, False
        del data
        reply["peak_mb"], reply["exit"] = peak_mb(), not fresh  # a worker that hit its cap is not used again
        head = json.dumps(reply).encode()
        stdout.write(struct.pack("<I", len(head)) + head + struct.pack("<Q", len(pixels)))
        stdout.write(pixels)
        stdout.flush()
        if not fresh:
            return


def _limit_process() -> None:
    """What a decoder may not do whatever its input: write files, start processes' worth of threads."""
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


if __name__ == "__main__":
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    # a scheduler's stop signals every process of a job: the process that started this one decides (a training run
    # finishes its step, images and all); it stops a decoder with SIGKILL, and one whose parent is gone meets EOF
    for s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, signal.SIG_IGN)
    _limit_process()
    import numpy  # noqa: F401  (loaded before any cap: the libraries are not an image's memory)
    from PIL import Image

    Image.init()  # every plugin, for the same reason
    serve()
