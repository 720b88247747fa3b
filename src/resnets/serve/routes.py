"""The endpoints, one function each, in routers by what they serve: images in (predict, embed, explain; detect;
segment), what is served (the model, metrics, the API's documentation), each behind the token (the app puts the
token's dependency on these routers), and what is open (health, readiness, the page)."""

from __future__ import annotations

import asyncio
import time
from importlib import resources

import torch
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from ..detect import boxes_of, draw, to_full
from ..errors import ResnetsError
from ..inference import class_index, top_classes
from ..segment import coloured, shares
from ..segment import overlay as lay
from .limits import HTTPFailure, header_safe
from .service import Service
from .tasks import SCORE_THRESHOLD

# the request body the image endpoints document (they read it themselves, to bound it)
_MULTIPART = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def image_routes(svc: Service) -> APIRouter:
    """/v1/predict, /v1/embed, /v1/explain: images in, through the batcher (or Grad-CAM's lane)."""
    api = APIRouter()

    @api.post("/v1/predict", openapi_extra=_MULTIPART, summary="Classify images: the top-k classes of each")
    async def predict(request: Request, top_k: int = Query(5, ge=1, le=1000)):
        async def work(job):
            t0 = time.perf_counter()
            svc.need_task("classification", "predict")
            names, images, _ = await svc.decoded(request, job)
            feats = await svc.infer(images, job)
            probs = svc.logits(torch.stack(feats)).softmax(1)
            tops = top_classes(probs, min(top_k, svc.model.num_classes), svc.names)
            results = [{"name": n, "top": top} for n, top in zip(names, tops)]
            svc.metrics.images.labels("predict").inc(len(names))
            return JSONResponse({"results": results, "time_ms": 1000 * (time.perf_counter() - t0)})

        return await svc.answered("predict", request, work)

    @api.post("/v1/embed", openapi_extra=_MULTIPART, summary="The pooled features (pre-logits) of each image")
    async def embed(request: Request):
        async def work(job):
            t0 = time.perf_counter()
            svc.need_features("embed")
            names, images, _ = await svc.decoded(request, job)
            feats = await svc.infer(images, job)
            svc.metrics.images.labels("embed").inc(len(names))
            return JSONResponse(
                {
                    "dim": svc.model.num_features,
                    "time_ms": 1000 * (time.perf_counter() - t0),
                    "results": [{"name": n, "embedding": f.tolist()} for n, f in zip(names, feats)],
                }
            )

        return await svc.answered("embed", request, work)

    @api.post(
        "/v1/explain",
        openapi_extra=_MULTIPART,
        summary="Grad-CAM: where the model looked, as a PNG overlay",
        responses={200: {"content": {"image/png": {}}, "description": "the crop the model saw, with the heatmap"}},
    )
    async def explain(
        request: Request, target: str | None = Query(None, description="class name or index (default: the top class)")
    ):
        async def work(job):
            t0 = time.perf_counter()
            svc.need_features("explain (Grad-CAM)")
            names, images, _ = await svc.decoded(request, job, lane=svc.lane)
            if len(images) != 1:
                raise HTTPFailure(400, f"explain takes one image; got {len(images)}")
            try:
                cls = class_index(target, svc.names)
            except ResnetsError as e:
                raise HTTPFailure(400, str(e), kind="bad_request") from None
            png, cls, prob = await svc.explain(images[0], cls, job)
            svc.metrics.images.labels("explain").inc()
            return Response(
                png,
                media_type="image/png",
                headers={
                    "X-Class": header_safe(svc.names[cls]),
                    "X-Class-Index": str(cls),
                    "X-Prob": f"{prob:.6f}",
                    "X-Time-Ms": f"{1000 * (time.perf_counter() - t0):.1f}",
                },
            )

        return await svc.answered("explain", request, work)

    return api


def detect_routes(svc: Service) -> APIRouter:
    """/v1/detect: boxes, classes and scores of each image, in its own coordinates (draw=1: one image with them
    drawn, as a PNG at the size the model saw)."""
    api = APIRouter()

    @api.post(
        "/v1/detect",
        openapi_extra=_MULTIPART,
        summary="Find objects: the boxes, classes and scores in each image (draw=1: a PNG with them drawn)",
        responses={200: {"content": {"image/png": {}}, "description": "JSON results, or with draw=1 the picture"}},
    )
    async def detect(
        request: Request,
        score: float = Query(SCORE_THRESHOLD, ge=0, le=1, description="keep boxes scoring at least this"),
        draw: bool = Query(False, description="answer with the image and its boxes drawn (PNG), for one image"),
    ):
        async def work(job):
            t0 = time.perf_counter()
            svc.need_task("detection", "detect")
            names, images, sizes = await svc.decoded(request, job)
            if draw and len(images) != 1:
                raise HTTPFailure(400, f"draw=1 takes one image; got {len(images)}", kind="bad_request")
            outs = [
                to_full(o, tuple(im.shape[1:]), full)
                for o, im, full in zip(await svc.infer(images, job), images, sizes)
            ]
            rows = [boxes_of(o, score, svc.names) for o in outs]
            svc.metrics.images.labels("detect").inc(len(names))
            if draw:  # the picture the model saw (a large photo at the model's size), the boxes scaled to it
                png = await asyncio.get_running_loop().run_in_executor(
                    None, _drawn_png, images[0], outs[0], rows[0], score, sizes[0]
                )
                headers = {"X-Boxes": str(len(rows[0])), "X-Time-Ms": f"{1000 * (time.perf_counter() - t0):.1f}"}
                return Response(png, media_type="image/png", headers=headers)
            results = [{"name": n, "width": w, "height": h, "boxes": r} for n, (w, h), r in zip(names, sizes, rows)]
            return JSONResponse({"results": results, "time_ms": 1000 * (time.perf_counter() - t0)})

        return await svc.answered("detect", request, work)

    return api


