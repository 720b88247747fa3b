"""The Open Inference Protocol (KServe v2, Triton's HTTP API) beside our own API: the clients of KServe and Triton
(tritonclient) call `resnets serve` as they call those servers. Images go in as the BYTES input "image" (encoded
files: JPEG, PNG, ...), one element an image, decoded through the same sandbox, admission, batcher and limits as
/v1/predict and /v1/detect. A classifier answers "logits" and "probabilities" (FP32, one row an image), "features"
(the pooled features /v1/embed answers) and Triton's classification extension (an output asked with parameters
{"classification": k}: "score:index:label" strings); a detector "boxes", "scores", "labels" and "count"
(`outputs_of`). Requests and answers in JSON, or with the binary-data extension (a JSON header of
Inference-Header-Content-Length bytes, then the tensors' bytes); a BYTES element in binary is a 4-byte
little-endian length and its bytes, in JSON a base64 string.

A classifier's images can also come as the typed tensor "input", [N, C, H, W] at the model's input size: FP32
normalised as the model takes it (the input of the model `resnets export --format triton` writes, so one request
serves both), or UINT8 pixels, which the server normalises. They skip decoding and join the same admission,
batches and limits.

Not here yet: segmenters' class maps, the model repository and model-control extensions."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
import time

import numpy as np
import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..data import jsonfile
from ..detect import to_full
from ..errors import ResnetsError, printable
from ..version import __version__
from .limits import HTTPFailure, Limits
from .service import Service
from .tasks import SCORE_THRESHOLD

HEADER = "Inference-Header-Content-Length"
INPUT = "image"  # BYTES: encoded image files
TENSOR = "input"  # FP32 (normalised) or UINT8 (pixels): [N, C, H, W] at the model's input size
TENSOR_TYPES = {"FP32": "<f4", "UINT8": "u1"}
CLASSIFIES = ("logits", "probabilities")  # the outputs Triton's classification extension ranks
DATATYPES = {np.dtype("float32"): "FP32", np.dtype("int64"): "INT64"}
DEPTH = 8  # nesting of a request's JSON (objects, lists): what the protocol needs, and no more


def as_v2_error(answer: Response) -> JSONResponse:
    """Our one-line refusal {"detail"} as the protocol's {"error"}, its headers kept (Retry-After, Connection)."""
    kept = {k: v for k, v in answer.headers.items() if k.lower() not in ("content-length", "content-type")}
    return JSONResponse({"error": json.loads(answer.body).get("detail", "")}, answer.status_code, headers=kept)


def _refused(detail: str) -> HTTPFailure:
    return HTTPFailure(400, detail)


def _json(raw: bytes, values: int) -> dict:
    """The request's JSON object through the bounded reader (UTF-8, nesting depth, memory): once parsed, at most
    about twice its bytes and `values` numbers more (the largest typed tensor a request may give)."""
    bound = 2 * len(raw) + (1 << 20) + jsonfile.VALUE_BYTES * values
    why = "far more values than a request holds: base64 strings, or --max-files images' tensors"
    try:
        doc = jsonfile.loads(raw, "the request's JSON", max_depth=DEPTH, bound=(bound, why))
    except ResnetsError as e:
        raise _refused(str(e)) from None
    if not isinstance(doc, dict):
        raise _refused("the request's JSON is not an object")
    return doc


def _split_bytes(blob: bytes, n: int) -> list[bytes]:
    """`n` elements of a BYTES tensor in binary: each a 4-byte little-endian length, then that many bytes."""
    out, at = [], 0
    for _ in range(n):
        if at + 4 > len(blob):
            raise _refused("the BYTES tensor's binary data ends inside an element's length")
        (size,) = struct.unpack_from("<I", blob, at)
        at += 4
        if at + size > len(blob):
            raise _refused("the BYTES tensor's binary data ends inside an element")
        out.append(blob[at : at + size])
        at += size
    if at != len(blob):
        raise _refused(f"the BYTES tensor holds {len(blob) - at} bytes past its {n} elements")
    return out


def request_of(request: Request, body: bytes, values: int) -> tuple[dict, bytes]:
    """(the JSON header, the binary data after it) of an infer request; `values`: as _json's."""
    size = request.headers.get(HEADER)
    if size is None:
        return _json(body, values), b""
    if not re.fullmatch(r"[0-9]{1,12}", size) or int(size) > len(body):
        raise _refused(f"{HEADER} is {size[:20]!r} for a body of {len(body)} bytes")
    return _json(body[: int(size)], values), body[int(size) :]


