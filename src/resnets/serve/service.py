"""The model behind the app: its runner and batcher, the decode pool, the token, the metrics, and Grad-CAM on a copy
of its own."""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from torch import nn

from ..errors import ResnetsError
from .admission import Admission, Job, decoded_pixels
from .batcher import Batcher
from .limits import STATUS_OF_KIND, HTTPFailure, Limits, images_of, read_body

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
    ):
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise ResnetsError(f"{what} must be a finite number {'>= 0' if zero_ok else '> 0'}; got {value}")


class Service:
    """The model, its runner and batcher, the decode pool and the metrics behind one app."""

    task = "classification"

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
        calib_images: list[str] | None = None,
    ):
        from ..backends import auto_backend, make_runner
        from ..devices import pick_device
        from ..meta import meta_of, preprocessing_for

        check_settings(max_batch, decode_workers, max_wait_ms, limits)
        self.device = pick_device(device) if not isinstance(device, torch.device) else device
        self.model = model.eval().to(self.device)
        self.meta = meta_of(self.model)
        self.pre = preprocessing_for(self.model)
        self.names = self.meta.names(self.model.num_classes)
        self.backend = auto_backend(self.device, precision) if backend == "auto" else backend
        if self.model.num_features is None and backend in ("auto", "eager"):  # an ONNX file runs as it is
            self.backend = "onnxruntime"
        self.precision, self.limits, self.token = precision, limits, token
        self.max_batch, self.max_wait_ms = max_batch, max_wait_ms
        self.transform, self.normalize = self.pre.transform(), self.pre.normalizer()
        self.input_shape = (len(self.pre.mean), self.pre.crop, self.pre.crop)  # (C, H, W) of one uint8 image
        calib = None
        if self.backend == "onnxruntime-int8":  # static quantisation: calibrated on real images before serving
            if not calib_images:
                raise ResnetsError("the onnxruntime-int8 backend calibrates on real images: give them with --calib DIR")
            from ..inference import calibration_batches, find_images

            calib = calibration_batches(self.model, find_images(calib_images))
            if not calib:
                raise ResnetsError("no calibration image could be read")
        # the batch gives pooled features (predict applies the classifier, embed returns them); an ONNX file gives
        # its logits, and serves predict only
        self.features = self.model.num_features is not None
        self.runner = make_runner(
            self.model,
            self.backend,
            output="features" if self.features else "logits",
            calib=calib,
            precision=precision,
            device=self.device,
        )
        self.metrics = Metrics(max_batch)
        self.decode_workers = decode_workers
        self.decoder: ThreadPoolExecutor | None = None  # made when the app starts
        self.batcher = Batcher(self._run, max_batch, max_wait_ms / 1000, limits.max_queue, self.metrics.batch.observe)
        self.admission = Admission(limits.max_pixels_in_flight, self.batcher)
        self.explain_lock = threading.Lock()
        self._explain_model: nn.Module | None = None
        self.ready = False

    def explainer(self) -> nn.Module:
        """Grad-CAM's own copy of the model (made on first use): its hook and backward pass must not touch the
        module the batches run through at the same time (the eager runner shares it)."""
        if self._explain_model is None:
            import copy

            self._explain_model = copy.deepcopy(self.model).float().eval()
        return self._explain_model

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        """A uint8 batch (B, C, crop, crop) -> pooled features (B, num_features), float32 on the CPU."""
        with torch.no_grad():
            x = self.normalize(images.to(self.device, non_blocking=True))
            return self.runner(x).float().cpu()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        if not self.features:  # the runner's rows are logits already
            return features
        fc = self.model.get_classifier()
        with torch.no_grad():
            return fc(features.to(next(fc.parameters()).device)).float().cpu() if self.model.num_classes else features

    def warm_image(self) -> torch.Tensor:
        """What the model is warmed up on: one input of its shape."""
        return torch.zeros(*self.input_shape, dtype=torch.uint8)

    def warm_up(self) -> None:
        """Two runs of one image; the second (past any one-time setup) is the batcher's first estimate of time."""
        image = self.warm_image()
        for _ in range(2):
            start = time.perf_counter()
            self.batcher.run(self.batcher.collate([image]))
        self.batcher.measured(self.batcher.cost(image), time.perf_counter() - start)
        self.ready = True

    def decode_size(self) -> int | tuple[int, int]:
        """What the model resizes an image to (datasets.decode_sized's `size`): it is decoded no larger than
        twice that."""
        return self.pre.resize

    def model_pixels(self, width: int, height: int) -> int:
        """The pixels the model works on for an image of `width` x `height` (the crop)."""
        return self.input_shape[1] * self.input_shape[2]

    def decode(self, data: bytes, name: str) -> tuple[torch.Tensor, tuple[int, int]]:
        """The model's input (the image decoded no larger than the model needs, resized and cropped: uint8) and
        the image's full (width, height), or HTTPFailure."""
        from ..data.datasets import BadSample, decode_sized

        try:
            raw, full = decode_sized(
                data, name, len(self.pre.mean), max_pixels=self.limits.max_pixels, size=self.decode_size()
            )
        except BadSample as e:
            raise refusal(e, name) from None
        image = self.transform(raw)
        if tuple(image.shape) != self.input_shape:  # checked here, so no image can break a batch it joins
            raise HTTPFailure(
                422,
                f"{name}: the image became {tuple(image.shape)}, not the model's input {self.input_shape}",
                kind="corrupt_image",
            )
        return image, full

    async def start(self) -> None:
        """When the app starts (each time: an app can be started, stopped and started again)."""
        self.decoder = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="resnets-decode")
        self.batcher.start()
        await asyncio.get_running_loop().run_in_executor(None, self.warm_up)

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
        self.decoder.shutdown(wait=False, cancel_futures=True)

    def check_token(self, request: Request) -> None:
        """401 unless the request carries the bearer token (when one is set), compared in constant time."""
        if self.token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            raise HTTPFailure(
                401,
                "a bearer token is required (Authorization: Bearer <token>)",
                {"WWW-Authenticate": "Bearer"},
                "unauthorized",
            )

    async def headers(self, files: list[tuple[str, bytes]]) -> list:
        """Each image's header (format, size, the pixel limit: nothing decoded), read in the sandbox from the decode
        threads, never on the event loop (a header's tables can take seconds); the first bad image's HTTPFailure."""
        from ..data.datasets import BadSample, read_header

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

    def admit(self, job: Job, headers: list) -> list[int]:
        """`job` admitted for what its images (`headers`) will hold (Admission); the header pixels of each, or
        HTTPFailure (413, 503)."""
        held, work, header_pixels = 0, 0, []
        for h in headers:
            model = self.model_pixels(h.width, h.height)
            held += max(decoded_pixels(h.width, h.height, h.format, self.decode_size()), model)
            work += model
            header_pixels.append(h.width * h.height)
        decode_s = self.admission.decode_estimate(header_pixels, self.decode_workers)
        self.admission.admit(job, held, work, decode_s)
        return header_pixels

    def _timed_decode(self, data: bytes, name: str):
        start = time.perf_counter()
        return self.decode(data, name), time.perf_counter() - start

    async def decoded(self, request: Request, job: Job) -> tuple[list[str], list[torch.Tensor], list[tuple[int, int]]]:
        """The request's images, admitted (`admit`), each decoded to the model's input in the decode pool: (names,
        images, each one's full (width, height)); the first bad one's HTTPFailure."""
        self.check_token(request)
        body = await read_body(request, int(self.limits.max_upload_mb * 1024 * 1024))
        job.body_read.set()
        files = await images_of(request, body, self.limits)
        header_pixels = self.admit(job, await self.headers(files))
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

    async def infer(self, images: list[torch.Tensor], job: Job) -> list:
        """The batcher's row for each image of `job` (decoded): 503 at once for an image the queue would make
        late."""
        self.admission.queued(job)
        return await self.batcher.submit(images, deadline=job.deadline, job=job)

    async def answered(self, endpoint: str, request: Request, work) -> Response:
        """`work(job)`'s response within the time limit; a failure as its status and a one-line detail. A request
        whose client goes away is cancelled (its images leave the queue); one not answered in time is 504 if the
        model was working on it, else 503 with Retry-After (it waited behind others: the server is busy)."""
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
                if job.started:
                    raise TimeoutError
                raise self.batcher.busy(why=f"this request was not answered within {self.limits.timeout_s:g} s")
            response = task.result()
        except HTTPFailure as e:
            response = JSONResponse({"detail": e.detail}, e.status, headers=e.headers)
            self.metrics.errors.labels(e.kind).inc()
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

    def guarded(self, request: Request, make) -> Response:
        """`make()` behind the token (for endpoints without a time limit of their own)."""
        try:
            self.check_token(request)
        except HTTPFailure as e:
            self.metrics.errors.labels(e.kind).inc()
            return JSONResponse({"detail": e.detail}, e.status, headers=e.headers)
        return make()

    def need_task(self, task: str, what: str) -> None:
        """400 for an endpoint of another task (boxes from a classifier, classes from a detector)."""
        if task != self.task:
            where = {"detection": "POST /v1/detect", "segmentation": "POST /v1/segment"}.get(
                self.task, "POST /v1/predict"
            )
            raise HTTPFailure(400, f"{what} is for a {task} model; this server runs a {self.task} model: {where}")

    def need_features(self, what: str) -> None:
        if not self.features:
            raise HTTPFailure(
                400,
                f"{what} needs the PyTorch model; this server runs an ONNX file, which gives class "
                "scores only (/v1/predict)",
            )

    def settings(self) -> dict[str, Any]:
        """How requests are batched and bounded (in /v1/model)."""
        return {
            "batching": {"max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms},
            "limits": {
                "max_upload_mb": self.limits.max_upload_mb,
                "max_files": self.limits.max_files,
                "max_queue": self.limits.max_queue,
                "max_pixels_in_flight": self.limits.max_pixels_in_flight,
                "timeout_s": self.limits.timeout_s,
            },
        }

    def describe(self) -> dict[str, Any]:
        return {
            "architecture": self.meta.architecture,
            "num_classes": self.model.num_classes,
            "classes": self.names,
            "num_features": self.model.num_features,
            "preprocessing": self.pre.to_dict(),
            "precision": self.precision,
            "backend": self.backend,
            "device": str(self.device),
            "source": self.meta.source,
            **self.settings(),
        }


def overlay(svc: Service, image: torch.Tensor, target: int | None) -> tuple[bytes, int, float]:
    """Grad-CAM over the crop the model saw, as PNG bytes (the photo, with the heatmap blended in)."""
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    from ..inference import grad_cam

    with svc.explain_lock:  # one backward pass at a time, on a copy of the model of its own
        x = svc.normalize(image.to(svc.device))
        cam, cls, prob = grad_cam(svc.explainer(), x, target=target)
    rgb = image.permute(1, 2, 0).numpy()
    rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb
    heat = colormaps["jet"](cam.cpu().numpy())[..., :3] * 255
    blended = (0.55 * rgb + 0.45 * heat).round().clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(blended).save(buf, format="PNG")
    return buf.getvalue(), cls, prob


class DetectorService(Service):
    """A detector behind the app: each image decoded no larger than twice the model's input and brought in uint8 to
    the size the model's transform resizes it to (min_size / max_size: no float copy of a large photo), a list of
    images of any size per batch, boxes out in the full image's coordinates; the same decode pool, limits, token,
    batcher and metrics."""

    task = "detection"

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
        calib_images: list[str] | None = None,
    ):
        from ..devices import check_precision, pick_device
        from ..meta import meta_of

        check_settings(max_batch, decode_workers, max_wait_ms, limits)
        if backend not in ("auto", "eager") or calib_images:
            raise ResnetsError(f"a detector is served by the eager backend (PyTorch); got --backend {backend}")
        self.device = pick_device(device) if not isinstance(device, torch.device) else device
        check_precision(precision, self.device)
        self.model = model.eval().to(self.device)
        self.meta = meta_of(self.model)
        self.names = self.class_names()
        self.backend, self.precision, self.limits, self.token = "eager", precision, limits, token
        self.max_batch, self.max_wait_ms = max_batch, max_wait_ms
        self.features = False
        self.metrics = Metrics(max_batch)
        self.decode_workers = decode_workers
        self.decoder = None
        self.batcher = Batcher(
            self._run,
            max_batch,
            max_wait_ms / 1000,
            limits.max_queue,
            self.metrics.batch.observe,
            list,
            cost=lambda im: self.model_pixels(im.shape[-1], im.shape[-2]),
        )
        self.admission = Admission(limits.max_pixels_in_flight, self.batcher)
        self.explain_lock = threading.Lock()
        self._explain_model = None
        self.ready = False

    def class_names(self) -> list[str]:
        from ..detect import class_names

        return class_names(self.model)

    def _run(self, images: list[torch.Tensor]) -> list[dict]:
        """uint8 images (3, H, W) -> the detector's output for each, on the CPU (masks as booleans), in the
        coordinates of the image given."""
        from ..devices import autocast

        amp = {"fp32": "none"}.get(self.precision, self.precision)
        with torch.no_grad(), autocast(self.device, amp):
            outs = self.model([im.to(self.device).float() / 255 for im in images])
        rows = []
        for o in outs:
            row = {k: o[k].float().cpu() if k != "labels" else o[k].cpu() for k in ("boxes", "labels", "scores")}
            if "masks" in o:
                row["masks"] = (o["masks"][:, 0] > 0.5).cpu()
            rows.append(row)
        return rows

    def warm_image(self) -> torch.Tensor:
        """A small image: the model enlarges it to its min_size."""
        return torch.zeros(3, 64, 64, dtype=torch.uint8)

    def decode_size(self) -> tuple[int, int]:
        from ..detect import input_size

        return input_size(self.model)

    def model_pixels(self, width: int, height: int) -> int:
        from ..detect import scaled_size

        h, w = scaled_size(width, height, *self.decode_size())
        return h * w

    def decode(self, data: bytes, name: str) -> tuple[torch.Tensor, tuple[int, int]]:
        """The image as the model takes it (RGB uint8, decoded and resized no larger than the model's input:
        detect.model_input) and its full (width, height), or HTTPFailure."""
        from ..data.datasets import BadSample
        from ..detect import model_input

        try:
            return model_input(data, name, *self.decode_size(), max_pixels=self.limits.max_pixels)
        except BadSample as e:
            raise refusal(e, name) from None

    def need_features(self, what: str) -> None:
        self.need_task("classification", what)

    def input(self) -> dict[str, Any]:
        """What each image is resized to for the model (in /v1/model)."""
        t = self.model.transform
        return {"min_size": list(t.min_size), "max_size": t.max_size}

    def describe(self) -> dict[str, Any]:
        return {
            "architecture": self.meta.architecture,
            "task": self.task,
            "num_classes": len(self.names),
            "classes": self.names,
            "options": dict(self.meta.options),
            "input": self.input(),
            "precision": self.precision,
            "backend": self.backend,
            "device": str(self.device),
            "source": self.meta.source,
            **self.settings(),
        }


