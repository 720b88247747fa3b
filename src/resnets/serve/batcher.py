"""Dynamic batching: images from concurrent requests gathered into one model batch; a failed batch run again image by
image, so a failure stays with the request that caused it. The batcher times its batches (seconds per model pixel),
so it can say how long the work queued takes (`wait_s`, what admission reads) and never starts an image that would
be answered after its request's deadline because of the queue ahead of it: that image is answered 503 at once.
Work that cannot be batched (Grad-CAM's backward pass) runs in a Lane: one at a time in a thread of its own, queued
and timed the same way."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import torch

from .limits import HTTPFailure

# estimates of time are trusted this much less than they say: a batch predicted to end just before a deadline
# is not started
MARGIN = 1.5
# how fast the estimate of seconds per pixel follows the batches measured (an exponential moving average)
SMOOTHING = 0.3


class _Item:
    __slots__ = ("image", "future", "arrived", "deadline", "pixels", "job")

    def __init__(self, image, future: asyncio.Future, arrived: float, deadline: float | None, pixels: int, job):
        self.image, self.future, self.arrived, self.deadline = image, future, arrived, deadline
        self.pixels, self.job = pixels, job


def busy(wait_s: float, why: str) -> HTTPFailure:
    """The 503 of a request the work ahead of it (`wait_s` seconds) leaves no room: Retry-After is when that work
    should be done."""
    wait = max(1, math.ceil(wait_s))
    return HTTPFailure(
        503,
        f"the server is busy: {why} (about {wait} s of work ahead of it); retry later",
        {"Retry-After": str(wait)},
        "overloaded",
    )


def queue_full(pending: int, max_queue: int) -> HTTPFailure:
    return HTTPFailure(
        503,
        f"the queue is full ({pending} images waiting, at most {max_queue}); retry shortly",
        {"Retry-After": "1"},
        "queue_full",
    )


class Timed:
    """A queue of model work that measures itself: seconds per model pixel, and so how long the work queued in it
    takes (`wait_s`)."""

    seconds_per_pixel: float | None = None  # measured (warm-up, then every run)

    def measured(self, pixels: int, seconds: float) -> None:
        """A run of `pixels` model pixels took `seconds`: the estimate rises to it at once (an estimate too low
        starts work that ends past its deadline), and falls towards it smoothly."""
        if pixels > 0 and seconds > 0:
            self.seconds_per_pixel = slower(self.seconds_per_pixel, seconds / pixels)

    def estimate(self, pixels: int) -> float:
        """Seconds the model takes for `pixels` model pixels (0 before anything was measured)."""
        return (self.seconds_per_pixel or 0.0) * pixels

    def wait_s(self, pixels: int = 0) -> float:
        raise NotImplementedError

    def busy(self, ahead_s: float | None = None, why: str = "this request would not be answered in time"):
        """The 503 of a request the work ahead of it (`ahead_s` seconds, default what is queued) leaves no room."""
        return busy(self.wait_s() if ahead_s is None else ahead_s, why)


class Lane(Timed):
    """Work that runs one image at a time (Grad-CAM: a backward pass per image) in a thread of its own, in arrival
    order: a bounded executor (at most `max_queue` jobs waiting; the rest 503), timed per model pixel so admission
    can refuse at once a request the lane would answer late. A job the queue made late by the time its turn comes
    is answered 503 without being run. Times are time.monotonic(), the clock of asyncio's loops."""

    def __init__(self, max_queue: int, name: str = "resnets-lane"):
        self.max_queue, self.name = max_queue, name
        self.pending = 0  # jobs waiting or running
        self.queued_pixels = 0  # their model pixels
        self._started: float | None = None  # when the job running began
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=self.name)
        self.pending = self.queued_pixels = 0

    async def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def wait_s(self, pixels: int = 0) -> float:
        """Seconds until the jobs in the lane and `pixels` more model pixels are done."""
        started = self._started
        running_for = time.monotonic() - started if started is not None else 0.0
        return max(0.0, self.estimate(self.queued_pixels + pixels) - running_for)

    async def submit(self, fn, pixels: int, *, deadline: float | None = None, job=None):
        """`fn()` run in the lane (`pixels`: the model pixels it works on); `job.started` is set when it starts."""
        if self.pending >= self.max_queue:
            raise queue_full(self.pending, self.max_queue)
        loop = asyncio.get_running_loop()
        self.pending += 1
        self.queued_pixels += pixels
        future = self._pool.submit(self._call, fn, pixels, time.monotonic(), deadline, job)
        future.add_done_callback(lambda _: _soon(loop, self._left, pixels))  # run, failed or cancelled unstarted
        return await asyncio.wrap_future(future)  # cancelled (the request is gone): a job not started never runs

    def _call(self, fn, pixels: int, arrived: float, deadline: float | None, job):
        start = time.monotonic()
        own = MARGIN * self.estimate(pixels)
        if deadline is not None and start + own > deadline and arrived + own <= deadline:  # late because of the queue
            raise self.busy(self.estimate(self.queued_pixels))
        if job is not None:
            job.started = True
        self._started = start
        try:
            return fn()
        finally:
            self._started = None
            self.measured(pixels, time.monotonic() - start)

    def _left(self, pixels: int) -> None:
        self.pending -= 1
        self.queued_pixels -= pixels


def _soon(loop, fn, *args) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed (the app stopped): nothing is counted any more
        pass