def inputs_in(doc: dict, binary: bytes, limits: Limits, shape: tuple[int, ...] | None) -> list[tuple[str, object]]:
    """Each image of the request's one input: (name, its encoded bytes) of "image", or (name, a (C, H, W) tensor
    at the model's input `shape`) of "input" (None: a model that takes encoded images only)."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise _refused(f'give one input: "{INPUT}" (BYTES: encoded images) or "{TENSOR}" (FP32 or UINT8 [N, C, H, W])')
    spec = inputs[0]
    name, kind = spec.get("name"), spec.get("datatype")
    name, kind = (v if isinstance(v, str) else repr(v)[:40] for v in (name, kind))  # (a list is no dict key)
    if name == TENSOR and shape is None:
        raise _refused(f'this model takes "{INPUT}" only (BYTES: encoded image files, of any size)')
    if name == TENSOR and kind in TENSOR_TYPES:
        return tensors_in(spec, binary, limits, shape)
    if name != INPUT or kind != "BYTES":
        raise _refused(
            f'the inputs are "{INPUT}" (BYTES: encoded image files) or "{TENSOR}" (FP32 normalised, or UINT8 pixels: '
            f"[N, {', '.join(map(str, shape))}]); got {printable(str(name))[:40]!r}, {printable(str(kind))[:10]}"
        )
    return images_in(spec, binary, limits)


def _images_count(spec: dict, shape: list, limits: Limits) -> int:
    n = shape[0]
    if n == 0:
        raise _refused(f'"{spec["name"]}" holds no images (shape {shape})')
    if n > limits.max_files:
        raise HTTPFailure(413, f"more than {limits.max_files} images in one request (--max-files)", kind="too_large")
    return n


def tensors_in(spec: dict, binary: bytes, limits: Limits, shape: tuple[int, ...]) -> list[tuple[str, torch.Tensor]]:
    """(name, (C, H, W) tensor) of each image of the typed input "input": FP32 (finite) or UINT8, in JSON (numbers,
    flat or nested row-major) or binary (little-endian), exactly [N, *shape]."""
    kind, dims = spec["datatype"], spec.get("shape")
    if not isinstance(dims, list) or len(dims) != 4 or not all(_count(d) for d in dims) or dims[1:] != list(shape):
        want = ", ".join(map(str, shape))
        raise _refused(f'"{TENSOR}" has shape [N, {want}] (the model\'s input); got {printable(str(dims))[:60]}')
    n = _images_count(spec, dims, limits)
    count, dtype = n * math.prod(shape), np.dtype(TENSOR_TYPES[kind])
    params = _params(spec)
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not _count(size) or size != len(binary) or size != count * dtype.itemsize:
            raise _refused(
                f'"{TENSOR}"\'s binary_data_size is {str(size)[:20]}; {len(binary)} bytes follow the header, and '
                f"{n} x {list(shape)} {kind} takes {count * dtype.itemsize}"
            )
        array = np.frombuffer(binary, dtype).astype(dtype.newbyteorder("="))
    else:
        array = _numbers(spec.get("data"), kind, count)
    if kind == "FP32" and not np.isfinite(array).all():
        raise _refused(f'"{TENSOR}" holds values that are not finite')
    images = torch.from_numpy(array.reshape(n, *shape)).unbind(0)
    return [(f"{TENSOR}[{i}]", im) for i, im in enumerate(images)]


def _numbers(data, kind: str, count: int) -> np.ndarray:
    """A JSON tensor's `count` numbers as FP32 or UINT8 (whole numbers from 0 to 255), flat."""
    wrong = f'"{TENSOR}"\'s data in JSON: {count} numbers ({kind}), flat or nested row-major'
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):  # ragged nesting
        raise _refused(wrong) from None
    if not isinstance(data, list) or array.size != count or array.dtype.kind not in ("iuf" if kind == "FP32" else "iu"):
        raise _refused(wrong)
    if any(v is True or v is False for v in _leaves(data)):  # numpy takes true for 1 beside numbers
        raise _refused(wrong)
    if kind == "UINT8":
        if array.min() < 0 or array.max() > 255:
            raise _refused(f'"{TENSOR}" is UINT8: its values are from 0 to 255')
        return array.astype(np.uint8).ravel()
    return array.astype(np.float32).ravel()


