"""`resnets serve`: a real uvicorn server in a subprocess, real HTTP requests (httpx), and the page in a real
browser (Debian's chromium driven by Playwright)."""

import asyncio
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import randomize_norms

import resnets
from resnets.inference import embed, predict

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

CLASSES = ["astronaut", "cat", "coffee", "rocket", "other"]
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`resnets serve` in a subprocess on a free port, waited for until /readyz says ready."""

    def __init__(self, weights, *args, env=None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "resnets",
            "serve",
            "--weights",
            str(weights),
            "--port",
            str(self.port),
            "--device",
            "cpu",
            *map(str, args),
        ]
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"resnets-serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not get ready: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small classifier with named classes, and real photos as JPEG and PNG."""
    from PIL import Image
    from skimage import data as sk

    d = tmp_path_factory.mktemp("serve")
    model = randomize_norms(resnets.create_model("resnet18", num_classes=len(CLASSES))).eval()
    weights = resnets.save(
        model, d / "model.safetensors", class_names=CLASSES, preprocessing=resnets.Preprocessing(72, 64)
    )
    photos = []
    for name in PHOTOS:
        Image.fromarray(getattr(sk, name)()).save(d / f"{name}.jpg", quality=92)
        photos.append(d / f"{name}.jpg")
    Image.fromarray(sk.coffee()).save(d / "coffee.png")
    photos.append(d / "coffee.png")
    return weights, photos, d


@pytest.fixture(scope="module")
def server(files):
    weights, _, _ = files
    s = Server(weights, "--max-batch", 8, "--max-wait-ms", 40, "--backend", "eager", "--workers-decode", 2)
    yield s
    assert s.stop() == 0, s.output()


def _post(url, path, name, **kw):
    return httpx.post(url, files={"files": (Path(path).name, Path(path).read_bytes())}, timeout=60, **kw)


