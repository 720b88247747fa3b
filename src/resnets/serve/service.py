"""The model behind the app: what every task shares (the device, the batcher and admission, the decode pool, the
metrics, a request's way from its body to its answer) in one Service, with the hooks each task fills in (tasks.py):
its class names, how an upload is decoded (`decode`), how images make a batch (`collate`), how a batch is run and
its output made one row per image (`forward`, `rows`), and what /v1/model says of it (`model_info`)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from torch import nn

from ..data.datasets import BadSample, read_header
from ..devices import pick_device
from ..errors import ResnetsError
from ..meta import meta_of
from ..tasks.base import shown_name
from .admission import Admission, Job, decoded_pixels, pixel_budget
from .batcher import Batcher, Lane
from .limits import MB, STATUS_OF_KIND, HTTPFailure, Limits, Upload, UploadBudget, images_of, read_body, slow_body

log = logging.getLogger("resnets")


class Metrics:
    """Prometheus metrics of one app (its own registry, so two apps in a process do not mix)."""

    def __init__(self, max_batch: int):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "resnets_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.errors = Counter("resnets_errors", "failed requests by kind", ["kind"], registry=self.registry)
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch} & set(range(1, max_batch + 1)))
        self.batch = Histogram("resnets_batch_size", "images per model batch", buckets=buckets, registry=self.registry)
        self.latency = Histogram(
            "resnets_request_seconds",
            "time from a request's arrival to its answer",
            ["endpoint"],
            registry=self.registry,
        )
        self.images = Counter("resnets_images", "images answered, by endpoint", ["endpoint"], registry=self.registry)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def check_settings(max_batch: int, decode_workers: int, max_wait_ms: float, limits: Limits) -> None:
    if max_batch < 1 or decode_workers < 1:
        raise ResnetsError("max_batch and decode_workers must be at least 1")
    if limits.max_pixels_in_flight < 1:
        raise ResnetsError(f"max_pixels_in_flight must be at least 1; got {limits.max_pixels_in_flight}")
    for what, value, zero_ok in (
        ("max_wait_ms", max_wait_ms, True),
        ("timeout_s", limits.timeout_s, False),
        ("max_upload_mb", limits.max_upload_mb, False),
        ("body_timeout_s", limits.body_timeout_s, False),
        ("max_upload_mb_in_flight", limits.max_upload_mb_in_flight, False),
    ):
        if value is None:  # a default
            continue
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise ResnetsError(f"{what} must be a finite number {'>= 0' if zero_ok else '> 0'}; got {value}")


class Service:
    """The model behind one app, its batcher, admission, decode pool and metrics; a task's subclass (tasks.py) fills
    in the hooks below the line marked so, and calls this __init__ first."""

    task = ""  # "classification", "detection", "segmentation": each task's subclass says
    route = ""  # the endpoint that answers for its task ("POST /v1/predict")
    purpose = ""  # what the served model does, for the API's description

    def __init__(
        self,
        model: nn.Module,
        *,
        backend: str,
        precision: str,
        device: str | torch.device | None,
        max_batch: int,
        max_wait_ms: float,
        decode_workers: int,
        limits: Limits,
        token: str | None,
    ):
        check_settings(max_batch, decode_workers, max_wait_ms, limits)
        self.device = pick_device(device) if not isinstance(device, torch.device) else device
        self.model = model.eval().to(self.device)
        self.meta = meta_of(self.model)
        self.names = self.class_names()
        self.backend, self.precision, self.limits, self.token = backend, precision, limits, token
        self.max_batch, self.max_wait_ms = max_batch, max_wait_ms
        self.features = False  # whether the batch gives pooled features (embed, explain: a classifier's)
        self.metrics = Metrics(max_batch)
        self.decode_workers = decode_workers
        self.decoder: ThreadPoolExecutor | None = None  # made when the app starts
        self.batcher = Batcher(
            self.run,
            max_batch,
            max_wait_ms / 1000,
            limits.max_queue,
            self.metrics.batch.observe,
            self.collate,
            self.cost,
        )
        budget = pixel_budget(limits)
        if budget > limits.max_pixels_in_flight:
            log.warning(
                "--exact-decode holds each image whole: the pixels in flight may reach %s (one image at --max-pixels), "
                "past --max-pixels-in-flight %s",
                f"{budget:,}",
                f"{limits.max_pixels_in_flight:,}",
            )
        self.admission = Admission(budget, self.batcher)
        self.uploads = UploadBudget(limits.upload_budget())  # the bytes of the bodies being read or decoded
        if self.uploads.max_bytes < limits.max_upload_mb * MB:
            log.warning(
                "--max-upload-mb-in-flight %g is below --max-upload-mb %g: a body between the two is refused (413)",
                self.uploads.max_bytes / MB,
                limits.max_upload_mb,
            )
        self.ready = False

    # ---- the hooks of a task

    def class_names(self) -> list[str]:
        raise NotImplementedError

    def decode(self, data: bytes, name: str) -> tuple[torch.Tensor, tuple[int, int]]:
        """An upload as the model's input (uint8, decoded no larger than the model needs) and the image's full
        (width, height), or HTTPFailure."""
        raise NotImplementedError

    def decode_size(self) -> int | tuple[int, int]:
        """What the model resizes an image to (datasets.decode_sized's `size`): it is decoded no larger than
        twice that."""
        raise NotImplementedError

    def model_pixels(self, width: int, height: int) -> int:
        """The pixels the model works on for an image of `width` x `height`."""
        raise NotImplementedError

    def collate(self, images: list[torch.Tensor]):
        """The images of a batch as `forward` takes them: a list, of any sizes (a classifier stacks its crops)."""
        return list(images)

    def cost(self, image: torch.Tensor) -> int:
        """The model pixels of a decoded image (what the batcher times its batches by)."""
        return self.model_pixels(image.shape[-1], image.shape[-2])

    def forward(self, batch):
        """The model's raw output on a batch (`collate`'s)."""
        raise NotImplementedError

    def rows(self, out) -> list:
        """`forward`'s output as one row per image, on the CPU: what the batcher hands back."""
        return list(out)

    def warm_image(self) -> torch.Tensor:
        """What the model is warmed up on: a small image (a detector or segmenter enlarges it to its input)."""
        return torch.zeros(3, 64, 64, dtype=torch.uint8)

    def classes_counted(self) -> str:
        """The class count as said to people, saying where a background class is (tasks.base.class_count)."""
        return f"{len(self.names)} classes"

    def shown(self) -> str:
        """The model as the banner, the API's description, /v1/model's "name" and the page say it: its
        architecture with its backbone where that is not the one the name says, and its classes."""
        return f"{shown_name(self.meta.architecture, self.meta.options)} ({self.classes_counted()})"

    def model_info(self) -> dict[str, Any]:
        """What /v1/model says of the model beyond its architecture (a dense task's: task, classes, input)."""
        return {
            "task": self.task,
            "num_classes": len(self.names),
            "classes": self.names,
            "options": dict(self.meta.options),
            "input": self.input(),
        }

    def input(self) -> dict[str, Any]:
        """What each image is resized to for the model (in /v1/model)."""
        raise NotImplementedError

    def need_features(self, what: str) -> None:
        """400 for an endpoint that needs a classifier's pooled features (embed, explain)."""
        self.need_task("classification", what)

    # ---- what every task shares

    @property
    def amp(self) -> str:
        return {"fp32": "none"}.get(self.precision, self.precision)

    def run(self, batch) -> list:
        """A batch (`collate`'s) -> one row per image (the batcher's `run`, in its thread)."""
        with torch.no_grad():
            return self.rows(self.forward(batch))

    def warm_up(self) -> None:
        """Two runs of one image; the second (past any one-time setup) is the batcher's first estimate of time."""
        image = self.warm_image()
        for _ in range(2):
            start = time.perf_counter()
            self.batcher.run(self.batcher.collate([image]))
        self.batcher.measured(self.batcher.cost(image), time.perf_counter() - start)
        self.ready = True

    async def start(self) -> None:
        """When the app starts (each time: an app can be started, stopped and started again)."""
        self.decoder = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="resnets-decode")
        self.batcher.start()
        await asyncio.get_running_loop().run_in_executor(None, self.warm_up)

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
        self.decoder.shutdown(wait=False, cancel_futures=True)

    async def headers(self, files: list[tuple[str, bytes]]) -> list:
        """Each image's header (format, size, the pixel limit: nothing decoded), read in the sandbox from the decode
        threads, never on the event loop (a header's tables can take seconds); the first bad image's HTTPFailure."""
        loop = asyncio.get_running_loop()
        found = await asyncio.gather(
            *(
                loop.run_in_executor(self.decoder, read_header, data, name, self.limits.max_pixels)
                for name, data in files
            ),
            return_exceptions=True,
        )
        for (name, _), h in zip(files, found):
            if isinstance(h, BadSample):
                raise refusal(h, name) from None
            if isinstance(h, BaseException):
                raise h
        return found

    def admit(self, job: Job, headers: list, lane: Lane | None = None) -> list[int]:
        """`job` admitted for what its images (`headers`) will hold (Admission), for the batcher or `lane`; the
        header pixels of each, or HTTPFailure (413, 503)."""
        held, work, header_pixels = 0, 0, []
        for h in headers:
            model = self.model_pixels(h.width, h.height)
            held += max(decoded_pixels(h.width, h.height, h.format, self.decode_size()), model)
            work += model
            header_pixels.append(h.width * h.height)
        decode_s = self.admission.decode_estimate(header_pixels, self.decode_workers)
        self.admission.admit(job, held, work, decode_s, lane, len(headers))
        return header_pixels

    def _timed_decode(self, data: bytes, name: str):
        start = time.perf_counter()
        return self.decode(data, name), time.perf_counter() - start

    async def body(self, request: Request, job: Job, upload: Upload) -> bytearray:
        """The request's body, bounded in bytes (--max-upload-mb), in time (Limits.body_timeout_s, and never past
        the request's own deadline) and by the bytes of the bodies in flight (--max-upload-mb-in-flight, held in
        `upload`): 413, 408, 503."""
        left = job.deadline - asyncio.get_running_loop().time()
        seconds = max(0.0, min(self.limits.body_timeout_s, left))
        body = await read_body(request, int(self.limits.max_upload_mb * MB), seconds, upload)
        job.body_read.set()
        return body

    async def decoded(
        self, request: Request, job: Job, lane: Lane | None = None, parse=images_of
    ) -> tuple[list[str], list[torch.Tensor], list[tuple[int, int]]]:
        """The request's images, admitted (`admit`; for `lane` when they run there), each decoded to the model's
        input in the decode pool: (names, images, each one's full (width, height)); the first bad one's
        HTTPFailure. The body's bytes count in the upload budget until its images are decoded (or it fails).
        `parse(request, body, limits)`: the (name, bytes) of each image in the body (a form or an image; the Open
        Inference Protocol's tensors), or (name, tensor) of each image given as the model's input (`given`)."""
        with self.uploads.upload() as upload:
            files = await parse(request, await self.body(request, job, upload), self.limits)
            if files and isinstance(files[0][1], torch.Tensor):  # the model's input already: nothing to decode
                return self.given(job, files)
            if lane is None:
                self.admission.check_count(len(files))
            header_pixels = self.admit(job, await self.headers(files), lane)
            loop = asyncio.get_running_loop()
            results = await asyncio.gather(
                *(loop.run_in_executor(self.decoder, self._timed_decode, data, name) for name, data in files),
                return_exceptions=True,
            )
        for r in results:
            if isinstance(r, BaseException):
                raise r
        for pixels, (_, seconds) in zip(header_pixels, results):
            self.admission.decoded(pixels, seconds)
        return [n for n, _ in files], [im for (im, _), _ in results], [full for (_, full), _ in results]

    def given(self, job: Job, inputs: list[tuple[str, torch.Tensor]]):
        """Images given as the model's input ((name, (C, H, W) tensor): the Open Inference Protocol's typed input),
        admitted as decoded ones are, with no decoding: `decoded`'s (names, images, sizes)."""
        self.admission.check_count(len(inputs))
        work = sum(self.model_pixels(t.shape[-1], t.shape[-2]) for _, t in inputs)
        self.admission.admit(job, work, work, 0.0, None, len(inputs))
        return [n for n, _ in inputs], [t for _, t in inputs], [(t.shape[-1], t.shape[-2]) for _, t in inputs]

    async def infer(self, images: list[torch.Tensor], job: Job) -> list:
        """The batcher's row for each image of `job` (decoded): 503 at once for an image the queue would make
        late."""
        self.admission.queued(job)
        return await self.batcher.submit(images, deadline=job.deadline, job=job)

    async def answered(self, endpoint: str, request: Request, work) -> Response:
        """`work(job)`'s response within the time limit; a failure as its status and a one-line detail. A request
        whose client goes away is cancelled (its images leave the queue); one whose body has not arrived by then is
        408; one not answered in time is 504 if the model was working on it, else 503 with Retry-After (it waited
        behind others: the server is busy)."""
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        job = Job(deadline=loop.time() + self.limits.timeout_s, body_read=asyncio.Event())
        task = asyncio.ensure_future(work(job))
        watcher = asyncio.ensure_future(_client_gone(request, job))
        try:
            done, _ = await asyncio.wait(
                {task, watcher}, timeout=self.limits.timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if task not in done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                if watcher in done:
                    raise _Gone
                if not job.body_read.is_set():
                    raise slow_body(self.limits.timeout_s)
                if job.started:
                    raise TimeoutError
                raise self.batcher.busy(why=f"this request was not answered within {self.limits.timeout_s:g} s")
            response = task.result()
        except HTTPFailure as e:
            response = self.failed(e)
        except _Gone:
            response = Response(status_code=499)  # nobody reads it: the client closed the connection
            self.metrics.errors.labels("client_gone").inc()
        except (asyncio.TimeoutError, TimeoutError):
            response = JSONResponse({"detail": f"not answered within {self.limits.timeout_s:g} s; retry later"}, 504)
            self.metrics.errors.labels("timeout").inc()
        except asyncio.CancelledError:
            task.cancel()
            raise
        except Exception as e:  # a fault of ours: one line to the client, the traceback in the server's log
            log.exception("%s failed", endpoint)
            response = JSONResponse(
                {"detail": f"internal error ({type(e).__name__}); the server's log has the details"}, 500
            )
            self.metrics.errors.labels("internal").inc()
        finally:
            watcher.cancel()
            self.admission.release(job)
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    def failed(self, e: HTTPFailure) -> Response:
        """A refusal as its answer (one JSON line, its headers), counted by kind."""
        self.metrics.errors.labels(e.kind).inc()
        return JSONResponse({"detail": e.detail}, e.status, headers=e.headers)

    def need_task(self, task: str, what: str) -> None:
        """400 for an endpoint of another task (boxes from a classifier, classes from a detector)."""
        if task != self.task:
            raise HTTPFailure(400, f"{what} is for a {task} model; this server runs a {self.task} model: {self.route}")

    def settings(self) -> dict[str, Any]:
        """How requests are batched and bounded (in /v1/model)."""
        return {
            "batching": {"max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms},
            "limits": {
                "max_upload_mb": self.limits.max_upload_mb,
                "max_upload_mb_in_flight": self.uploads.max_bytes / MB,
                "max_files": self.limits.max_files,
                "max_queue": self.limits.max_queue,
                "max_pixels_in_flight": self.admission.max_pixels,
                "timeout_s": self.limits.timeout_s,
            },
        }

    def describe(self) -> dict[str, Any]:
        """What /v1/model answers."""
        return {
            "architecture": self.meta.architecture,
            "name": self.shown(),
            **self.model_info(),
            "precision": self.precision,
            "backend": self.backend,
            "device": str(self.device),
            "source": self.meta.source,
            **self.settings(),
        }


def refusal(e, name: str) -> HTTPFailure:
    """An image the decoder refused (datasets.BadSample) as the request's answer: its status by its kind."""
    kind = e.kind if e.kind in STATUS_OF_KIND else "not_an_image"
    return HTTPFailure(STATUS_OF_KIND[kind], f"{name}: {e.reason}", kind=kind)


class _Gone(Exception):
    """The client closed the connection before its answer."""


async def _client_gone(request: Request, job: Job) -> None:
    """Returns when the client of `request` has disconnected (watched once its body has been read: the ASGI
    server's next message is then http.disconnect, or nothing until the answer is sent)."""
    await job.body_read.wait()
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
