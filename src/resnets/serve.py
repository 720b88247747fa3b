"""`resnets serve`: a model behind an HTTP API and a web page (FastAPI on uvicorn), with dynamic batching.

Requests are decoded in a pool of threads (`decode_workers`), each image resized and cropped as the model's
preprocessing says, then queued; one inference thread takes up to `max_batch` images, or what has arrived after
`max_wait_ms`, whichever comes first, and runs them as one batch through the chosen backend (eager, compile,
ONNX Runtime, int8). The batch gives pooled features; predict applies the classifier to them, embed returns them,
so both share batches. Grad-CAM (explain) needs gradients: it runs eagerly, one image at a time.

Limits: an upload over `max_upload_mb` is 413 (read no further); an image over the pixel limit is 413, a
non-image 415, a truncated or corrupt one 422, each with a one-line reason; more than `max_queue` images waiting
is 503 with Retry-After; a request not answered in `timeout_s` is 504. Nothing a client sends names a file here.
With a token (`token=` or $RESNETS_SERVE_TOKEN) every endpoint but the health checks and the page wants
`Authorization: Bearer <token>`.
"""
from __future__ import annotations

import asyncio
import hmac
import io
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from fastapi import Query, Request
from fastapi.responses import JSONResponse, Response
from torch import nn

from .errors import ResnetsError
from .inference import class_index

log = logging.getLogger("resnets")

TOKEN_ENV = "RESNETS_SERVE_TOKEN"


@dataclass(frozen=True)
class Limits:
    max_upload_mb: float = 20.0  # one request's body
    max_files: int = 64  # images in one request
    max_queue: int = 256  # images decoded and waiting for the model
    timeout_s: float = 30.0  # from the request's arrival to its answer
    max_pixels: int | None = None  # None: the process's limit (--max-pixels, $RESNETS_MAX_PIXELS)