def _leaves(data: list):
    """The values of a nested list, row-major (its nesting is bounded by the request's depth)."""
    for v in data:
        if isinstance(v, list):
            yield from _leaves(v)
        else:
            yield v


def images_in(spec: dict, binary: bytes, limits: Limits) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image of the request's "image" input."""
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(_count(d) for d in shape) or len(shape) not in (1, 2):
        raise _refused(f'"{INPUT}" has shape [N] or [N, 1]; got {str(shape)[:40]}')
    if len(shape) == 2 and shape[1] != 1:
        raise _refused(f'"{INPUT}" has shape [N] or [N, 1]; got {shape}')
    n = _images_count(spec, shape, limits)
    params = _params(spec)
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not _count(size) or size != len(binary):
            raise _refused(f'"{INPUT}"\'s binary_data_size is {str(size)[:20]}; {len(binary)} bytes follow the header')
        files = _split_bytes(binary, n)
    else:
        data = spec.get("data")
        if isinstance(data, list) and len(data) == n and all(isinstance(d, list) and len(d) == 1 for d in data):
            data = [d[0] for d in data]  # [N, 1] nested
        if not isinstance(data, list) or len(data) != n or not all(isinstance(d, str) for d in data):
            raise _refused(f'"{INPUT}"\'s data: {n} base64 strings in JSON, or the binary-data extension')
        try:
            files = [base64.b64decode(d, validate=True) for d in data]
        except (binascii.Error, ValueError):  # (a non-ASCII character is a ValueError)
            raise _refused(f'"{INPUT}"\'s data in JSON is base64 (the binary-data extension takes raw bytes)') from None
    return [(f"{INPUT}[{i}]", f) for i, f in enumerate(files)]


def _count(v) -> bool:
    """A whole number >= 0 (not a bool, which Python counts as an int)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _params(spec: dict) -> dict:
    """A request's, an input's or an output's "parameters": an object, or none."""
    params = spec.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise _refused('"parameters" is an object ({"name": value, ...})')
    return params


