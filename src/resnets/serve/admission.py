"""Which requests the server takes on. A request is admitted while the pixels its images will hold decoded, added to
those of the requests in flight, stay within the budget (Limits.max_pixels_in_flight), and the work queued ahead of
it (the estimate of the queue it joins, the batcher or Grad-CAM's lane, from the work it measured) leaves it time to
be answered by its deadline; otherwise it is answered 503 with Retry-After at once, before anything is decoded. A
request that could never be taken on, even alone (more pixels than the whole budget, more images than the queue
holds), is 413 at once, naming the flag to raise. Pixels are counted from each image's header (datasets.read_header:
no pixel decoded) as the decoder will reduce it for the model."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..data.datasets import DECODE_GAP, exact_decode, max_pixels
from ..data.decoder import decoded_size
from .batcher import MARGIN, SMOOTHING, Batcher, Lane, Timed
from .limits import HTTPFailure, Limits


@dataclass(eq=False)
class Job:
    """One request in flight: its deadline (event-loop time), the pixels it holds, whether the model started on it."""

    deadline: float
    held: int = 0  # pixels its images hold decoded (or fed to the model), until it is answered
    work: int = 0  # model pixels of its images not yet handed to the queue that runs them
    queue: Timed | None = None  # that queue: the batcher, or a lane (Grad-CAM)
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


def pixel_budget(limits: Limits) -> int:
    """The pixels in flight a service takes on: Limits.max_pixels_in_flight, grown under --exact-decode to hold one
    image at the pixel limit (--max-pixels) whole. Decoded at full size, such an image alone would pass the default
    budget and could never be served; a budget is a bound on concurrency, not a second, hidden pixel limit."""
    if not exact_decode():
        return limits.max_pixels_in_flight
    return max(limits.max_pixels_in_flight, limits.max_pixels or max_pixels())


class Admission:
    """The pixel budget and the time check of the requests one service takes on."""

    def __init__(self, max_pixels: int, batcher: Batcher):
        self.max_pixels, self.batcher = max_pixels, batcher
        self.held = 0  # pixels held by the requests admitted and not yet answered
        self.decoding: dict[Timed, int] = {}  # model pixels of their images not yet queued, by queue (decoding)
        self.decode_s_per_pixel: float | None = None  # seconds per header pixel of one decode, measured

    def check_count(self, images: int) -> None:
        """413 for a request of more images than the batcher's queue holds: it could never be queued."""
        if images > self.batcher.max_queue:
            raise HTTPFailure(
                413,
                f"{images} images in one request, more than the queue holds ({self.batcher.max_queue}; --max-queue)",
                kind="too_large",
            )

    def admit(self, job: Job, held: int, work: int, decode_s: float, lane: Lane | None = None, images: int = 1) -> None:
        """Take `job` on (its `images`: `held` pixels decoded, `work` model pixels, `decode_s` seconds of decoding)
        for the batcher, or for `lane` when it runs there (Grad-CAM), or raise HTTPFailure: 413 when it could never
        be taken on (over the whole budget; several images whose own work, by the plain estimate, outlasts the time
        limit), 503 with Retry-After when the requests in flight leave it no room or no time. One image that would
        miss its deadline even alone (a model slower than the time limit) is taken on: nothing but it could be
        blamed, and nothing smaller could be sent."""
        if held > self.max_pixels:
            raise HTTPFailure(
                413,
                f"the images hold {held:,} pixels decoded, over the server's budget of {self.max_pixels:,} "
                "(--max-pixels-in-flight)",
                kind="too_many_pixels",
            )
        queue = lane or self.batcher
        ahead = queue.wait_s(self.decoding.get(queue, 0))  # the work running, the queue, the images being decoded
        own = queue.estimate(work) + decode_s
        now = asyncio.get_running_loop().time()
        if images > 1 and now + own > job.deadline:
            raise HTTPFailure(
                413,
                f"the {images} images of this request take about {own:.1f} s here, more than the "
                f"{max(0.0, job.deadline - now):.1f} s the time limit leaves it (--timeout-s): send fewer at a time, "
                "or raise it",
                kind="too_large",
            )
        late = now + MARGIN * (ahead + own) > job.deadline and now + MARGIN * own <= job.deadline
        if self.held + held > self.max_pixels or late:
            why = (
                "this request would not be answered in time"
                if late
                else f"{self.held:,} pixels in flight, and this request's {held:,} would pass the budget of "
                f"{self.max_pixels:,}"
            )
            raise queue.busy(ahead, why)
        self.held += held
        self.decoding[queue] = self.decoding.get(queue, 0) + work
        job.held, job.work, job.queue = held, work, queue

    def queued(self, job: Job) -> None:
        """`job`'s images are decoded and in their queue, which counts them from now on."""
        if job.queue is not None:
            self.decoding[job.queue] -= job.work
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