def segment_routes(svc: Service) -> APIRouter:
    """/v1/segment: each image's class map as a PNG (one image: the coloured mask, or with overlay=1 laid over
    the photo), or with format=json the share of each class and the map as rows of class indices. The map is at
    the size the model saw (the image's own when it is no larger; width and height are always the image's)."""
    api = APIRouter()

    @api.post(
        "/v1/segment",
        openapi_extra=_MULTIPART,
        summary="The class of every pixel: a coloured mask (PNG), an overlay, or JSON",
        responses={200: {"content": {"image/png": {}}, "description": "the mask or overlay; JSON with format=json"}},
    )
    async def segment(
        request: Request,
        overlay: bool = Query(False, description="the mask laid over the photo"),
        format: str = Query("png", pattern="^(png|json)$", description="png: the picture (one image); json"),
    ):
        async def work(job):
            t0 = time.perf_counter()
            svc.need_task("segmentation", "segment")
            names, images, sizes = await svc.decoded(request, job)
            if format == "png" and len(images) != 1:
                raise HTTPFailure(
                    400, f"a PNG answer takes one image; got {len(images)} (format=json)", kind="bad_request"
                )
            maps = await svc.infer(images, job)
            svc.metrics.images.labels("segment").inc(len(names))
            if format == "json":
                results = [
                    {"name": n, "width": w, "height": h, "mask": m.tolist(), **shares(m, svc.names)}
                    for n, (w, h), m in zip(names, sizes, maps)
                ]
                return JSONResponse(
                    {"classes": svc.names, "results": results, "time_ms": 1000 * (time.perf_counter() - t0)}
                )
            k = len(svc.names)
            picture = lay(images[0], maps[0], k) if overlay else coloured(maps[0], k)
            png = await asyncio.get_running_loop().run_in_executor(None, _png, picture)
            return Response(
                png, media_type="image/png", headers={"X-Time-Ms": f"{1000 * (time.perf_counter() - t0):.1f}"}
            )

        return await svc.answered("segment", request, work)

    return api


def _png(picture: torch.Tensor) -> bytes:
    from torchvision.io import encode_png

    return encode_png(picture).numpy().tobytes()


def _drawn_png(image: torch.Tensor, out: dict, rows: list[dict], score: float, full: tuple[int, int]) -> bytes:
    found = {"boxes": rows, "width": full[0], "height": full[1]}
    if "masks" in out:
        found["masks"] = out["masks"][out["scores"] >= score].float()
    return _png(draw(image, found))


def info_routes(svc: Service) -> APIRouter:
    """What is served, its metrics and the API's documentation."""
    from fastapi.responses import PlainTextResponse

    api = APIRouter()

    @api.get("/v1/model", summary="What is served: architecture, classes, preprocessing, precision, backend, device")
    async def describe():
        return JSONResponse(svc.describe())

    @api.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request):
        return JSONResponse(request.app.openapi())

    @api.get("/docs", include_in_schema=False)
    async def docs():
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(
            openapi_url="openapi.json",
            title="resnets: the API",
            swagger_js_url="docs/assets/swagger-ui-bundle.js",
            swagger_css_url="docs/assets/swagger-ui.css",
            swagger_favicon_url="docs/assets/favicon.png",
        )

    return api


def open_routes(svc: Service) -> APIRouter:
    """What needs no token: whether the process is up, whether it takes requests, the page."""
    from fastapi.responses import HTMLResponse

    api = APIRouter()

    @api.get("/healthz", summary="The process is up")
    async def healthz():
        return {"status": "ok"}

    @api.get("/readyz", summary="The model is loaded and warmed up: requests are taken")
    async def readyz():
        if not svc.ready:
            return JSONResponse({"status": "starting or stopping"}, 503)
        return {"status": "ready"}

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(_page())

    return api


def doc_assets():
    """Swagger UI's script and style as the fastapi-offline package ships them (nothing fetched from a CDN)."""
    from fastapi.staticfiles import StaticFiles

    return StaticFiles(directory=str(resources.files("fastapi_offline").joinpath("static")))


def _page() -> str:
    return resources.files("resnets").joinpath("assets/serve.html").read_text(encoding="utf-8")