def _flag(params: dict, key: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise _refused(f'"{key}" is true or false; got {str(value)[:20]}')
    return value


def outputs_of(svc: Service) -> dict[str, tuple[str, list[int]]]:
    """The model's outputs in the protocol: name -> (datatype, shape; -1 any count). A classifier: its logits and
    probabilities (an image a row) and, a model with pooled features (not an ONNX file), those ("features", what
    /v1/embed answers). A detector: each image's boxes (x0, y0, x1, y1 in its own pixels), scores and class indices,
    best first, padded to the most boxes an image of the request has (boxes and scores 0, labels -1), and each
    image's count of boxes."""
    if svc.task == "detection":
        return {
            "boxes": ("FP32", [-1, -1, 4]),
            "scores": ("FP32", [-1, -1]),
            "labels": ("INT64", [-1, -1]),
            "count": ("INT64", [-1]),
        }
    n = len(svc.names)
    out = {"logits": ("FP32", [-1, n]), "probabilities": ("FP32", [-1, n])}
    if svc.features:
        out["features"] = ("FP32", [-1, svc.model.num_features])
    return out


def _asked(doc: dict, svc: Service) -> list[tuple[str, bool, int]]:
    """(output, in binary, classification's k or 0) of each output the request asks for, each at most once
    (default: all, in JSON or as the request's binary_data_output parameter says)."""
    if "id" in doc and not isinstance(doc["id"], str):
        raise _refused('"id" is a string')
    default_binary = _flag(_params(doc), "binary_data_output", False)
    given, names = outputs_of(svc), svc.names
    asked = doc.get("outputs")
    if asked is None:
        return [(o, default_binary, 0) for o in given]
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise _refused('"outputs" is a list of {"name": ..., "parameters": {...}}')
    out = []
    for o in asked:
        params = _params(o)
        k = params.get("classification", 0)
        if not isinstance(o.get("name"), str) or o["name"] not in given:
            raise _refused(f"unknown output {str(o.get('name'))[:40]!r}; this model gives {', '.join(given)}")
        if any(o["name"] == seen for seen, _, _ in out):
            raise _refused(f"output {o['name']!r} asked twice")
        if not _count(k) or k > len(names):
            raise _refused(f"classification is a count of classes from 0 to {len(names)}; got {str(k)[:20]}")
        if k and o["name"] not in CLASSIFIES:
            raise _refused(f"classification ranks a classifier's {' or '.join(CLASSIFIES)}, not {o['name']!r}")
        out.append((o["name"], _flag(params, "binary_data", default_binary), k))
    return out


def _score(doc: dict) -> float:
    """A detector's request parameter "score": keep boxes scoring at least this (as /v1/detect's ?score=)."""
    value = _params(doc).get("score", SCORE_THRESHOLD)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise _refused(f'"score" is a number from 0 to 1; got {printable(str(value))[:20]}')
    return float(value)


def classifier_tensors(svc: Service, rows: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """A classifier's outputs for the batcher's rows (pooled features, or an ONNX file's logits)."""
    feats = torch.stack(rows).float()
    logits = svc.logits(feats).float()
    out = {"logits": logits.numpy(), "probabilities": logits.softmax(1).numpy()}
    if svc.features:
        out["features"] = feats.numpy()
    return out


def detector_tensors(svc: Service, rows: list[dict], images: list, sizes: list, score: float) -> dict[str, np.ndarray]:
    """A detector's outputs: the boxes scoring at least `score` in each image's own coordinates, padded."""
    kept = []
    for out, im, full in zip(rows, images, sizes):
        out = to_full(out, tuple(im.shape[1:]), full)
        keep = out["scores"] >= score
        kept.append((out["boxes"][keep].float(), out["scores"][keep].float(), out["labels"][keep].long()))
    n, k = len(kept), max((len(s) for _, s, _ in kept), default=0)
    boxes, scores = np.zeros((n, k, 4), np.float32), np.zeros((n, k), np.float32)
    labels, count = np.full((n, k), -1, np.int64), np.zeros(n, np.int64)
    for i, (b, s, c) in enumerate(kept):
        boxes[i, : len(s)], scores[i, : len(s)], labels[i, : len(s)], count[i] = b.numpy(), s.numpy(), c.numpy(), len(s)
    return {"boxes": boxes, "scores": scores, "labels": labels, "count": count}


def _bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def answer(svc: Service, doc: dict, asked: list[tuple[str, bool, int]], tensors: dict, model: str) -> Response:
    """The infer response to `doc`: each output `asked` (_asked) of `tensors` in JSON or binary (then the JSON
    header's length in HEADER)."""
    outputs, blobs = [], []
    for name, _, _ in asked:
        if tensors[name].dtype.kind == "f" and not np.isfinite(tensors[name]).all():
            raise HTTPFailure(
                422, f"the model's {name} are not finite for these inputs (values too large?)", kind="bad_request"
            )
    for name, binary, k in asked:
        if k:  # the asked output's own values, best first
            p, c = torch.from_numpy(tensors[name]).topk(k, dim=1)
            rows = [
                [f"{q:.6f}:{j}:{svc.names[j]}".encode() for q, j in zip(pr, cr)]
                for pr, cr in zip(p.tolist(), c.tolist())
            ]
            spec = {"name": name, "datatype": "BYTES", "shape": [len(rows), k]}
            flat = [e for row in rows for e in row]
            data, blob = [e.decode() for e in flat], _bytes_tensor(flat)
        else:
            array = tensors[name]
            spec = {"name": name, "datatype": DATATYPES[array.dtype], "shape": list(array.shape)}
            data, blob = array.ravel().tolist(), np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
        if binary:
            spec["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            spec["data"] = data
        outputs.append(spec)
    head = {"model_name": model, "model_version": "1", "outputs": outputs}
    if "id" in doc:
        head["id"] = doc["id"]
    if not blobs:
        return JSONResponse(head)
    header = json.dumps(head).encode()
    return Response(header + b"".join(blobs), media_type="application/octet-stream", headers={HEADER: str(len(header))})


def metadata(svc: Service, model: str) -> dict:
    """The model's metadata: its inputs and outputs, with their types and shapes (-1: any count). A classifier
    takes encoded images or tensors at its input size; a detector encoded images (of any size)."""
    inputs = [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}]
    if svc.task == "classification":
        inputs.append({"name": TENSOR, "datatype": "FP32", "shape": [-1, *svc.input_shape]})  # or UINT8 (pixels)
    outputs = [{"name": o, "datatype": kind, "shape": shape} for o, (kind, shape) in outputs_of(svc).items()]
    platform = (
        "onnxruntime_onnx" if str(svc.backend).startswith("onnxruntime") else "pytorch_libtorch"
    )  # Triton's names
    return {"name": model, "versions": ["1"], "platform": platform, "inputs": inputs, "outputs": outputs}


def oip_routes(svc: Service, model: str) -> APIRouter:
    """/v2 (the server), /v2/models/MODEL[/versions/1] (metadata, readiness, infer): behind the token."""
    api = APIRouter()

    def known(name: str, version: str | None = None) -> None:
        if name != model or version not in (None, "1"):
            raise HTTPFailure(
                404,
                f"unknown model {name[:60]!r}{'' if version is None else f' version {version[:20]}'}; this server serves {model!r} (version 1)",
                kind="not_found",
            )

    @api.get("/v2", summary="The Open Inference Protocol's server metadata")
    async def server():
        return {"name": "resnets", "version": __version__, "extensions": ["binary_tensor_data", "classification"]}

    @api.get("/v2/models/{name}", summary="The model's metadata (Open Inference Protocol)")
    @api.get("/v2/models/{name}/versions/{version}", include_in_schema=False)
    async def model_metadata(name: str, version: str | None = None):
        known(name, version)  # (the app answers a refusal under /v2 as the protocol's {"error"})
        return metadata(svc, model)

    @api.get("/v2/models/{name}/ready", summary="Whether the model takes requests (Open Inference Protocol)")
    @api.get("/v2/models/{name}/versions/{version}/ready", include_in_schema=False)
    async def model_ready(name: str, version: str | None = None):
        known(name, version)  # (the app answers a refusal under /v2 as the protocol's {"error"})
        return Response(status_code=200 if svc.ready else 503)

    @api.post("/v2/models/{name}/infer", summary="Classify images (Open Inference Protocol: JSON or binary tensors)")
    @api.post("/v2/models/{name}/versions/{version}/infer", include_in_schema=False)
    async def infer(name: str, request: Request, version: str | None = None):
        async def work(job):
            known(name, version)  # (the router is mounted for a classifier or a detector)
            parsed: dict = {}

            async def files(request, body, limits):
                shape = getattr(svc, "input_shape", None) if svc.task == "classification" else None
                values = limits.max_files * math.prod(shape) if shape else 0  # the largest typed input
                parsed["doc"], binary = request_of(request, body, values)
                parsed["asked"] = _asked(parsed["doc"], svc)  # a bad one refused before any image is decoded
                parsed["score"] = _score(parsed["doc"]) if svc.task == "detection" else None
                return inputs_in(parsed["doc"], binary, limits, shape)

            t0 = time.perf_counter()
            names, images, sizes = await svc.decoded(request, job, parse=files)
            rows = await svc.infer(images, job)
            svc.metrics.images.labels("v2_infer").inc(len(names))
            if svc.task == "detection":
                tensors = detector_tensors(svc, rows, images, sizes, parsed["score"])
            else:
                tensors = classifier_tensors(svc, rows)
            response = answer(svc, parsed["doc"], parsed["asked"], tensors, model)
            response.headers["X-Time-Ms"] = f"{1000 * (time.perf_counter() - t0):.1f}"
            return response

        response = await svc.answered("v2_infer", request, work)
        if response.status_code >= 400 and response.media_type == "application/json":  # the protocol's {"error"}
            return as_v2_error(response)
        return response

    return api


def health_routes(svc: Service) -> APIRouter:
    """/v2/health/live and /v2/health/ready: open, as /healthz and /readyz are (a load balancer's probes)."""
    api = APIRouter()

    @api.get("/v2/health/live", summary="The process is up (Open Inference Protocol)")
    async def live():
        return Response(status_code=200)

    @api.get("/v2/health/ready", summary="The model is loaded and warmed up (Open Inference Protocol)")
    async def ready():
        return Response(status_code=200 if svc.ready else 503)

    return api