class HTTPFailure(Exception):
    """A request answered with `status` and a one-line `detail` (and extra headers)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None, kind: str = "bad_request"):
        super().__init__(detail)
        self.status, self.detail, self.headers, self.kind = status, detail, headers or {}, kind


class _Item:
    __slots__ = ("image", "future", "arrived")

    def __init__(self, image: torch.Tensor, future: asyncio.Future):
        self.image, self.future, self.arrived = image, future, time.perf_counter()


class Batcher:
    """Images in, one row of `run`'s output each, run in batches of up to `max_batch` gathered for at most
    `max_wait_s` after the first arrives. `run` runs in one thread of its own."""

    def __init__(self, run, max_batch: int, max_wait_s: float, max_queue: int, observe_batch=None):
        self.run, self.max_batch, self.max_wait_s, self.max_queue = run, max_batch, max_wait_s, max_queue
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
            raise HTTPFailure(503, f"the queue is full ({self.pending} images waiting, at most {self.max_queue}); "
                              "retry shortly", {"Retry-After": "1"}, "queue_full")  # fmt: skip
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
                out = await loop.run_in_executor(self._pool, self.run, torch.stack([it.image for it in live]))
            except Exception as e:
                if len(live) == 1:
                    _settle(live[0], error=e)
                    continue
                # one image can break a whole batch: each is run alone, so a failure stays with the image (and the
                # request) that caused it and every other request is answered as usual
                for it in live:
                    try:
                        row = (await loop.run_in_executor(self._pool, self.run, it.image[None]))[0]
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


class Metrics:
    """Prometheus metrics of one app (its own registry, so two apps in a process do not mix)."""

    def __init__(self, max_batch: int):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("resnets_requests", "HTTP requests by endpoint and status code", ["endpoint", "code"],
                                registry=self.registry)  # fmt: skip
        self.errors = Counter("resnets_errors", "failed requests by kind", ["kind"], registry=self.registry)
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch} & set(range(1, max_batch + 1)))
        self.batch = Histogram("resnets_batch_size", "images per model batch", buckets=buckets, registry=self.registry)
        self.latency = Histogram("resnets_request_seconds", "time from a request's arrival to its answer",
                                 ["endpoint"], registry=self.registry)  # fmt: skip
        self.images = Counter("resnets_images", "images answered, by endpoint", ["endpoint"], registry=self.registry)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# how the server answers an image it cannot use, by BadSample.kind
STATUS_OF_KIND = {"too_many_pixels": 413, "corrupt_image": 422, "empty": 400}  # else 415: not an image


class Service:
    """The model, its runner and batcher, the decode pool and the metrics behind one app."""

    def __init__(self, model: nn.Module, *, backend: str, precision: str, device: str | torch.device | None,
                 max_batch: int, max_wait_ms: float, decode_workers: int, limits: Limits, token: str | None,
                 calib_images: list[str] | None = None):  # fmt: skip
        from .backends import auto_backend, make_runner
        from .distributed import pick_device
        from .meta import meta_of, preprocessing_for

        if max_batch < 1 or decode_workers < 1:
            raise ResnetsError("max_batch and decode_workers must be at least 1")
        for what, value, zero_ok in (("max_wait_ms", max_wait_ms, True), ("timeout_s", limits.timeout_s, False),
                                     ("max_upload_mb", limits.max_upload_mb, False)):  # fmt: skip
            if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
                raise ResnetsError(f"{what} must be a finite number {'>= 0' if zero_ok else '> 0'}; got {value}")
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
            from .inference import calibration_batches, find_images

            calib = calibration_batches(self.model, find_images(calib_images))
            if not calib:
                raise ResnetsError("no calibration image could be read")
        # the batch gives pooled features (predict applies the classifier, embed returns them); an ONNX file gives
        # its logits, and serves predict only
        self.features = self.model.num_features is not None
        self.runner = make_runner(self.model, self.backend, output="features" if self.features else "logits",
                                  calib=calib, precision=precision, device=self.device)  # fmt: skip
        self.metrics = Metrics(max_batch)
        self.decode_workers = decode_workers
        self.decoder: ThreadPoolExecutor | None = None  # made when the app starts
        self.batcher = Batcher(self._run, max_batch, max_wait_ms / 1000, limits.max_queue, self.metrics.batch.observe)
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

    def warm_up(self) -> None:
        self._run(torch.zeros(1, *self.input_shape, dtype=torch.uint8))
        self.ready = True

    def decode(self, data: bytes, name: str) -> torch.Tensor:
        """The model's input (the image decoded, resized and cropped: uint8), or HTTPFailure."""
        from .data.datasets import BadSample, decode_bytes

        try:
            raw = decode_bytes(data, name, len(self.pre.mean), max_pixels=self.limits.max_pixels)
        except BadSample as e:
            kind = e.kind if e.kind in STATUS_OF_KIND else "not_an_image"
            raise HTTPFailure(STATUS_OF_KIND.get(kind, 415), f"{name}: {e.reason}", kind=kind) from None
        image = self.transform(raw)
        if tuple(image.shape) != self.input_shape:  # checked here, so no image can break a batch it joins
            raise HTTPFailure(422, f"{name}: the image became {tuple(image.shape)}, not the model's input "
                              f"{self.input_shape}", kind="corrupt_image")  # fmt: skip
        return image

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
            raise HTTPFailure(401, "a bearer token is required (Authorization: Bearer <token>)",
                              {"WWW-Authenticate": "Bearer"}, "unauthorized")  # fmt: skip

    async def decoded(self, request: Request) -> tuple[list[str], list[torch.Tensor]]:
        """The request's images, each decoded to the model's input in the decode pool (names, images); the
        first bad one's HTTPFailure."""
        self.check_token(request)
        body = await _read_body(request, int(self.limits.max_upload_mb * 1024 * 1024))
        files = await _images_of(request, body, self.limits)
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(self.decoder, self.decode, data, name) for name, data in files),
                                       return_exceptions=True)  # fmt: skip
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return [n for n, _ in files], results

    async def answered(self, endpoint: str, work) -> Response:
        """`work()`'s response within the time limit; a failure as its status and a one-line detail."""
        start = time.perf_counter()
        try:
            response = await asyncio.wait_for(work(), self.limits.timeout_s)
        except HTTPFailure as e:
            response = JSONResponse({"detail": e.detail}, e.status, headers=e.headers)
            self.metrics.errors.labels(e.kind).inc()
        except (asyncio.TimeoutError, TimeoutError):
            response = JSONResponse({"detail": f"not answered within {self.limits.timeout_s:g} s; retry later"}, 504)
            self.metrics.errors.labels("timeout").inc()
        except Exception as e:  # a fault of ours: one line to the client, the traceback in the server's log
            log.exception("%s failed", endpoint)
            response = JSONResponse({"detail": f"internal error ({type(e).__name__}); the server's log has the details"}, 500)
            self.metrics.errors.labels("internal").inc()
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

    def need_features(self, what: str) -> None:
        if not self.features:
            raise HTTPFailure(400, f"{what} needs the PyTorch model; this server runs an ONNX file, which gives class "
                              "scores only (/v1/predict)")  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {
            "architecture": self.meta.architecture, "num_classes": self.model.num_classes,
            "classes": self.names, "num_features": self.model.num_features,
            "preprocessing": self.pre.to_dict(), "precision": self.precision, "backend": self.backend,
            "device": str(self.device), "source": self.meta.source,
            "batching": {"max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms},
            "limits": {"max_upload_mb": self.limits.max_upload_mb, "max_files": self.limits.max_files,
                       "max_queue": self.limits.max_queue, "timeout_s": self.limits.timeout_s},
        }  # fmt: skip


async def _read_body(request, limit: int) -> bytes:
    """The request's body, refused with 413 as soon as it is longer than `limit` bytes (by its Content-Length, or
    while it streams in)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPFailure(413, f"the upload is {int(length):,} bytes, over the limit of {limit:,}", kind="too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPFailure(413, f"the upload is over the limit of {limit:,} bytes", kind="too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _images_of(request, body: bytes, limits: Limits) -> list[tuple[str, bytes]]:
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
            raise HTTPFailure(400, f"bad multipart form: {e.message}") from None
        files = [(f.filename or f"file{i}", await f.read()) for i, (_, f) in enumerate(form.multi_items())
                 if isinstance(f, UploadFile)]  # fmt: skip
        await form.close()
    elif ctype.startswith(("image/", "application/octet-stream")) or (body and not ctype):
        files = [("body", body)]
    else:
        raise HTTPFailure(415, f"send images as multipart/form-data files or as an image/* body, not {ctype or 'nothing'}",
                          kind="not_an_image")  # fmt: skip
    if not files or not any(data for _, data in files):
        raise HTTPFailure(400, "no image in the request", kind="no_image")
    if len(files) > limits.max_files:
        raise HTTPFailure(413, f"{len(files)} images in one request; at most {limits.max_files}", kind="too_large")
    return files


def _page() -> str:
    return resources.files("resnets").joinpath("assets/serve.html").read_text(encoding="utf-8")


def app(model: nn.Module | str | os.PathLike, *, backend: str = "auto", precision: str = "fp32",
        device: str | torch.device | None = None, max_batch: int = 32, max_wait_ms: float = 5.0,
        decode_workers: int = 4, token: str | None = None, limits: Limits | None = None,
        calib: list[str] | None = None):  # fmt: skip
    """The ASGI app (FastAPI) serving `model` (a model built by resnets, or whatever `--weights` takes), to run
    with uvicorn or mount in your own service. `token`: a bearer token every endpoint but /healthz, /readyz and
    the page requires (default $RESNETS_SERVE_TOKEN, if set). `calib`: image files or folders the
    onnxruntime-int8 backend is calibrated on (up to 256 images)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    from . import __version__
    from .factory import load

    where = "the token" if token is not None else f"${TOKEN_ENV}"
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    if token is not None and (not token or not all(33 <= ord(c) < 127 for c in token)):
        raise ResnetsError(f"{where} must be printable ASCII without spaces, and not empty (an empty token would let "
                           "an empty bearer in)")  # fmt: skip
    if not isinstance(model, nn.Module):
        model = load(model)
    svc = Service(model, backend=backend, precision=precision, device=device, max_batch=max_batch,
                  max_wait_ms=max_wait_ms, decode_workers=decode_workers, limits=limits or Limits(), token=token,
                  calib_images=calib)  # fmt: skip

    @asynccontextmanager
    async def lifespan(_app):
        await svc.start()
        yield
        await svc.stop()

    # /docs and /openapi.json are our own routes: behind the token, and Swagger UI's script served from the
    # fastapi-offline package (FastAPI's own page loads it from a CDN, and is blank offline; ReDoc, its other page,
    # fetches a logo from one even when served locally, so it is left out)
    api = FastAPI(title="resnets", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, description=f"{svc.meta.architecture} ({svc.model.num_classes} classes) served "
                  "by resnets: classify, embed and explain images.")  # fmt: skip
    api.state.service = svc
    api.add_middleware(_Counted, metrics=svc.metrics)
    _image_routes(api, svc)
    _info_routes(api, svc)
    return api


# the request body the image endpoints document (they read it themselves, to bound it)
_MULTIPART = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}}}}}  # fmt: skip