def test_endpoints_answer_as_predict_and_embed_do(server, files):
    weights, photos, _ = files
    model = resnets.load(weights)
    ref = {r["path"]: r["top"] for r in predict(model, [str(p) for p in photos], workers=0)}
    form = [("files", (p.name, p.read_bytes())) for p in photos]
    r = httpx.post(server.url + "/v1/predict?top_k=3", files=form, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    assert [g["name"] for g in got] == [p.name for p in photos]
    for g, p in zip(got, photos):
        assert [t["class"] for t in g["top"]] == [t["class"] for t in ref[str(p)][:3]]
        assert [t["prob"] for t in g["top"]] == pytest.approx([t["prob"] for t in ref[str(p)][:3]], abs=1e-5)
    # raw bytes in the body
    r = httpx.post(server.url + "/v1/predict", content=photos[1].read_bytes(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200 and r.json()["results"][0]["top"][0]["class"] == ref[str(photos[1])][0]["class"]
    # embed: the pooled features
    feats, kept, _ = embed(model, [str(photos[0])], workers=0)
    r = _post(server.url + "/v1/embed", photos[0], "x")
    assert r.status_code == 200 and r.json()["dim"] == model.num_features
    assert torch.allclose(torch.tensor(r.json()["results"][0]["embedding"]), feats[0], atol=1e-4)
    # explain: a PNG of the crop with the heatmap, and the class in the headers
    r = _post(server.url + "/v1/explain", photos[1], "x")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(io.BytesIO(r.content)).size == (64, 64) and r.headers["x-class"] in CLASSES
    r = httpx.post(server.url + "/v1/explain?target=coffee", files={"files": ("c.jpg", photos[2].read_bytes())})
    assert r.status_code == 200 and r.headers["x-class"] == "coffee"
    # the model, health, readiness, metrics, the page, the OpenAPI description
    m = httpx.get(server.url + "/v1/model").json()
    assert m["architecture"] == "resnet18" and m["classes"] == CLASSES and m["preprocessing"]["crop"] == 64
    assert m["backend"] == "eager" and m["precision"] == "fp32" and m["device"] == "cpu"
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    assert 'resnets_requests_total{code="200",endpoint="predict"}' in metrics and "resnets_batch_size_bucket" in metrics
    page = httpx.get(server.url + "/").text
    assert "<title>resnets</title>" in page and not re.search(r"(src|href)=\"https?://", page)  # nothing fetched
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/predict", "/v1/embed", "/v1/explain", "/v1/model", "/healthz", "/readyz", "/metrics"} <= set(
        spec["paths"]
    )
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]


def test_concurrent_requests_are_batched_and_answer_as_one_by_one(server, files):
    weights, photos, _ = files
    model = resnets.load(weights)
    ref = {p.name: r["top"] for p, r in zip(photos, predict(model, [str(p) for p in photos], workers=0))}

    def batch_sizes() -> tuple[float, float]:
        text = httpx.get(server.url + "/metrics").text
        total = float(re.search(r"^resnets_batch_size_sum (\S+)", text, re.M)[1])
        count = float(re.search(r"^resnets_batch_size_count (\S+)", text, re.M)[1])
        return total, count

    before = batch_sizes()

    async def many():
        async with httpx.AsyncClient(timeout=60) as client:
            jobs = [
                client.post(server.url + "/v1/predict", files={"files": (p.name, p.read_bytes())})
                for _ in range(6)
                for p in photos
            ]
            return await asyncio.gather(*jobs)

    answers = asyncio.run(many())
    assert all(a.status_code == 200 for a in answers)
    for a in answers:
        res = a.json()["results"][0]
        assert [t["class"] for t in res["top"]] == [t["class"] for t in ref[res["name"]]]
        assert [t["prob"] for t in res["top"]] == pytest.approx([t["prob"] for t in ref[res["name"]]], abs=1e-5)
    after = batch_sizes()
    images, batches = after[0] - before[0], after[1] - before[1]
    assert images == len(answers) and batches < images  # grouped: fewer model batches than images

    async def mixed():  # Grad-CAM's backward pass beside batches running through the same weights
        async with httpx.AsyncClient(timeout=60) as client:
            jobs = [
                client.post(
                    server.url + ("/v1/explain" if i % 3 == 0 else "/v1/predict"),
                    files={"files": (p.name, p.read_bytes())},
                )
                for i, p in enumerate(photos * 3)
            ]
            return await asyncio.gather(*jobs)

    assert [a.status_code for a in asyncio.run(mixed())] == [200] * len(photos) * 3


def test_bad_uploads_token_and_queue_limit(files, tmp_path):
    """One server with every limit small and a token: each bad upload is 4xx with a one-line reason, the token is
    wanted everywhere but the health checks, and a full queue answers 503 with Retry-After."""
    weights, photos, _ = files
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (2000, 2000)).save(bomb)
    truncated = photos[0].read_bytes()[: len(photos[0].read_bytes()) // 2]
    s = Server(
        weights,
        "--max-upload-mb",
        1,
        "--max-pixels",
        1_000_000,
        "--max-queue",
        2,
        "--max-batch",
        1,
        "--max-wait-ms",
        0,
        "--backend",
        "eager",
        "--header-timeout-s",
        1,
        env={"RESNETS_SERVE_TOKEN": "s3cret"},
    )
    auth = {"Authorization": "Bearer s3cret"}
    try:
        form = {"files": (photos[1].name, photos[1].read_bytes())}
        assert httpx.post(s.url + "/v1/predict", files=form).status_code == 401
        assert (
            httpx.post(s.url + "/v1/predict", files=form, headers={"Authorization": "Bearer wrong"}).status_code == 401
        )
        assert httpx.get(s.url + "/v1/model").status_code == 401 and httpx.get(s.url + "/metrics").status_code == 401
        assert httpx.get(s.url + "/healthz").status_code == 200 and httpx.get(s.url + "/readyz").status_code == 200
        assert httpx.post(s.url + "/v1/predict", files=form, headers=auth).status_code == 200
        cases = [
            ({"files": ("notes.txt", b"just some words, not an image")}, 415, "notes.txt: not an image"),
            ({"files": ("half.jpg", truncated)}, 422, "truncated"),
            ({"files": ("bomb.png", bomb.read_bytes())}, 413, "over the limit"),
            ({"files": ("big.jpg", os.urandom(1_200_000))}, 413, "over the limit"),
        ]
        for form_, status, words in cases:
            r = httpx.post(s.url + "/v1/predict", files=form_, headers=auth, timeout=60)
            assert r.status_code == status and words in r.json()["detail"], (status, r.text)
            assert "\n" not in r.json()["detail"]
        r = httpx.post(s.url + "/v1/predict", content=b"{}", headers={"content-type": "application/json", **auth})
        assert r.status_code == 415
        r = httpx.post(s.url + "/v1/predict", files={"other": ("a.txt", b"")}, headers=auth)
        assert r.status_code == 400
        # the file name a client sends is only a label: nothing on the server is read by it
        r = httpx.post(s.url + "/v1/predict", files={"files": ("/etc/passwd", photos[1].read_bytes())}, headers=auth)
        assert r.status_code == 200 and r.json()["results"][0]["name"] == "/etc/passwd"

        async def flood():
            async with httpx.AsyncClient(timeout=60, headers=auth) as client:
                many = [("files", (p.name, p.read_bytes())) for p in photos] * 2  # 10 images, more than the queue
                return await asyncio.gather(*(client.post(s.url + "/v1/predict", files=[f]) for f in many))

        answers = asyncio.run(flood())
        codes = sorted(a.status_code for a in answers)
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
        full = next(a for a in answers if a.status_code == 503)
        assert full.headers["retry-after"] == "1" and "queue is full" in full.json()["detail"]
        metrics = httpx.get(s.url + "/metrics", headers=auth).text
        for kind in ("not_an_image", "corrupt_image", "too_many_pixels", "too_large", "queue_full", "unauthorized"):
            assert f'resnets_errors_total{{kind="{kind}"}}' in metrics, kind
        for code in ("200", "401", "413", "415", "422", "503"):  # every status is counted
            assert f'code="{code}",endpoint="predict"' in metrics, code

        # a client that sends its headers a byte at a time is cut off after --header-timeout-s, not held open
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as slow:
            start, closed = time.time(), False
            for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 200:
                try:
                    slow.sendall(bytes([b]))
                except OSError:
                    closed = True
                    break
                time.sleep(0.1)
                if time.time() - start > 8:
                    break
            if not closed:
                slow.settimeout(5)
                try:
                    closed = slow.recv(100) == b""
                except OSError:
                    closed = True
            assert closed and time.time() - start < 6, time.time() - start
        assert httpx.get(s.url + "/healthz").status_code == 200  # and the server goes on
    finally:
        assert s.stop() == 0
    log = s.output()
    assert "Traceback" not in log
    assert '"POST /v1/predict HTTP/1.1" 200' in log and '"POST /v1/predict HTTP/1.1" 401' in log  # the access log
    assert "s3cret" not in log


def test_sigterm_finishes_the_requests_in_flight(files):
    weights, photos, _ = files
    s = Server(weights, "--max-batch", 64, "--max-wait-ms", 1500, "--backend", "eager")

    async def in_flight():
        async with httpx.AsyncClient(timeout=60) as client:
            jobs = [
                asyncio.create_task(client.post(s.url + "/v1/predict", files={"files": (p.name, p.read_bytes())}))
                for p in photos
            ]
            await asyncio.sleep(0.7)  # the requests are in, waiting for their batch
            s.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*jobs)

    answers = asyncio.run(in_flight())
    assert [a.status_code for a in answers] == [200] * len(photos)
    assert s.proc.wait(30) == 0
    with pytest.raises(httpx.ConnectError):  # and nothing new is taken
        httpx.get(s.url + "/healthz", timeout=2)


