"""`resnets serve` under load: many concurrent clients sending real JPEGs, 10% of them bad uploads, for a fixed time,
beside `resnets predict` over the same images with the same backend in the same run.

    python benchmarks/serve_load.py --json benchmarks/results/serve_load.json

Reports, per concurrency: throughput (good images answered per second) and its ratio to predict's, p50/p95/p99
latency of the good requests, the status codes (5xx must be zero, every bad upload a 4xx), and the server's
resident memory after the first 10 seconds and at the end. On a GPU (--device cuda), the peer is `resnets bench`
model-only at the same precision and batch size.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name


def _photos(folder: Path, n: int) -> list[Path]:
    """n real photos as JPEG (quality 90) at ImageNet-like sizes, from scikit-image's pictures."""
    from PIL import Image
    from skimage import data as sk

    sources = [
        sk.astronaut(),
        sk.chelsea(),
        sk.coffee(),
        sk.rocket(),
        sk.cat(),
        sk.immunohistochemistry(),
        sk.hubble_deep_field(),
        sk.camera(),
    ]
    sizes = [(500, 375), (375, 500), (640, 480), (400, 400), (512, 341)]
    out = []
    for i in range(n):
        im = Image.fromarray(sources[i % len(sources)]).convert("RGB").resize(sizes[i % len(sizes)])
        p = folder / f"photo{i:03d}.jpg"
        im.save(p, quality=90)
        out.append(p)
    return out


