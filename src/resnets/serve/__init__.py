"""`resnets serve`: a model behind an HTTP API and a web page (FastAPI on uvicorn), with dynamic batching.

Requests are decoded in a pool of threads (`decode_workers`), each image resized and cropped as the model's
preprocessing says, then queued; one inference thread takes up to `max_batch` images, or what has arrived after
`max_wait_ms`, whichever comes first, and runs them as one batch through the chosen backend (eager, compile,
ONNX Runtime, int8). The batch gives pooled features; predict applies the classifier to them, embed returns them,
so both share batches. Grad-CAM (explain) needs gradients: it runs eagerly, one image at a time.

Limits: an upload over `max_upload_mb` is 413 (read no further); an image over the pixel limit is 413, a
non-image 415, a truncated or corrupt one 422, each with a one-line reason. Admission: a request whose images
(counted from their headers, as decoded for the model) would pass `max_pixels_in_flight`, or that the work queued
ahead would make miss `timeout_s`, or that finds more than `max_queue` images waiting, is 503 with Retry-After at
once; a request still waiting at `timeout_s` is 503, one the model was running 504; a client that disconnects has
its images taken out of the queue. Nothing a client sends names a file here.
With a token (`token=` or $RESNETS_SERVE_TOKEN) every endpoint but the health checks and the page wants
`Authorization: Bearer <token>`.

The parts: limits.py (what a request may be), batcher.py (dynamic batching), admission.py (which requests are
taken on), service.py (the model behind the app), routes.py (the endpoints), app.py (the ASGI app), server.py
(uvicorn)."""

from .app import TOKEN_ENV, app
from .batcher import Batcher
from .limits import STATUS_OF_KIND, HTTPFailure, Limits
from .server import check_listen, run
from .service import Metrics, Service

__all__ = [
    "STATUS_OF_KIND",
    "TOKEN_ENV",
    "Batcher",
    "HTTPFailure",
    "Limits",
    "Metrics",
    "Service",
    "app",
    "check_listen",
    "run",
]