def _image_routes(api, svc: Service) -> None:
    """/v1/predict, /v1/embed, /v1/explain: images in, through the batcher (or Grad-CAM)."""

    @api.post("/v1/predict", openapi_extra=_MULTIPART, summary="Classify images: the top-k classes of each")
    async def predict(request: Request, top_k: int = Query(5, ge=1, le=1000)):
        async def work():
            t0 = time.perf_counter()
            names, images = await svc.decoded(request)
            feats = await svc.batcher.submit(images)
            probs = svc.logits(torch.stack(feats)).softmax(1)
            p, c = probs.topk(min(top_k, svc.model.num_classes), dim=1)
            results = [{"name": n, "top": [{"class": svc.names[j], "index": j, "prob": q} for q, j in zip(pr, cr)]}
                       for n, pr, cr in zip(names, p.tolist(), c.tolist())]  # fmt: skip
            svc.metrics.images.labels("predict").inc(len(names))
            return JSONResponse({"results": results, "time_ms": 1000 * (time.perf_counter() - t0)})

        return await svc.answered("predict", work)

    @api.post("/v1/embed", openapi_extra=_MULTIPART, summary="The pooled features (pre-logits) of each image")
    async def embed(request: Request):
        async def work():
            t0 = time.perf_counter()
            svc.check_token(request)
            svc.need_features("embed")
            names, images = await svc.decoded(request)
            feats = await svc.batcher.submit(images)
            svc.metrics.images.labels("embed").inc(len(names))
            return JSONResponse({"dim": svc.model.num_features, "time_ms": 1000 * (time.perf_counter() - t0),
                                 "results": [{"name": n, "embedding": f.tolist()} for n, f in zip(names, feats)]})  # fmt: skip

        return await svc.answered("embed", work)

    @api.post("/v1/explain", openapi_extra=_MULTIPART, summary="Grad-CAM: where the model looked, as a PNG overlay",
              responses={200: {"content": {"image/png": {}}, "description": "the crop the model saw, with the heatmap"}})
    async def explain(request: Request, target: str | None = Query(None, description="class name or index (default: the top class)")):
        async def work():
            t0 = time.perf_counter()
            svc.check_token(request)
            svc.need_features("explain (Grad-CAM)")
            names, images = await svc.decoded(request)
            if len(images) != 1:
                raise HTTPFailure(400, f"explain takes one image; got {len(images)}")
            try:
                cls = class_index(target, svc.names)
            except ResnetsError as e:
                raise HTTPFailure(400, str(e), kind="bad_request") from None
            png, cls, prob = await asyncio.get_running_loop().run_in_executor(None, _overlay, svc, images[0], cls)
            svc.metrics.images.labels("explain").inc()
            return Response(png, media_type="image/png", headers={
                "X-Class": _header_safe(svc.names[cls]), "X-Class-Index": str(cls), "X-Prob": f"{prob:.6f}",
                "X-Time-Ms": f"{1000 * (time.perf_counter() - t0):.1f}"})  # fmt: skip

        return await svc.answered("explain", work)