def _bad(folder: Path) -> list[tuple[str, bytes, str]]:
    """(name, bytes, what) of uploads that must be answered 4xx."""
    from PIL import Image

    good = (folder / "photo000.jpg").read_bytes()
    bomb = io.BytesIO()
    Image.new("RGB", (6000, 6000)).save(bomb, "PNG")  # 36 MP, over the --max-pixels given to the server
    return [
        ("truncated.jpg", good[: len(good) // 3], "truncated"),
        ("notes.txt", b"not an image at all\n" * 50, "text"),
        ("bomb.png", bomb.getvalue(), "pixel bomb"),
        ("empty.jpg", b"", "empty"),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _predict_rate(
    weights: str, photos: list[Path], backend: str, device: str, precision: str, batch: int, repeats: int
) -> float:
    """Images per second of `resnets predict` (decoding in 2 workers, as the command does) over the photos, the
    backend made once before the clock starts (an export or compile is paid once, as a server pays it)."""
    import resnets
    from resnets.backends import make_runner
    from resnets.inference import predict

    model = resnets.load(weights).to(device)
    runner = make_runner(model, backend, precision=precision, device=device)
    files = [str(p) for p in photos]
    predict(model, files[:batch], runner=runner, batch_size=batch, workers=0)  # warm up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(model, files, runner=runner, batch_size=batch, workers=2)
        rates.append(len(files) / (time.perf_counter() - t0))
    return statistics.median(rates)


def _bench_rate(weights: str, backend: str, device: str, precision: str, batch: int) -> float:
    """Images per second of the model alone (`resnets bench`'s measurement): one batch already on the device."""
    import torch

    import resnets
    from resnets.backends import bench, make_runner
    from resnets.meta import preprocessing_for

    model = resnets.load(weights).to(device)
    run = make_runner(model, backend, precision=precision, device=device)
    pre = preprocessing_for(model)
    return bench(run, torch.randn(batch, len(pre.mean), pre.crop, pre.crop, device=device))["images_per_s"]


async def _load(
    url: str, clients: int, seconds: float, good: list[bytes], bad: list[tuple[str, bytes, str]], rss
) -> dict:
    import httpx

    stop = time.perf_counter() + seconds
    lat, codes, bad_codes = [], {}, {}
    counter = {"n": 0, "images": 0}
    rss_at_10 = {}

    async def client(k: int):
        async with httpx.AsyncClient(timeout=120) as c:
            while time.perf_counter() < stop:
                i = counter["n"]
                counter["n"] += 1
                if i % 10 == 9:  # every tenth upload is a bad one
                    name, data, what = bad[(i // 10) % len(bad)]
                    r = await c.post(url + "/v1/predict", files={"files": (name, data)})
                    bad_codes.setdefault(what, {}).setdefault(r.status_code, 0)
                    bad_codes[what][r.status_code] += 1
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    continue
                t0 = time.perf_counter()
                r = await c.post(url + "/v1/predict", files={"files": (f"p{i}.jpg", good[i % len(good)])})
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    lat.append(time.perf_counter() - t0)
                    counter["images"] += 1

    async def sampler():
        await asyncio.sleep(10)
        rss_at_10["mb"] = rss()

    t0 = time.perf_counter()
    await asyncio.gather(sampler(), *(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - t0
    lat.sort()
    q = lambda f: 1000 * lat[min(int(f * len(lat)), len(lat) - 1)] if lat else float("nan")  # noqa: E731
    return {
        "clients": clients,
        "seconds": elapsed,
        "good_images": counter["images"],
        "images_per_s": counter["images"] / elapsed,
        "p50_ms": q(0.50),
        "p95_ms": q(0.95),
        "p99_ms": q(0.99),
        "status_codes": {str(k): v for k, v in sorted(codes.items())},
        "bad_uploads": {w: {str(k): v for k, v in c.items()} for w, c in bad_codes.items()},
        "rss_mb_after_10s": rss_at_10.get("mb"),
        "rss_mb_end": rss(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default="resnet50", help="an architecture (random weights) or weights")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--clients", default="32,128")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--images", type=int, default=64, help="distinct photos")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=10)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    import torch

    import resnets
    from resnets.backends import auto_backend

    work = Path(tempfile.mkdtemp(prefix="resnets-serve-load-"))
    weights = args.weights
    if weights in resnets.list_models():  # random weights with ImageNet's preprocessing, saved as a model file
        model = resnets.create_model(weights).eval()
        weights = str(resnets.save(model, work / "model.safetensors", preprocessing=resnets.Preprocessing(256, 224)))
    backend = auto_backend(torch.device(args.device), args.precision) if args.backend == "auto" else args.backend
    photos = _photos(work, args.images)
    if args.device == "cpu":  # the CPU peer: resnets predict over the same photos
        peer_name = "predict"
        print(f"predict over {len(photos)} photos, {backend} at {args.precision} on {args.device}...", flush=True)
        peer = _predict_rate(weights, photos, backend, args.device, args.precision, args.max_batch, repeats=3)
    else:  # on a GPU: the model alone at the same precision and batch size (resnets bench)
        peer_name = "bench"
        print(f"bench, batch {args.max_batch}, {backend} at {args.precision} on {args.device}...", flush=True)
        peer = _bench_rate(weights, backend, args.device, args.precision, args.max_batch)
    print(f"  {peer:.1f} img/s", flush=True)

    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "resnets",
        "serve",
        "--weights",
        weights,
        "--port",
        str(port),
        "--backend",
        backend,
        "--device",
        args.device,
        "--precision",
        args.precision,
        "--max-batch",
        str(args.max_batch),
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--max-pixels",
        "20000000",
        "--max-queue",
        "1024",
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "w"))
    import httpx

    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        server.kill()
        print((work / "server.log").read_text(), file=sys.stderr)
        return 1
    good = [p.read_bytes() for p in photos]
    runs = []
    try:
        for clients in [int(c) for c in args.clients.split(",")]:
            print(f"{clients} clients for {args.seconds:g} s...", flush=True)
            r = asyncio.run(_load(url, clients, args.seconds, good, _bad(work), lambda: _rss_mb(server.pid)))
            r["ratio_to_peer"] = r["images_per_s"] / peer
            fivexx = sum(v for k, v in r["status_codes"].items() if k.startswith("5"))
            bad_not_4xx = sum(v for c in r["bad_uploads"].values() for k, v in c.items() if not k.startswith("4"))
            r["5xx"], r["bad_not_4xx"] = fivexx, bad_not_4xx
            r["rss_growth"] = r["rss_mb_end"] / r["rss_mb_after_10s"] - 1 if r["rss_mb_after_10s"] else None
            runs.append(r)
            print(
                f"  {r['images_per_s']:.1f} img/s ({100 * r['ratio_to_peer']:.0f}% of {peer_name}), p50 {r['p50_ms']:.0f} ms, "
                f"p95 {r['p95_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, codes {r['status_codes']}, 5xx {fivexx}, "
                f"bad uploads not 4xx {bad_not_4xx}, RSS {r['rss_mb_after_10s']:.0f} -> {r['rss_mb_end']:.0f} MB",
                flush=True,
            )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    cpu = cpu_name()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "weights": args.weights,
        "backend": backend,
        "device": args.device,
        "precision": args.precision,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "photos": len(photos),
        "peer": peer_name,
        "peer_images_per_s": peer,
        "runs": runs,
        "server_exit": server.returncode,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
