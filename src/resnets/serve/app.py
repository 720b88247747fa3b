"""`resnets.serve.app(model)`: the ASGI app (FastAPI) that puts the service and its routes together, and the
middleware that counts every answer."""

from __future__ import annotations

import os

import torch
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import nn

from ..factory import load
from ..version import __version__
from .auth import TOKEN_ENV, BearerToken
from .limits import HTTPFailure, Limits
from .oip import as_v2_error, health_routes, oip_routes
from .routes import detect_routes, doc_assets, image_routes, info_routes, open_routes, segment_routes
from .service import Metrics
from .tasks import service_for

__all__ = ["TOKEN_ENV", "app"]


def app(
    model: nn.Module | str | os.PathLike,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    device: str | torch.device | None = None,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    decode_workers: int = 4,
    token: str | None = None,
    limits: Limits | None = None,
    calib: list[str] | None = None,
    model_name: str | None = None,
):
    """The ASGI app (FastAPI) serving `model` (a model built by resnets, or whatever `--weights` takes), to run
    with uvicorn or mount in your own service. `token`: a bearer token every endpoint but /healthz, /readyz and
    the page requires (default $RESNETS_SERVE_TOKEN, if set). `calib`: image files or folders the
    onnxruntime-int8 backend is calibrated on (up to 256 images). `model_name`: the model's name in the Open Inference
    Protocol's paths (/v2/models/NAME; default: its architecture)."""
    from contextlib import asynccontextmanager

    from fastapi import Depends, FastAPI

    auth = BearerToken(token)
    if not isinstance(model, nn.Module):
        model = load(model)
    svc = service_for(model)(
        model,
        backend=backend,
        precision=precision,
        device=device,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        decode_workers=decode_workers,
        limits=limits or Limits(),
        token=auth.token,
        calib_images=calib,
    )

    @asynccontextmanager
    async def lifespan(_app):
        await svc.start()
        yield
        await svc.stop()

    # /docs and /openapi.json are our own routes: behind the token, and Swagger UI's script served from the
    # fastapi-offline package (FastAPI's own page loads it from a CDN, and is blank offline; ReDoc, its other page,
    # fetches a logo from one even when served locally, so it is left out)
    api = FastAPI(
        title="resnets",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        description=f"{svc.shown()} served by resnets: {svc.purpose}",
    )
    api.state.service = svc
    api.add_middleware(Counted, metrics=svc.metrics)

    async def refused(request, e: HTTPFailure):  # a dependency's refusal (the token's 401): one JSON line, counted
        answer = svc.failed(e)
        return as_v2_error(answer) if request.url.path.startswith("/v2") else answer

    async def not_routed(request, e: StarletteHTTPException):  # 404, 405: the protocol's {"error"} under /v2
        if request.url.path.startswith("/v2"):
            return JSONResponse({"error": str(e.detail)}, e.status_code, headers=getattr(e, "headers", None))
        return await http_exception_handler(request, e)

    api.add_exception_handler(HTTPFailure, refused)
    api.add_exception_handler(StarletteHTTPException, not_routed)
    for routes in (image_routes, detect_routes, segment_routes, info_routes):
        api.include_router(routes(svc), dependencies=[Depends(auth)])
    _protocol(api, svc, model_name, Depends(auth))
    api.include_router(open_routes(svc))
    api.include_router(health_routes(svc))
    api.mount("/docs/assets", doc_assets(), name="doc-assets")
    return api


def _protocol(api, svc, model_name: str | None, auth) -> None:
    """The Open Inference Protocol's routes for a classifier and a detector (a segmenter's class maps are not in
    it here yet), behind the token; api.state.oip_model: the model's name there, or None."""
    api.state.oip_model = None
    if svc.task in ("classification", "detection"):
        api.state.oip_model = model_name or svc.meta.architecture
        api.include_router(oip_routes(svc, api.state.oip_model), dependencies=[auth])


class Counted:
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
            endpoint = ENDPOINTS.get(path) or _v2_model(path) or ("docs" if path.startswith("/docs/") else "other")
            self.metrics.requests.labels(endpoint, str(status[0])).inc()


# the label each path is counted under in resnets_requests (anything else: "other", so a scan of random paths
# cannot grow the metrics without bound)
ENDPOINTS = {
    "/v1/predict": "predict",
    "/v1/embed": "embed",
    "/v1/explain": "explain",
    "/v1/detect": "detect",
    "/v1/segment": "segment",
    "/v1/model": "model",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics",
    "/": "page",
    "/docs": "docs",
    "/openapi.json": "docs",
    "/v2": "v2",
    "/v2/health/live": "v2_live",
    "/v2/health/ready": "v2_ready",
}


def _v2_model(path: str) -> str | None:
    """The label of an Open Inference Protocol model path (its name is the client's: not a label of its own)."""
    if not path.startswith("/v2/models/"):
        return None
    return {"infer": "v2_infer", "ready": "v2_model_ready"}.get(path.rsplit("/", 1)[-1], "v2_model")
