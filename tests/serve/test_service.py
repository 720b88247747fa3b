"""The model behind the app (serve/service.py): decoding every format for the model's channels, a failure kept
to the request that caused it, the metrics."""

import asyncio
import io

import pytest
from conftest import GREY_CLASSES, broken_headers, every_format, in_process

import resnets

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def test_one_clients_bad_image_fails_only_its_own_request(grey_model):
    """Every format a client may send, at once, into one dynamic batch of a 1-channel model: each good image is
    answered (GIF and WebP come out grey like the rest), each bad one is its own 4xx, and a batch the model
    fails on is run again image by image, so only the image that broke it fails."""

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
    answers = asyncio.run(in_process(api, reqs))
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
    *answers, _ = asyncio.run(in_process(api, reqs))
    assert [a.status_code for a in answers] == [200] * 7 + [500]
    assert "internal error" in answers[-1].json()["detail"] and "\n" not in answers[-1].json()["detail"]
    assert max(svc.metrics.batch.collect()[0].samples, key=lambda s: s.value).value >= 1
    metrics = svc.metrics.render().decode()
    assert 'resnets_requests_total{code="500",endpoint="predict"} 1.0' in metrics
    assert (
        'resnets_requests_total{code="422",endpoint="predict"}' in metrics
        and 'resnets_errors_total{kind="internal"} 1.0' in metrics
    )


def test_the_metrics_are_prometheus_text_with_every_request_counted(serve_files):
    """The Prometheus exposition parses (prometheus_client's own parser) and counts what was asked of it."""
    from prometheus_client.parser import text_string_to_metric_families

    from resnets.serve import app

    weights, photos, _ = serve_files
    api = app(resnets.load(weights), backend="eager", device="cpu", max_batch=8, max_wait_ms=50)
    form = {"files": {"files": (photos[0].name, photos[0].read_bytes())}}
    reqs = [("POST", "/v1/predict", form)] * 3 + [("POST", "/v1/predict", {"files": {"files": ("x.txt", b"no")}})]
    asyncio.run(in_process(api, reqs))
    families = {f.name: f for f in text_string_to_metric_families(api.state.service.metrics.render().decode())}
    requests = {
        (s.labels["endpoint"], s.labels["code"]): s.value
        for s in families["resnets_requests"].samples
        if "code" in s.labels
    }
    assert requests[("predict", "200")] == 3 and requests[("predict", "415")] == 1
    sizes = {s.name: s.value for s in families["resnets_batch_size"].samples if not s.labels.get("le")}
    assert sizes["resnets_batch_size_sum"] == 3 and 1 <= sizes["resnets_batch_size_count"] <= 3
