"""`resnets.serve.app(model)` (serve/app.py): an ASGI app a Python program mounts in its own process."""

import time

import pytest
from conftest import SERVE_CLASSES

import resnets

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def test_the_python_app_mounts_in_process(serve_files):
    """resnets.serve.app(model) is an ASGI app: here through Starlette's test client."""
    from fastapi.testclient import TestClient

    from resnets.serve import Limits, app

    weights, photos, _ = serve_files
    with TestClient(app(resnets.load(weights), backend="eager", device="cpu")) as client:
        r = client.post("/v1/predict", files={"files": ("c.jpg", photos[1].read_bytes())})
        assert r.status_code == 200 and r.json()["results"][0]["top"][0]["class"] in SERVE_CLASSES
    # a batch waits for others at most half the time its first image has left: not max_wait_ms (3 s) past a 0.5 s
    # time limit
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
        assert r.status_code == 200, r.text
        # a request not answered in time because the model itself is slower than the limit: 504
        run = slow.state.service.batcher.run
        slow.state.service.batcher.run = lambda x: (time.sleep(1), run(x))[1]
        r = client.post("/v1/predict", files={"files": ("a.jpg", photos[0].read_bytes())})
        assert r.status_code == 504 and "not answered within 0.5 s" in r.json()["detail"]
