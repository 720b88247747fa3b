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
        from ..data.datasets import BadSample, decode_bytes

        try:
            raw = decode_bytes(data, name, len(self.pre.mean), max_pixels=self.limits.max_pixels)
        except BadSample as e:
            kind = e.kind if e.kind in STATUS_OF_KIND else "not_an_image"
            raise HTTPFailure(STATUS_OF_KIND.get(kind, 415), f"{name}: {e.reason}", kind=kind) from None
        image = self.transform(raw)
        if tuple(image.shape) != self.input_shape:  # checked here, so no image can break a batch it joins
            raise HTTPFailure(
                422,
                f"{name}: the image became {tuple(image.shape)}, not the model's input {self.input_shape}",
                kind="corrupt_image",
            )
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
            raise HTTPFailure(
                401,
                "a bearer token is required (Authorization: Bearer <token>)",
                {"WWW-Authenticate": "Bearer"},
                "unauthorized",
            )

    async def decoded(self, request: Request) -> tuple[list[str], list[torch.Tensor]]:
        """The request's images, each decoded to the model's input in the decode pool (names, images); the
        first bad one's HTTPFailure."""
        self.check_token(request)
        body = await read_body(request, int(self.limits.max_upload_mb * 1024 * 1024))
        files = await images_of(request, body, self.limits)
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(loop.run_in_executor(self.decoder, self.decode, data, name) for name, data in files),
            return_exceptions=True,
        )
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
            response = JSONResponse(
                {"detail": f"internal error ({type(e).__name__}); the server's log has the details"}, 500
            )
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
    """A detector behind the app: each image whole (the model resizes it, min_size / max_size), a list of images
    of any size per batch, boxes out; the same decode pool, limits, token, batcher and metrics."""

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
        from ..detect import class_names
        from ..devices import check_precision, pick_device
        from ..meta import meta_of

        check_settings(max_batch, decode_workers, max_wait_ms, limits)
        if backend not in ("auto", "eager") or calib_images:
            raise ResnetsError(f"a detector is served by the eager backend (PyTorch); got --backend {backend}")
        self.device = pick_device(device) if not isinstance(device, torch.device) else device
        check_precision(precision, self.device)
        self.model = model.eval().to(self.device)
        self.meta = meta_of(self.model)
        self.names = class_names(self.model)
        self.backend, self.precision, self.limits, self.token = "eager", precision, limits, token
        self.max_batch, self.max_wait_ms = max_batch, max_wait_ms
        self.features = False
        self.metrics = Metrics(max_batch)
        self.decode_workers = decode_workers
        self.decoder = None
        self.batcher = Batcher(
            self._run, max_batch, max_wait_ms / 1000, limits.max_queue, self.metrics.batch.observe, list
        )
        self.explain_lock = threading.Lock()
        self._explain_model = None
        self.ready = False

    def _run(self, images: list[torch.Tensor]) -> list[dict]:
        """uint8 images (3, H, W) -> the detector's output for each, on the CPU (masks as booleans)."""
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

    def warm_up(self) -> None:
        self._run([torch.zeros(3, 64, 64, dtype=torch.uint8)])
        self.ready = True

    def decode(self, data: bytes, name: str) -> torch.Tensor:
        """The image decoded whole (RGB uint8), or HTTPFailure."""
        from ..data.datasets import BadSample, decode_bytes

        try:
            return decode_bytes(data, name, 3, max_pixels=self.limits.max_pixels)
        except BadSample as e:
            kind = e.kind if e.kind in STATUS_OF_KIND else "not_an_image"
            raise HTTPFailure(STATUS_OF_KIND.get(kind, 415), f"{name}: {e.reason}", kind=kind) from None

    def need_features(self, what: str) -> None:
        self.need_task("classification", what)

    def describe(self) -> dict[str, Any]:
        transform = getattr(self.model, "transform", None)  # a detector's resizing; a segmenter has none
        return {
            "architecture": self.meta.architecture,
            "task": self.task,
            "num_classes": len(self.names),
            "classes": self.names,
            "options": dict(self.meta.options),
            "input": {"min_size": list(transform.min_size), "max_size": transform.max_size} if transform else {},
            "precision": self.precision,
            "backend": self.backend,
            "device": str(self.device),
            "source": self.meta.source,
            **self.settings(),
        }


class SegmenterService(DetectorService):
    """A segmenter behind the app (FCN, DeepLabV3): each image whole, its class map out (the shorter side at
    `size` for the model, the map at the image's size)."""

    task = "segmentation"
    size = 520  # torchvision's evaluation size for these models

    def __init__(self, model: nn.Module, **kw):
        super().__init__(model, **kw)
        from ..segment import class_names

        self.names = class_names(self.model)

    def _run(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        from ..segment import class_map

        amp = {"fp32": "none"}.get(self.precision, self.precision)
        return [class_map(self.model, im, self.size, amp) for im in images]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(task="segmentation", input={"shorter_side": self.size, "normalised": "ImageNet mean and std"})
        return d