class SegmenterService(DetectorService):
    """A segmenter behind the app (FCN, DeepLabV3): each image decoded no larger than twice the model's input and
    brought in uint8 to it (segment.model_input: the shorter side at `size`, the longer at most twice that), its
    class map out at that size (the image's own when it is smaller)."""

    task = "segmentation"
    size = 520  # torchvision's evaluation size for these models

    def class_names(self) -> list[str]:
        from ..segment import class_names

        return class_names(self.model)

    def _run(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        from ..segment import class_map

        amp = {"fp32": "none"}.get(self.precision, self.precision)
        return [class_map(self.model, im, self.size, amp) for im in images]

    def decode_size(self) -> tuple[int, int]:
        return self.size, 2 * self.size

    def model_pixels(self, width: int, height: int) -> int:
        from ..segment import input_size

        h, w = input_size(width, height, self.size)
        return h * w

    def decode(self, data: bytes, name: str) -> tuple[torch.Tensor, tuple[int, int]]:
        from ..data.datasets import BadSample
        from ..segment import model_input

        try:
            return model_input(data, name, self.size, max_pixels=self.limits.max_pixels)
        except BadSample as e:
            raise refusal(e, name) from None

    def input(self) -> dict[str, Any]:
        return {"shorter_side": self.size, "longer_side_at_most": 2 * self.size, "normalised": "ImageNet mean and std"}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "task": "segmentation"}


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