def _info_routes(api, svc: Service) -> None:
    """What is served, whether it is up, its metrics, the API's documentation and the page."""
    from fastapi.responses import HTMLResponse, PlainTextResponse

    @api.get("/v1/model", summary="What is served: architecture, classes, preprocessing, precision, backend, device")
    async def describe(request: Request):
        async def work():
            svc.check_token(request)
            return JSONResponse(svc.describe())

        return await svc.answered("model", work)

    @api.get("/healthz", summary="The process is up")
    async def healthz():
        return {"status": "ok"}

    @api.get("/readyz", summary="The model is loaded and warmed up: requests are taken")
    async def readyz():
        if not svc.ready:
            return JSONResponse({"status": "starting or stopping"}, 503)
        return {"status": "ready"}

    @api.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics(request: Request):
        from prometheus_client import CONTENT_TYPE_LATEST

        return svc.guarded(request, lambda: Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST))

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request):
        return svc.guarded(request, lambda: JSONResponse(api.openapi()))

    @api.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        from fastapi.openapi.docs import get_swagger_ui_html

        return svc.guarded(request, lambda: get_swagger_ui_html(
            openapi_url="openapi.json", title="resnets: the API", swagger_js_url="docs/assets/swagger-ui-bundle.js",
            swagger_css_url="docs/assets/swagger-ui.css", swagger_favicon_url="docs/assets/favicon.png"))  # fmt: skip

    api.mount("/docs/assets", _doc_assets(), name="doc-assets")

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(_page())