class Batcher(Timed):
    """Images in, one row of `run`'s output each, run in batches of up to `max_batch` gathered for at most
    `max_wait_s` after the first arrives (less when its deadline is near). `run` runs in one thread of its own."""

    def __init__(
        self, run, max_batch: int, max_wait_s: float, max_queue: int, observe_batch=None, collate=None, cost=None
    ):
        """collate: the images of a batch as `run` takes them (default torch.stack; a detector takes a list of
        images of any size). cost: the pixels the model works on for an image (default its height x width; a
        detector enlarges a small image to its min_size first)."""
        self.run, self.max_batch, self.max_wait_s, self.max_queue = run, max_batch, max_wait_s, max_queue
        self.collate = collate or torch.stack
        self.cost = cost or (lambda im: im.shape[-1] * im.shape[-2])
        self.observe_batch = observe_batch or (lambda n: None)
        self.pending = 0  # images waiting
        self.queued_pixels = 0  # their model pixels
        self.batches = 0  # batches run (a failed batch's images run again alone count as one)
        self._running_until = 0.0  # when the batch running now should end (loop time)
        self._queue: deque[_Item] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Called when the app starts (each time: an app can be started, stopped and started again)."""
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="resnets-infer")
        self._queue.clear()
        self.pending = self.queued_pixels = 0
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)

    def wait_s(self, pixels: int = 0) -> float:
        """Seconds until the images queued now, the batch running and `pixels` more model pixels are done."""
        now = asyncio.get_running_loop().time()
        return max(0.0, self._running_until - now) + self.estimate(self.queued_pixels + pixels)

    async def submit(self, images: list, *, deadline: float | None = None, job=None) -> list:
        """Each image's row of `run`'s output. `deadline` (loop time): an image that the queue ahead would make miss
        it is answered 503 instead of being run; `job.started` is set when one of them goes into a batch."""
        if self.pending + len(images) > self.max_queue:
            raise queue_full(self.pending, self.max_queue)
        loop = asyncio.get_running_loop()
        now = loop.time()
        items = [_Item(im, loop.create_future(), now, deadline, int(self.cost(im)), job) for im in images]
        for it in items:
            self._queue.append(it)
            self.pending += 1
            self.queued_pixels += it.pixels
            it.future.add_done_callback(lambda _, it=it: self._forget(it))
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(it.future for it in items)))
        finally:
            for it in items:
                it.future.cancel()  # a request gone (timed out, its client disconnected): its images are not run

    def _forget(self, item: _Item) -> None:
        """An image answered or cancelled while queued leaves the queue (and what admission counts) at once."""
        try:
            self._queue.remove(item)
        except ValueError:
            return  # taken into a batch already
        self.pending -= 1
        self.queued_pixels -= item.pixels

    def _take(self, item: _Item) -> None:
        self._queue.remove(item)
        self.pending -= 1
        self.queued_pixels -= item.pixels

    def _batch(self, now: float) -> list[_Item]:
        """The next batch from the head of the queue: up to max_batch images, each of which (and every one
        before it) is still answered by its deadline if the batch starts now. An image the queue has made too
        late is answered 503; one that would be late even alone (the model is slower than the time limit) is run."""
        batch: list[_Item] = []
        pixels, first_deadline = 0, math.inf
        while self._queue and len(batch) < self.max_batch:
            it = self._queue[0]
            deadline = it.deadline if it.deadline is not None else math.inf
            done = now + MARGIN * self.estimate(pixels + it.pixels)
            if done > min(deadline, first_deadline):
                if batch:
                    break  # it waits for the next batch, which ends sooner for it than this one grown
                if it.arrived + MARGIN * self.estimate(it.pixels) <= deadline:  # late because of the queue
                    self._take(it)
                    _settle(it, error=self.busy())
                    continue
            self._take(it)
            batch.append(it)
            pixels += it.pixels
            first_deadline = min(first_deadline, deadline)
        return batch

    async def _gather(self, loop) -> None:
        """Wait until the queue holds a batch's worth, or max_wait_s after the first image arrived; never more than
        half the time that image has left to its deadline, its own run aside."""
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        first = self._queue[0]
        until = first.arrived + self.max_wait_s
        if first.deadline is not None:  # at most half the time it has left past its own run
            until = min(
                until, first.arrived + (first.deadline - first.arrived - MARGIN * self.estimate(first.pixels)) / 2
            )
        while len(self._queue) < self.max_batch and self._queue:
            left = until - loop.time()
            if left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except (asyncio.TimeoutError, TimeoutError):
                break

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._gather(loop)
            batch = self._batch(loop.time())
            live = [it for it in batch if not it.future.done()]
            if not live:
                continue
            for it in live:
                if it.job is not None:
                    it.job.started = True
            self.observe_batch(len(live))
            self.batches += 1
            pixels = sum(it.pixels for it in live)
            start = loop.time()
            self._running_until = start + self.estimate(pixels)
            try:
                out = await loop.run_in_executor(self._pool, self.run, self.collate([it.image for it in live]))
            except Exception as e:
                if len(live) == 1:
                    _settle(live[0], error=e)
                    continue
                # one image can break a whole batch: each is run alone, so a failure stays with the image (and the
                # request) that caused it and every other request is answered as usual
                for it in live:
                    try:
                        row = (await loop.run_in_executor(self._pool, self.run, self.collate([it.image])))[0]
                    except Exception as e1:
                        _settle(it, error=e1)
                    else:
                        _settle(it, row)
                continue
            finally:
                self._running_until = 0.0
            self.measured(pixels, loop.time() - start)
            for it, row in zip(live, out):
                _settle(it, row)


def slower(average: float | None, now: float) -> float:
    """An estimate of seconds per pixel after one more measurement: the slower of it and the moving average."""
    return now if average is None else max(now, (1 - SMOOTHING) * average + SMOOTHING * now)


def _settle(item: _Item, row: torch.Tensor | None = None, error: Exception | None = None) -> None:
    if not item.future.done():  # a timed-out request's future is cancelled already
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(row)