def test_serve_refuses_bad_settings_in_one_line(files):
    from conftest import run_cli

    weights, _, _ = files
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_cli("serve", "--weights", weights, "--port", port)
        assert code == 2 and "cannot listen on 127.0.0.1" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli("serve", "--weights", weights, "--max-batch", 0)
    assert code == 2
    code, _, err = run_cli("serve", "--weights", weights, "--backend", "onnxruntime-int8", "--port", _free_port())
    assert code == 2 and "--calib DIR" in err and len(err.strip().splitlines()) == 1, err


def test_the_python_app_mounts_in_process(files):
    """resnets.serve.app(model) is an ASGI app: here through Starlette's test client."""
    from fastapi.testclient import TestClient

    from resnets.serve import Limits, app

    weights, photos, _ = files
    with TestClient(app(resnets.load(weights), backend="eager", device="cpu")) as client:
        r = client.post("/v1/predict", files={"files": ("c.jpg", photos[1].read_bytes())})
        assert r.status_code == 200 and r.json()["results"][0]["top"][0]["class"] in CLASSES
    # a request not answered in time: one image waits for a batch to fill longer than the timeout
    slow = app(
        resnets.load(weights),
        backend="eager",
        device="cpu",
        max_batch=64,
        max_wait_ms=3000,
        limits=Limits(timeout_s=0.5),
    )
    with TestClient(slow) as client:
        r = client.post("/v1/predict", files={"files": ("a.jpg", photos[0].read_bytes())})
        assert r.status_code == 504 and "not answered within 0.5 s" in r.json()["detail"]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    _chromium() is None, reason="no chromium here (make test installs Debian's chromium where apt is available)"
)
def test_the_page_in_a_real_browser(server, files):
    playwright = pytest.importorskip("playwright.sync_api")
    _, photos, _ = files
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            external = []
            page.on(
                "request",
                lambda req: (
                    external.append(req.url) if not req.url.startswith((server.url, "blob:", "data:")) else None
                ),
            )
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('resnet18')")
            page.set_input_files("#files", str(photos[1]))
            page.wait_for_selector(".card[data-state='done']", timeout=60_000)
            bars = page.locator(".card .bar.top .label").all_text_contents()
            assert len(bars) == 5 and set(bars) == set(CLASSES)
            size = page.evaluate(
                "() => { const i = document.querySelectorAll('.card img')[1]; return [i.naturalWidth, i.naturalHeight]; }"
            )
            assert size == [64, 64]  # the Grad-CAM overlay arrived and decoded
            assert "answered in" in page.locator(".card .caption").nth(2).text_content()
            # the API's documentation renders offline: Swagger UI from the package, the spec from the server
            page.goto(server.url + "/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=30_000)
            assert "/v1/predict" in page.locator(".opblock-summary-path").all_text_contents()
            assert external == []
        finally:
            browser.close()


GREY_CLASSES = ["dark", "\x1b[2Jclass\n", "light"]  # a class (folder) name with an escape code and a newline


@pytest.fixture(scope="module")
def grey_model(tmp_path_factory):
    """A 1-channel model (as Fashion-MNIST's), one class name with control characters."""
    model = randomize_norms(resnets.create_model("resnet20", num_classes=3, in_chans=1)).eval()
    pre = resnets.Preprocessing(36, 32, mean=(0.5,), std=(0.25,))
    return resnets.save(
        model, tmp_path_factory.mktemp("grey") / "grey.safetensors", class_names=GREY_CLASSES, preprocessing=pre
    )


async def _in_process(api, requests):
    """Each (method, path, kwargs) sent at once to `api` running in this process (its lifespan included)."""
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            return await asyncio.gather(*(client.request(m, u, **kw) for m, u, kw in requests))


def test_one_clients_bad_image_fails_only_its_own_request(grey_model):
    """Every format a client may send, at once, into one dynamic batch of a 1-channel model: each good image is
    answered (GIF and WebP come out grey like the rest), each bad one is its own 4xx, and a batch the model
    fails on is run again image by image, so only the image that broke it fails."""
    from conftest import broken_headers, every_format

    from resnets.serve import app

    good = every_format((64, 48))
    bad = {
        **{n: (b, 422) for n, b in broken_headers().items()},
        "notes.txt": (b"not an image", 415),
        "empty.png": (b"", 400),
    }
    api = app(resnets.load(grey_model), backend="eager", device="cpu", max_batch=64, max_wait_ms=200)
    reqs = [("POST", "/v1/predict", {"files": {"files": (n, b)}}) for n, b in good.items()]
    reqs += [("POST", "/v1/predict", {"files": {"files": (n, b)}}) for n, (b, _) in bad.items()]
    answers = asyncio.run(_in_process(api, reqs))
    for (name, _), r in zip([*good.items(), *bad.items()], answers):
        want = 200 if name in good else bad[name][1]
        assert r.status_code == want, (name, r.status_code, r.text)
        if want == 200:
            assert r.json()["results"][0]["top"][0]["class"] in GREY_CLASSES
        elif name != "empty.png":  # (that one is "no image in the request")
            assert r.json()["detail"].startswith(name + ":") and "object at 0x" not in r.json()["detail"], r.text

    # a model that fails on one image (a white one) of a batch of eight: seven answers and one 500, counted
    svc = api.state.service
    healthy = svc.runner
    white = 1.5  # a white pixel normalised is (1 - 0.5) / 0.25 = 2
    svc.runner = lambda x: (
        (_ for _ in ()).throw(RuntimeError("poisoned"))
        if bool((x.flatten(1).min(1).values > white).any())
        else healthy(x)
    )
    from PIL import Image

    def png(level):
        buf = io.BytesIO()
        Image.new("L", (40, 40), level).save(buf, "PNG")
        return buf.getvalue()

    images = [png(0)] * 7 + [png(255)]
    reqs = [("POST", "/v1/predict", {"files": {"files": (f"{i}.png", b)}}) for i, b in enumerate(images)]
    reqs.append(("GET", "/metrics", {}))
    *answers, _ = asyncio.run(_in_process(api, reqs))
    assert [a.status_code for a in answers] == [200] * 7 + [500]
    assert "internal error" in answers[-1].json()["detail"] and "\n" not in answers[-1].json()["detail"]
    assert max(svc.metrics.batch.collect()[0].samples, key=lambda s: s.value).value >= 1
    metrics = svc.metrics.render().decode()
    assert 'resnets_requests_total{code="500",endpoint="predict"} 1.0' in metrics
    assert (
        'resnets_requests_total{code="422",endpoint="predict"}' in metrics
        and 'resnets_errors_total{kind="internal"} 1.0' in metrics
    )


def test_explain_targets_and_class_names_are_safe(grey_model, tmp_path):
    """A target is a class name or ASCII digits in range: a Unicode digit, 5,000 digits or an unknown name is
    400; a class name with an escape code and a newline is escaped in the X-Class header."""
    from resnets.serve import app

    api = app(resnets.load(grey_model), backend="eager", device="cpu")
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (90, 90, 90)).save(buf, "GIF")
    form = {"files": {"files": ("g.gif", buf.getvalue())}}
    targets = ["\u00b2", "9" * 5000, "3", "-1", "nope", "1", GREY_CLASSES[1]]
    answers = asyncio.run(
        _in_process(api, [("POST", "/v1/explain", {**form, "params": {"target": t}}) for t in targets])
    )
    assert [a.status_code for a in answers] == [400] * 5 + [200, 200], [a.text[:200] for a in answers]
    assert all(len(a.json()["detail"]) < 300 for a in answers[:5])
    for a in answers[5:]:
        header = a.headers["x-class"]
        assert all(32 <= ord(c) < 127 for c in header) and header == "\\x1b[2Jclass\\n", header
        assert a.headers["content-type"] == "image/png"
    from conftest import run_cli

    (tmp_path / "g.gif").write_bytes(buf.getvalue())
    for target in ("\u00b2", "9" * 5000):  # the CLI's --class: one line, nothing written
        code, _, err = run_cli(
            "explain", tmp_path / "g.gif", "--weights", grey_model, "--out", tmp_path / "cam.png", "--class", target
        )
        assert code == 2 and len(err.strip().splitlines()) == 1 and len(err) < 400, err
        assert "unknown class" in err or "out of range" in err
    assert not (tmp_path / "cam.png").exists()
    # the class with an escape code and a newline, explained on the command line: no raw control character reaches
    # the terminal, from our output or from matplotlib's warnings about glyphs (the picture's title is escaped)
    code, out, err = run_cli(
        "explain", tmp_path / "g.gif", "--weights", grey_model, "--out", tmp_path / "cam.png", "--class", 1
    )
    assert code == 0 and (tmp_path / "cam.png").is_file(), err
    assert not any(c in out + err for c in "\x1b\x07") and "\\x1b[2Jclass\\n" in out, (out, err)