def _doc_assets():
    """Swagger UI's script and style as the fastapi-offline package ships them (nothing fetched from a CDN)."""
    from fastapi.staticfiles import StaticFiles

    return StaticFiles(directory=str(resources.files("fastapi_offline").joinpath("static")))


class _Counted:
    """ASGI middleware: every answer counted in resnets_requests by endpoint and status code, 500s included (an
    exception that escapes a route is counted as the 500 the server then sends)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope.get("path", "")
            endpoint = _ENDPOINTS.get(path, "docs" if path.startswith("/docs/") else "other")
            self.metrics.requests.labels(endpoint, str(status[0])).inc()


# the label each path is counted under in resnets_requests (anything else: "other", so a scan of random paths
# cannot grow the metrics without bound)
_ENDPOINTS = {"/v1/predict": "predict", "/v1/embed": "embed", "/v1/explain": "explain", "/v1/model": "model",
              "/healthz": "healthz", "/readyz": "readyz", "/metrics": "metrics", "/": "page", "/docs": "docs",
              "/openapi.json": "docs"}  # fmt: skip


def _header_safe(text: str) -> str:
    """Any text as a valid HTTP header value: control characters (newlines, escape codes) and non-ASCII escaped."""
    return text.encode("unicode_escape").decode("ascii")


def _overlay(svc: Service, image: torch.Tensor, target: int | None) -> tuple[bytes, int, float]:
    """Grad-CAM over the crop the model saw, as PNG bytes (the photo, with the heatmap blended in)."""
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    from .inference import grad_cam

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


def check_listen(host: str, port: int) -> None:
    """One line (not uvicorn's traceback) when the address cannot be listened on."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ResnetsError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise ResnetsError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def _slow_header_guard(seconds: float):
    """uvicorn's h11 protocol with a deadline on each request's headers: a connection that has not sent a whole
    request line and headers `seconds` after it opened (or after its previous answer, once it sends again) is
    closed. uvicorn bounds an idle keep-alive connection but not one that sends a byte now and then."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:  # a request's headers are complete
                self._disarm()
            elif self.cycle is None or self.cycle.response_complete:  # the next request's headers are coming
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_deadline is None:
                self._header_deadline = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _too_slow(self) -> None:
            self._header_deadline = None
            if not self.transport.is_closing():
                self.logger.info("%s: closed, its request headers took over %g s", self.client, seconds)
                self.transport.close()

    return Protocol


def run(api, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info", graceful_s: float = 30.0,
        header_timeout_s: float = 10.0) -> None:  # fmt: skip
    """Serve `api` with uvicorn until SIGINT/SIGTERM: then no new connections, and the requests in flight are
    answered (for up to `graceful_s`) before this returns. A stop asked for is a clean exit: uvicorn would
    raise the signal again after its graceful shutdown, so the process would end as killed by it. Each request
    is logged (uvicorn's access log, at log_level info: the client, request line and status; never a header,
    so never the token); a connection whose headers take over `header_timeout_s` is closed."""
    import contextlib
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    check_listen(host, port)
    config = uvicorn.Config(api, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_s,
                            access_log=True, http=_slow_header_guard(header_timeout_s))  # fmt: skip
    Server(config).run()
