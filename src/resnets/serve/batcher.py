"""Dynamic batching: images from concurrent requests gathered into one model batch; a failed batch run again image by
image, so a failure stays with the request that caused it."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from .limits import HTTPFailure


class _Item:
    __slots__ = ("image", "future", "arrived")

    def __init__(self, image: torch.Tensor, future: asyncio.Future):
        self.image, self.future, self.arrived = image, future, time.perf_counter()


class Batcher:
    """Images in, one row of `run`'s output each, run in batches of up to `max_batch` gathered for at most
    `max_wait_s` after the first arrives. `run` runs in one thread of its own."""

    def __init__(self, run, max_batch: int, max_wait_s: float, max_queue: int, observe_batch=None, collate=None):
        """collate: the images of a batch as `run` takes them (default torch.stack; a detector takes a list of
        images of any size)."""
        self.run, self.max_batch, self.max_wait_s, self.max_queue = run, max_batch, max_wait_s, max_queue
        self.collate = collate or torch.stack
        self.observe_batch = observe_batch or (lambda n: None)
        self.pending = 0
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Called when the app starts (each time: an app can be started, stopped and started again)."""
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="resnets-infer")
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)

    async def submit(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.pending + len(images) > self.max_queue:
            raise HTTPFailure(
                503,
                f"the queue is full ({self.pending} images waiting, at most {self.max_queue}); retry shortly",
                {"Retry-After": "1"},
                "queue_full",
            )
        loop = asyncio.get_running_loop()
        items = [_Item(im, loop.create_future()) for im in images]
        self.pending += len(items)
        for it in items:
            self._queue.put_nowait(it)
        try:
            return list(await asyncio.gather(*(it.future for it in items)))
        finally:
            for it in items:
                it.future.cancel()  # a timed-out request's images are skipped, not run

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except (asyncio.TimeoutError, TimeoutError):
                    break
            self.pending -= len(batch)
            live = [it for it in batch if not it.future.done()]
            if not live:
                continue
            self.observe_batch(len(live))
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
            for it, row in zip(live, out):
                _settle(it, row)


def _settle(item: _Item, row: torch.Tensor | None = None, error: Exception | None = None) -> None:
    if not item.future.done():  # a timed-out request's future is cancelled already
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(row)
