"""The endpoints (serve/routes.py): each answers as the library does, the page works in a real browser, the
API's documentation is served offline, a target and a class name are safe."""

import asyncio
import io
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import GREY_CLASSES, SERVE_CLASSES, in_process, run_cli

import resnets
from resnets.inference import embed, predict

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def _post(url, path, name, **kw):
    return httpx.post(url, files={"files": (Path(path).name, Path(path).read_bytes())}, timeout=60, **kw)


def test_endpoints_answer_as_predict_and_embed_do(live_server, serve_files):
    weights, photos, _ = serve_files
    model = resnets.load(weights)
    ref = {r["path"]: r["top"] for r in predict(model, [str(p) for p in photos], workers=0)}
    form = [("files", (p.name, p.read_bytes())) for p in photos]
    r = httpx.post(live_server.url + "/v1/predict?top_k=3", files=form, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    assert [g["name"] for g in got] == [p.name for p in photos]
    for g, p in zip(got, photos):
        assert [t["class"] for t in g["top"]] == [t["class"] for t in ref[str(p)][:3]]
        assert [t["prob"] for t in g["top"]] == pytest.approx([t["prob"] for t in ref[str(p)][:3]], abs=1e-5)
    # raw bytes in the body
    r = httpx.post(
        live_server.url + "/v1/predict", content=photos[1].read_bytes(), headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 200 and r.json()["results"][0]["top"][0]["class"] == ref[str(photos[1])][0]["class"]
    # embed: the pooled features
    feats, kept, _ = embed(model, [str(photos[0])], workers=0)
    r = _post(live_server.url + "/v1/embed", photos[0], "x")
    assert r.status_code == 200 and r.json()["dim"] == model.num_features
    assert torch.allclose(torch.tensor(r.json()["results"][0]["embedding"]), feats[0], atol=1e-4)
    # explain: a PNG of the crop with the heatmap, and the class in the headers
    r = _post(live_server.url + "/v1/explain", photos[1], "x")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(io.BytesIO(r.content)).size == (64, 64) and r.headers["x-class"] in SERVE_CLASSES
    r = httpx.post(live_server.url + "/v1/explain?target=coffee", files={"files": ("c.jpg", photos[2].read_bytes())})
    assert r.status_code == 200 and r.headers["x-class"] == "coffee"
    # the model, health, readiness, metrics, the page, the OpenAPI description
    m = httpx.get(live_server.url + "/v1/model").json()
    assert m["architecture"] == "resnet18" and m["classes"] == SERVE_CLASSES and m["preprocessing"]["crop"] == 64
    assert m["backend"] == "eager" and m["precision"] == "fp32" and m["device"] == "cpu"
    assert httpx.get(live_server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(live_server.url + "/readyz").status_code == 200
    metrics = httpx.get(live_server.url + "/metrics").text
    assert 'resnets_requests_total{code="200",endpoint="predict"}' in metrics and "resnets_batch_size_bucket" in metrics
    page = httpx.get(live_server.url + "/").text
    assert "<title>resnets</title>" in page and not re.search(r"(src|href)=\"https?://", page)  # nothing fetched
    spec = httpx.get(live_server.url + "/openapi.json").json()
    assert {"/v1/predict", "/v1/embed", "/v1/explain", "/v1/model", "/healthz", "/readyz", "/metrics"} <= set(
        spec["paths"]
    )
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]


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
        in_process(api, [("POST", "/v1/explain", {**form, "params": {"target": t}}) for t in targets])
    )
    assert [a.status_code for a in answers] == [400] * 5 + [200, 200], [a.text[:200] for a in answers]
    assert all(len(a.json()["detail"]) < 300 for a in answers[:5])
    for a in answers[5:]:
        header = a.headers["x-class"]
        assert all(32 <= ord(c) < 127 for c in header) and header == "\\x1b[2Jclass\\n", header
        assert a.headers["content-type"] == "image/png"

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


def test_docs_offline_and_the_token(serve_files):
    """/docs loads its script from this server (no CDN), and follows the token with /openapi.json; an empty or
    non-ASCII token is refused (an empty one would let an empty bearer in)."""

    from resnets.serve import app

    weights, _, _ = serve_files
    api = app(resnets.load(weights), backend="eager", device="cpu")
    docs, js, spec = asyncio.run(
        in_process(api, [("GET", p, {}) for p in ("/docs", "/docs/assets/swagger-ui-bundle.js", "/openapi.json")])
    )
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text and "https://" not in docs.text
    assert js.status_code == 200 and len(js.content) > 100_000 and spec.json()["paths"]["/v1/predict"]
    locked = app(resnets.load(weights), backend="eager", device="cpu", token="s3cret")
    answers = asyncio.run(in_process(locked, [("GET", p, {}) for p in ("/docs", "/openapi.json", "/redoc")]))
    assert [a.status_code for a in answers] == [401, 401, 404]
    for bad in ("", " s3cret", "a b", "caf\u00e9"):
        with pytest.raises(resnets.ResnetsError, match="printable ASCII"):
            app(resnets.load(weights), token=bad)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    _chromium() is None, reason="no chromium here (make test installs Debian's chromium where apt is available)"
)
def test_the_page_in_a_real_browser(live_server, serve_files):
    playwright = pytest.importorskip("playwright.sync_api")
    _, photos, _ = serve_files
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            external = []
            page.on(
                "request",
                lambda req: (
                    external.append(req.url) if not req.url.startswith((live_server.url, "blob:", "data:")) else None
                ),
            )
            page.goto(live_server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('resnet18')")
            assert not page.locator("#score-row").is_visible()  # a classifier's page has no box score
            page.set_input_files("#files", str(photos[1]))
            page.wait_for_selector(".card[data-state='done']", timeout=60_000)
            bars = page.locator(".card .bar.top .label").all_text_contents()
            assert len(bars) == 5 and set(bars) == set(SERVE_CLASSES)
            size = page.evaluate(
                "() => { const i = document.querySelectorAll('.card img')[1]; return [i.naturalWidth, i.naturalHeight]; }"
            )
            assert size == [64, 64]  # the Grad-CAM overlay arrived and decoded
            assert "answered in" in page.locator(".card .caption").nth(2).text_content()
            # the API's documentation renders offline: Swagger UI from the package, the spec from the server
            page.goto(live_server.url + "/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=30_000)
            assert "/v1/predict" in page.locator(".opblock-summary-path").all_text_contents()
            assert external == []
        finally:
            browser.close()


def test_a_detector_is_served_at_v1_detect(tiny_detector, shapes_set):
    """/v1/detect answers as `detect` does (boxes, classes, scores), draws one image as a PNG, and the classifier's
    endpoints send a client to it (and a classifier's server sends /v1/detect to /v1/predict)."""
    from PIL import Image

    from resnets.detect import detect
    from resnets.serve import app

    model = resnets.load(tiny_detector)
    files = sorted((shapes_set / "val" / "images").iterdir())[:3]
    want = detect(model, [str(f) for f in files], score=0.0)
    api = app(model, max_batch=4, max_wait_ms=50, device="cpu")
    form = [("files", (f.name, f.read_bytes())) for f in files]
    one = {"files": (files[0].name, files[0].read_bytes())}
    detected, drawn, two_drawn, predicted, described = asyncio.run(
        in_process(
            api,
            [
                ("POST", "/v1/detect?score=0", {"files": form}),
                ("POST", "/v1/detect?score=0&draw=1", {"files": one}),
                ("POST", "/v1/detect?draw=1", {"files": form[:2]}),
                ("POST", "/v1/predict", {"files": one}),
                ("GET", "/v1/model", {}),
            ],
        )
    )
    assert detected.status_code == 200, detected.text
    got = detected.json()["results"]
    assert [g["name"] for g in got] == [f.name for f in files]
    for g, w in zip(got, want):
        assert (g["width"], g["height"]) == (64, 64)
        assert [b["class"] for b in g["boxes"]] == [b["class"] for b in w["boxes"]]
        for a, b in zip(g["boxes"], w["boxes"]):
            assert a["box"] == pytest.approx(b["box"], abs=1e-2) and a["score"] == pytest.approx(b["score"], abs=1e-4)
    assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(drawn.content)).size == (64, 64) and drawn.headers["x-boxes"] == str(
        len(want[0]["boxes"])
    )
    assert two_drawn.status_code == 400 and "draw=1 takes one image" in two_drawn.json()["detail"]
    assert predicted.status_code == 400 and "POST /v1/detect" in predicted.json()["detail"]
    m = described.json()
    assert m["task"] == "detection" and m["classes"] == ["__background__", "circle", "square", "triangle"]
    assert m["input"] == {"min_size": [64], "max_size": 64}


def test_a_detectors_bad_image_fails_only_its_own_request(tiny_detector, shapes_set, serve_files):
    from resnets.serve import app

    good = sorted((shapes_set / "val" / "images").iterdir())[0]
    api = app(resnets.load(tiny_detector), max_batch=8, max_wait_ms=100, device="cpu")
    answers = asyncio.run(
        in_process(
            api,
            [
                ("POST", "/v1/detect", {"files": {"files": ("a.jpg", good.read_bytes())}}),
                ("POST", "/v1/detect", {"files": {"files": ("bad.gif", b"GIF89a" + b"\x00" * 10)}}),
                ("POST", "/v1/detect", {"files": {"files": ("b.jpg", good.read_bytes())}}),
            ],
        )
    )
    assert [a.status_code for a in answers][::2] == [200, 200] and answers[1].status_code in (415, 422)
    assert "bad.gif" in answers[1].json()["detail"]
    classifier = app(serve_files[0], device="cpu")
    (r,) = asyncio.run(
        in_process(classifier, [("POST", "/v1/detect", {"files": {"files": ("a.jpg", good.read_bytes())}})])
    )
    assert r.status_code == 400 and "POST /v1/predict" in r.json()["detail"]


def test_a_detector_is_served_by_pytorch_only(tiny_detector):
    from resnets.errors import ResnetsError
    from resnets.serve import app

    with pytest.raises(ResnetsError, match="a detector is served by the eager backend"):
        app(resnets.load(tiny_detector), backend="onnxruntime", device="cpu")


def test_a_segmenter_is_served_at_v1_segment(tiny_segmenter, shapes_set):
    """/v1/segment: the coloured mask or the overlay as a PNG, or JSON maps equal to `segment`'s."""
    from PIL import Image

    from resnets.segment import coloured, segment
    from resnets.serve import app

    model = resnets.load(tiny_segmenter)
    files = sorted((shapes_set / "val" / "images").iterdir())[:2]
    want = segment(model, [str(f) for f in files])
    api = app(model, max_batch=4, device="cpu")
    one = {"files": (files[0].name, files[0].read_bytes())}
    form = [("files", (f.name, f.read_bytes())) for f in files]
    mask, over, as_json, two_png, detected, described = asyncio.run(
        in_process(
            api,
            [
                ("POST", "/v1/segment", {"files": one}),
                ("POST", "/v1/segment?overlay=1", {"files": one}),
                ("POST", "/v1/segment?format=json", {"files": form}),
                ("POST", "/v1/segment", {"files": form}),
                ("POST", "/v1/detect", {"files": one}),
                ("GET", "/v1/model", {}),
            ],
        )
    )
    assert mask.status_code == 200 and mask.headers["content-type"] == "image/png"
    got = torch.from_numpy(__import__("numpy").array(Image.open(io.BytesIO(mask.content)))).permute(2, 0, 1)
    assert torch.equal(got, coloured(want[0]["mask"], 4))
    assert over.status_code == 200 and Image.open(io.BytesIO(over.content)).size == (64, 64)
    rows = as_json.json()["results"]
    assert [torch.equal(torch.tensor(r["mask"]), w["mask"]) for r, w in zip(rows, want)] == [True, True]
    assert rows[0]["classes"] == want[0]["classes"]
    assert two_png.status_code == 400 and "format=json" in two_png.json()["detail"]
    assert detected.status_code == 400 and "POST /v1/segment" in detected.json()["detail"]
    assert described.json()["task"] == "segmentation" and described.json()["classes"][0] == "background"


def test_the_pages_detection_score_control_in_a_real_browser(tiny_detector, shapes_set):
    """A detector's page has a score control (it was fixed at 0.5 while the API takes ?score=): set to 0 it lists
    the boxes /v1/detect gives at score 0, and says the score it used."""
    playwright = pytest.importorskip("playwright.sync_api")
    import httpx
    from conftest import Server

    image = sorted((shapes_set / "val" / "images").glob("*.jpg"))[0]
    s = Server(tiny_detector, "--max-batch", 2, "--max-wait-ms", 10)
    try:
        want = httpx.post(s.url + "/v1/detect?score=0", files={"files": (image.name, image.read_bytes())}, timeout=60)
        boxes = len(want.json()["results"][0]["boxes"])
        assert boxes > 0  # at score 0 the tiny detector finds some: the page must list them, not its 0.5's
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(s.url + "/")
                page.wait_for_function("document.getElementById('model').textContent.includes('fasterrcnn')")
                assert page.locator("#score-row").is_visible()
                page.fill("#score", "0")
                page.set_input_files("#files", str(image))
                page.wait_for_selector(".card[data-state='done']", timeout=60_000)
                assert page.locator(".card .bar.top").count() == boxes
                assert "score 0 or more" in page.locator(".card .caption").first.text_content()
            finally:
                browser.close()
    finally:
        assert s.stop() == 0, s.output()
