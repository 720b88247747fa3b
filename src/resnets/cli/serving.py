"""`resnets serve`, `push` and `cache`."""

from __future__ import annotations

import argparse

from ..backends import BACKENDS, PRECISIONS, onnx_cache, trim_onnx_cache
from ..errors import printable
from ..home import cache_dir, home_dir, onnx_cache_dir
from .options import count, model_name, real

# what loads torch is imported inside the commands that use it: `resnets --help` answers without torch


def _cmd_push(args: argparse.Namespace) -> int:
    from ..weights.publish import push

    url = push(args.folder, args.repo, private=args.private, message=args.message)
    print(f"pushed {args.folder} to {args.repo}: {url}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..serve import Limits, app, check_listen, run

    check_listen(args.host, args.port)  # before the model is loaded: a busy port is one line, at once
    limits = Limits(
        max_upload_mb=args.max_upload_mb,
        max_upload_mb_in_flight=args.max_upload_mb_in_flight,
        max_files=args.max_files,
        max_queue=args.max_queue,
        timeout_s=args.timeout_s,
        max_pixels=args.max_pixels,
        max_pixels_in_flight=args.max_pixels_in_flight,
    )
    api = app(
        args.weights,
        backend=args.backend,
        precision=args.precision,
        device=args.device,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        decode_workers=args.workers_decode,
        token=args.token,
        limits=limits,
        calib=args.calib,
        model_name=args.model_name,
    )
    svc = api.state.service
    where = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}"
    oip = f", the Open Inference Protocol at /v2/models/{api.state.oip_model}" if api.state.oip_model else ""
    print(
        f"serving {svc.shown()[:-1]}, {svc.backend} at {svc.precision} on "
        f"{svc.device}) at {where}: the page at /, the API at /docs{oip}"
        f"{'; a bearer token is required' if svc.token else ''}",
        flush=True,
    )
    run(
        api,
        args.host,
        args.port,
        log_level="debug" if args.verbose else args.log_level,
        header_timeout_s=args.header_timeout_s,
    )
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    def files(folder, pattern="*"):
        return sorted(p for p in folder.glob(pattern) if p.is_file()) if folder.is_dir() else []

    faiss_dir = home_dir() / "faiss"  # `similar`'s approximate indexes (inference.index_for)
    weights, faiss = files(cache_dir()), files(faiss_dir)
    if args.clear in ("onnx", "all"):
        gone = trim_onnx_cache(0)
        print(f"removed {len(gone)} ONNX exports")
    for title, found in (("weights", weights), ("faiss", faiss)):
        if args.clear in (title, "all"):
            for p in found:
                p.unlink(missing_ok=True)
            print(f"removed {len(found)} {'weight' if title == 'weights' else 'search index'} files")
    if args.clear:
        return 0
    folders = {"weights": cache_dir(), "onnx": onnx_cache_dir(), "faiss": faiss_dir}
    for title, found in (("weights", weights), ("onnx", onnx_cache()), ("faiss", faiss)):
        size = sum(p.stat().st_size for p in found)
        print(f"{title}: {folders[title]} ({len(found)} files, {size / 1e6:.1f} MB)")
        for p in found:
            print(f"  {printable(p.name)}  {p.stat().st_size / 1e6:.1f} MB")
    print(
        "the ONNX cache keeps the most recently used exports within $RESNETS_ONNX_CACHE_MB (default 2048 MB); "
        "`resnets cache --clear onnx|weights|faiss|all` empties it"
    )
    return 0


def _add_serve_limits(p) -> None:
    """serve's limits: decode threads, the token, body and queue sizes, timeouts, the log."""
    p.add_argument("--workers-decode", type=count(1), default=4, help="threads decoding uploads")
    p.add_argument(
        "--token",
        default=None,
        help="require this bearer token (better: $RESNETS_SERVE_TOKEN, which ps "
        "does not show); printable ASCII without spaces",
    )
    p.add_argument(
        "--max-upload-mb",
        type=real(0, 4096, low_open=True),
        default=20.0,
        help="a larger request body is 413 (default 20)",
    )
    p.add_argument(
        "--max-upload-mb-in-flight",
        type=real(0, 65536, low_open=True),
        default=None,
        help="MB of request bodies all requests together may hold while they arrive and are decoded (counted from "
        "each one's Content-Length before it is read); a request past it is 503 with Retry-After at once, one alone "
        "over it 413 (default 256, or 4 x --max-upload-mb if that is more)",
    )
    p.add_argument("--max-files", type=count(1), default=64, help="images in one request at most")
    p.add_argument("--max-queue", type=count(1), default=256, help="images waiting at most; then 503 with Retry-After")
    p.add_argument(
        "--max-pixels-in-flight",
        type=count(1),
        default=64_000_000,
        help="pixels the requests in flight may hold decoded (each image counted from its header, as decoded for "
        "the model); a request past it is 503 with Retry-After (default 64,000,000)",
    )
    p.add_argument(
        "--timeout-s",
        type=real(0, 3600, low_open=True),
        default=30.0,
        help="a request not answered in this time: 503 with Retry-After if it was still waiting (one the queue "
        "would make late is refused so at once), 504 if the model was running it (default 30)",
    )
    p.add_argument(
        "--header-timeout-s",
        type=real(0, 600, low_open=True),
        default=10.0,
        help="a connection whose request headers take longer is closed (slow-header clients; default 10)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="the server's log; info (the default) logs each request (client, request line, status; never the token)",
    )


def add_commands(sub) -> None:
    """The subcommands of serving, publishing and the caches."""
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP (FastAPI on uvicorn): an API with dynamic batching, and a web page to try it",
    )
    p.add_argument(
        "--weights",
        required=True,
        help="what the other commands take: a model file or run folder, "
        "registered weights, hf-hub:ORG/NAME, a torchvision, timm or Keras file",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default only this machine; 0.0.0.0 for every interface)",
    )
    p.add_argument("--port", type=count(1, 65535), default=8000, help="the TCP port (default 8000)")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", *BACKENDS],
        help="as predict's; onnxruntime-int8 is calibrated on the images of --calib",
    )
    p.add_argument("--calib", nargs="+", metavar="PATH", help="images (files or folders) to calibrate int8 on")
    p.add_argument(
        "--model-name",
        type=model_name,
        help="the model's name in the Open Inference Protocol's paths, /v2/models/NAME (default: its architecture)",
    )
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    p.add_argument("--max-batch", type=count(1), default=32, help="images per model batch at most")
    p.add_argument(
        "--max-wait-ms",
        type=real(0, 60_000),
        default=5.0,
        help="how long the first image of a batch waits for others (default 5)",
    )
    _add_serve_limits(p)
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser("push", help="upload a folder written by `export --format hub` to the Hugging Face Hub")
    p.add_argument("folder", help="the folder `resnets export --format hub --out DIR` wrote")
    p.add_argument(
        "--repo",
        required=True,
        help="ORG/NAME on the Hub (created if missing); the token is the one `hf auth login` stored, or $HF_TOKEN",
    )
    p.add_argument("--private", action="store_true", help="a new repo is private")
    p.add_argument("--message", help="the commit message")
    p.set_defaults(func=_cmd_push)
    p = sub.add_parser(
        "cache",
        help="the downloaded weights, cached ONNX exports and similar's search indexes: where, how large; "
        "--clear empties",
    )
    p.add_argument(
        "--clear",
        choices=["onnx", "weights", "faiss", "all"],
        help="remove the ONNX exports, the weights, the search indexes, or all",
    )
    p.set_defaults(func=_cmd_cache)
