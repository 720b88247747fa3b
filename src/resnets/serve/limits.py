"""What a request may be and how a refusal is answered: the limits, the one-line HTTP failures, reading a bounded
body (in bytes and in time) and the images in it, header-safe text."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_upload_mb: float = 20.0  # one request's body
    max_files: int = 64  # images in one request
    max_queue: int = 256  # images decoded and waiting for the model
    timeout_s: float = 30.0  # from the request's arrival to its answer
    max_pixels: int | None = None  # None: the process's limit (--max-pixels, $RESNETS_MAX_PIXELS)
    # pixels the requests in flight may hold decoded (each image counted from its header, as the decoder reduces it
    # for the model, or the model's input if larger); a request that would pass it is 503 with Retry-After, one
    # alone over it 413. 64 MP is 192 MB of uint8 RGB: sized for a 2-core machine with a few GB (a 9000 x 9000 JPEG
    # for a detector of 800 / 1333 counts 5 MP, decoded at 1/4). Under --exact-decode (images held whole) it grows to
    # one image at max_pixels (admission.pixel_budget), so no image within the pixel limit is refused for it alone
    max_pixels_in_flight: int = 64_000_000
    # seconds a request's whole body may take to arrive (at most timeout_s); a slower one, a client that stalls or
    # sends a byte a second, is 408 and its connection closed: its bytes are not held for the whole time limit
    body_timeout_s: float = 10.0


class HTTPFailure(Exception):
    """A request answered with `status` and a one-line `detail` (and extra headers)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None, kind: str = "bad_request"):
        super().__init__(detail)
        self.status, self.detail, self.headers, self.kind = status, detail, headers or {}, kind


# how the server answers an image it cannot use, by BadSample.kind: a format not read is 415 like a non-image; one
# whose decoder overran its time cap is 422, as a broken one (the image is the problem, not the server's load)
STATUS_OF_KIND = {
    "too_many_pixels": 413,
    "corrupt_image": 422,
    "too_slow": 422,
    "empty": 400,
    "unreadable": 422,
    "not_an_image": 415,
    "unsupported_format": 415,
}


async def read_body(request, limit: int, timeout_s: float | None = None) -> bytearray:
    """The request's body, refused with 413 as soon as it is longer than `limit` bytes (by its Content-Length, or
    while it streams in: no more than `limit` bytes are ever held, in one buffer), and with 408 when the whole of it
    has not arrived `timeout_s` seconds after reading began (a deadline on the total, so a client sending a byte a
    second is cut off like one that stalls)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPFailure(413, f"the upload is {int(length):,} bytes, over the limit of {limit:,}", kind="too_large")
    body = bytearray()

    async def read() -> None:
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                raise HTTPFailure(413, f"the upload is over the limit of {limit:,} bytes", kind="too_large")
            body.extend(chunk)

    try:
        await asyncio.wait_for(read(), timeout_s)
    except (asyncio.TimeoutError, TimeoutError):
        raise slow_body(timeout_s, len(body)) from None
    return body


def slow_body(seconds: float, received: int | None = None) -> HTTPFailure:
    """The 408 of a request whose body did not arrive within `seconds` (its connection is closed after it)."""
    got = f" ({received:,} bytes came)" if received is not None else ""
    return HTTPFailure(
        408,
        f"the request body did not arrive within {seconds:g} s{got}; send it faster, or smaller",
        {"Connection": "close"},
        "slow_upload",
    )


async def images_of(request, body: bytes, limits: Limits) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image sent: the files of a multipart form, or the raw body (an image/* or
    application/octet-stream request)."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        async def once():
            yield body
            yield b""

        try:
            form = await MultiPartParser(request.headers, once(), max_files=limits.max_files, max_fields=100).parse()
        except MultiPartException as e:
            if "Too many files" in e.message:  # the limit the README and --max-files name: 413, in our words
                raise HTTPFailure(
                    413, f"more than {limits.max_files} images in one request (--max-files)", kind="too_large"
                ) from None
            raise HTTPFailure(400, f"bad multipart form: {e.message}") from None
        files = [
            (f.filename or f"file{i}", await f.read())
            for i, (_, f) in enumerate(form.multi_items())
            if isinstance(f, UploadFile)
        ]
        await form.close()
    elif ctype.startswith(("image/", "application/octet-stream")) or (body and not ctype):
        files = [("body", body)]
    else:
        raise HTTPFailure(
            415,
            f"send images as multipart/form-data files or as an image/* body, not {ctype or 'nothing'}",
            kind="not_an_image",
        )
    if not files or not any(data for _, data in files):
        raise HTTPFailure(400, "no image in the request", kind="no_image")
    if len(files) > limits.max_files:
        raise HTTPFailure(413, f"{len(files)} images in one request; at most {limits.max_files}", kind="too_large")
    return files


def header_safe(text: str) -> str:
    """Any text as a valid HTTP header value: control characters (newlines, escape codes) and non-ASCII escaped."""
    return text.encode("unicode_escape").decode("ascii")
