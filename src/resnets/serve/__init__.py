"""`resnets serve`: a model behind an HTTP API and a web page (FastAPI on uvicorn), with dynamic batching.

Requests are decoded in a pool of threads (`decode_workers`), each image resized and cropped as the model's
preprocessing says, then queued; one inference thread takes up to `max_batch` images, or what has arrived after
`max_wait_ms`, whichever comes first, and runs them as one batch through the chosen backend (eager, compile,
ONNX Runtime, int8). The batch gives pooled features; predict applies the classifier to them, embed returns them,
so both share batches. Grad-CAM (explain) needs gradients: it runs eagerly, one image at a time, in a lane of its
own (one thread) under the same admission.

Limits: an upload over `max_upload_mb` is 413 (read no further), one whose body has not arrived within
`body_timeout_s` 408 (its connection closed); an image over the pixel limit is 413, a non-image 415, a truncated or
corrupt one 422, each with a one-line reason. Admission: a request whose images (counted from their headers, as
decoded for the model) would pass `max_pixels_in_flight`, or that the work queued ahead would make miss
`timeout_s`, or that finds more than `max_queue` images waiting, is 503 with Retry-After at once; one that could
never be taken on (more pixels than the whole budget, more images than `max_queue`) is 413 at once; a request still
waiting at `timeout_s` is 503, one the model was running 504; a client that disconnects has its images taken out
of the queue. Nothing a client sends names a file here.
With a token (`token=` or $RESNETS_SERVE_TOKEN) every endpoint but the health checks and the page wants
`Authorization: Bearer <token>`.

The parts: limits.py (what a request may be), batcher.py (dynamic batching, and the lane Grad-CAM runs in),
admission.py (which requests are taken on), service.py (the model behind the app: what every task shares),
tasks.py (each task's hooks: classifier, detector, segmenter), auth.py (the token), routes.py (the endpoints),
app.py (the ASGI app), server.py (uvicorn)."""

from .app import TOKEN_ENV, app
from .batcher import Batcher, Lane
from .limits import STATUS_OF_KIND, HTTPFailure, Limits
from .server import check_listen, run
from .service import Metrics, Service
from .tasks import ClassifierService, DetectorService, SegmenterService

__all__ = [
    "STATUS_OF_KIND",
    "TOKEN_ENV",
    "Batcher",
    "ClassifierService",
    "DetectorService",
    "HTTPFailure",
    "Lane",
    "Limits",
    "Metrics",
    "SegmenterService",
    "Service",
    "app",
    "check_listen",
    "run",
]