def test_docs_offline_token_empty_and_settings(files, monkeypatch):
    """/docs loads its script from this server (no CDN), and follows the token with /openapi.json;
    an empty token is refused (it would let an empty bearer in); ports and limits out of range are one line."""
    from conftest import run_cli

    from resnets.serve import app

    weights, _, _ = files
    api = app(resnets.load(weights), backend="eager", device="cpu")
    docs, js, spec = asyncio.run(
        _in_process(api, [("GET", p, {}) for p in ("/docs", "/docs/assets/swagger-ui-bundle.js", "/openapi.json")])
    )
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text and "https://" not in docs.text
    assert js.status_code == 200 and len(js.content) > 100_000 and spec.json()["paths"]["/v1/predict"]
    locked = app(resnets.load(weights), backend="eager", device="cpu", token="s3cret")
    answers = asyncio.run(_in_process(locked, [("GET", p, {}) for p in ("/docs", "/openapi.json", "/redoc")]))
    assert [a.status_code for a in answers] == [401, 401, 404]
    for bad in ("", " s3cret", "a b", "caf\u00e9"):
        with pytest.raises(resnets.ResnetsError, match="printable ASCII"):
            app(resnets.load(weights), token=bad)
    monkeypatch.setenv("RESNETS_SERVE_TOKEN", "")
    code, _, err = run_cli("serve", "--weights", weights, "--port", _free_port())
    assert code == 2 and "$RESNETS_SERVE_TOKEN must be" in err, err
    monkeypatch.delenv("RESNETS_SERVE_TOKEN")
    for flag, value in (
        ("--port", 70000),
        ("--port", 0),
        ("--max-upload-mb", "1e308"),
        ("--max-upload-mb", "nan"),
        ("--timeout-s", "inf"),
        ("--max-wait-ms", -1),
        ("--header-timeout-s", 0),
    ):
        code, _, err = run_cli("serve", "--weights", weights, flag, value)
        assert code == 2 and flag in err and len(err.strip().splitlines()) == 1, (flag, err)
