"""Which requests the server takes on. A request is admitted while the pixels its images will hold decoded, added to
those of the requests in flight, stay within the budget (Limits.max_pixels_in_flight), and the work queued ahead of
it (the batcher's estimate, from the batches it measured) leaves it time to be answered by its deadline; otherwise
it is answered 503 with Retry-After at once, before anything is decoded. Pixels are counted from each image's
header (datasets.read_header: no pixel decoded) as the decoder will reduce it for the model."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..data.datasets import DECODE_GAP, exact_decode
from ..data.decoder import decoded_size
from .batcher import MARGIN, SMOOTHING, Batcher
from .limits import HTTPFailure


@dataclass(eq=False)
class Job:
    """One request in flight: its deadline (event-loop time), the pixels it holds, whether the model started on it."""

    deadline: float
    held: int = 0  # pixels its images hold decoded (or fed to the model), until it is answered
    work: int = 0  # model pixels of its images not yet handed to the batcher
    started: bool = False  # one of its images went into a model batch
    body_read: asyncio.Event | None = None  # set when its body has been read (its client can be watched)


def decoded_pixels(width: int, height: int, fmt: str, size: int | tuple[int, int | None] | None) -> int:
    """The pixels an image of `width` x `height` has once decoded for a consumer of `size` (datasets.decode_sized's
    `size`), as data/decoder.py's decoded_size says, for counting before decoding."""
    short, long = (size, None) if isinstance(size, int) or size is None else size
    if exact_decode() or not short:
        return width * height
    w, h = decoded_size(width, height, fmt, short, long, DECODE_GAP)
    return w * h


class Admission:
    """The pixel budget and the time check of the requests one service takes on."""

    def __init__(self, max_pixels: int, batcher: Batcher):
        self.max_pixels, self.batcher = max_pixels, batcher
        self.held = 0  # pixels held by the requests admitted and not yet answered
        self.decoding = 0  # model pixels of their images not yet queued in the batcher (being decoded)
        self.decode_s_per_pixel: float | None = None  # seconds per header pixel of one decode, measured

    def admit(self, job: Job, held: int, work: int, decode_s: float) -> None:
        """Take `job` on (its images: `held` pixels decoded, `work` model pixels, `decode_s` seconds of decoding),
        or raise HTTPFailure: 413 when it alone is over the budget, 503 with Retry-After when the requests in flight
        leave it no room or no time. A request that would miss its deadline even alone (a model slower than the time
        limit) is taken on: nothing but it could be blamed."""
        if held > self.max_pixels:
            raise HTTPFailure(
                413,
                f"the images hold {held:,} pixels decoded, over the server's budget of {self.max_pixels:,} "
                "(--max-pixels-in-flight)",
                kind="too_many_pixels",
            )
        ahead = self.batcher.wait_s(self.decoding)  # the batch running, the queue, the images being decoded
        own = self.batcher.estimate(work) + decode_s
        now = asyncio.get_running_loop().time()
        late = now + MARGIN * (ahead + own) > job.deadline and now + MARGIN * own <= job.deadline
        if self.held + held > self.max_pixels or late:
            why = (
                "this request would not be answered in time"
                if late
                else f"{self.held:,} pixels in flight, and this request's {held:,} would pass the budget of "
                f"{self.max_pixels:,}"
            )
            raise self.batcher.busy(ahead, why)
        self.held += held
        self.decoding += work
        job.held, job.work = held, work

    def queued(self, job: Job) -> None:
        """`job`'s images are decoded and in the batcher's queue, which counts them from now on."""
        self.decoding -= job.work
        job.work = 0

    def release(self, job: Job) -> None:
        """`job` is answered (or gone): what it held is free."""
        self.queued(job)
        self.held -= job.held
        job.held = 0

    def decoded(self, pixels: int, seconds: float) -> None:
        """One image of `pixels` (its header's) took `seconds` to decode."""
        if pixels > 0 and seconds > 0:  # a moving average: formats differ (a PNG is slower than a scaled JPEG)
            now, old = seconds / pixels, self.decode_s_per_pixel
            self.decode_s_per_pixel = now if old is None else (1 - SMOOTHING) * old + SMOOTHING * now

    def decode_estimate(self, pixels: list[int], workers: int) -> float:
        """Seconds to decode images of these header `pixels` on `workers` decoders (0 before any was measured)."""
        if not pixels or self.decode_s_per_pixel is None:
            return 0.0
        return self.decode_s_per_pixel * max(max(pixels), sum(pixels) / max(1, workers))
