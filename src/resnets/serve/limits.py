"""What a request may be and how a refusal is answered: the limits, the one-line HTTP failures, reading a bounded
body (in bytes, in time, and within the bytes all bodies in flight may hold) and the images in it, header-safe
text."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

MB = 1024 * 1024  # bytes in the MB of --max-upload-mb and --max-upload-mb-in-flight


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
    # MB of request bodies all requests together may hold, from the moment one is read (its Content-Length, taken
    # before a byte is read; a chunked one's bytes as they arrive) until its images are decoded; a request that would
    # pass it is 503 with Retry-After at once, one alone over it 413. Without it 80 clients stalling 19 MB into
    # 20 MB bodies held 2.9 GB, and pixel admission starts only once a body has arrived. None: 256 MB, or four
    # bodies at max_upload_mb if that is more (so raising --max-upload-mb alone never makes a body unservable)
    max_upload_mb_in_flight: float | None = None

    def upload_budget(self) -> int:
        """max_upload_mb_in_flight in bytes (its default when None)."""
        mb = self.max_upload_mb_in_flight
        return int((max(256.0, 4 * self.max_upload_mb) if mb is None else mb) * MB)


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


class UploadBudget:
    """The bytes of request bodies one app holds (Limits.max_upload_mb_in_flight), shared by all its requests; each
    holds its share through an Upload. One event loop uses it: no lock."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.held = 0  # bytes taken by the bodies being read or decoded

    def upload(self) -> Upload:
        """One request's share, empty until its body is read; given back when the `with` block ends."""
        return Upload(self)


class Upload:
    """One request's share of an UploadBudget: it grows to what the body declares or has sent, and is given back
    whole on `release` (or leaving its `with` block: the body decoded, refused, timed out or cancelled)."""

    def __init__(self, budget: UploadBudget):
        self.budget, self.bytes = budget, 0

    def grow(self, size: int) -> None:
        """Hold `size` bytes in all (nothing to do if this share holds that many): 413 when `size` alone is over the
        whole budget, 503 with Retry-After at once when the other bodies in flight leave no room. The 503 closes the
        connection: the rest of the body is not read."""
        more, budget = size - self.bytes, self.budget
        if more <= 0:
            return
        if size > budget.max_bytes:
            raise HTTPFailure(
                413,
                f"the upload is {size:,} bytes, over the {budget.max_bytes:,} that all uploads in flight may hold "
                "(--max-upload-mb-in-flight)",
                kind="too_large",
            )
        if budget.held + more > budget.max_bytes:
            raise HTTPFailure(
                503,
                f"the server is busy: {budget.held:,} bytes of uploads in flight, and this one's {size:,} would pass "
                f"the budget of {budget.max_bytes:,}; retry shortly",
                {"Retry-After": "1", "Connection": "close"},
                "uploads_full",
            )
        budget.held += more
        self.bytes = size

    def release(self) -> None:
        self.budget.held -= self.bytes
        self.bytes = 0

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *_) -> None:
        self.release()


async def read_body(request, limit: int, timeout_s: float | None = None, upload: Upload | None = None) -> bytearray:
    """The request's body, refused with 413 as soon as it is longer than `limit` bytes (by its Content-Length, or
    while it streams in: no more than `limit` bytes are ever held, in one buffer), and with 408 when the whole of it
    has not arrived `timeout_s` seconds after reading began (a deadline on the total, so a client sending a byte a
    second is cut off like one that stalls). With `upload`, its bytes are taken from the app's budget first: what
    the Content-Length declares before a byte is read, else each chunk as it arrives (Upload.grow: 503, 413); the
    caller gives them back."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPFailure(413, f"the upload is {int(length):,} bytes, over the limit of {limit:,}", kind="too_large")
    if upload is not None and length is not None and length.isdigit():
        upload.grow(int(length))
    body = bytearray()

    async def read() -> None:
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                raise HTTPFailure(413, f"the upload is over the limit of {limit:,} bytes", kind="too_large")
            if upload is not None:
                upload.grow(len(body) + len(chunk))
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
