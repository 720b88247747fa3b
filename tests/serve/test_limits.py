"""What a request may be (serve/limits.py): every bad upload a 4xx with a one-line reason, the token, the queue
limit, slow headers."""

import asyncio
import os
import socket
import time

import pytest
from conftest import Server

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def test_bad_uploads_token_and_queue_limit(serve_files, tmp_path):
    """One server with every limit small and a token: each bad upload is 4xx with a one-line reason, the token is
    wanted everywhere but the health checks, and a full queue answers 503 with Retry-After."""
    weights, photos, _ = serve_files
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


class _Request:
    """What read_body and images_of read of a request: its headers and its body as it streams in."""

    def __init__(self, body: bytes, headers: dict[str, str], chunk: int = 1000):
        from starlette.datastructures import Headers

        self.headers = Headers(headers)
        self._body, self._chunk = body, chunk
        self.streamed = 0

    async def stream(self):
        for i in range(0, len(self._body), self._chunk):
            self.streamed += self._chunk
            yield self._body[i : i + self._chunk]


def test_a_body_is_read_no_further_than_its_limit():
    from resnets.serve import HTTPFailure
    from resnets.serve.limits import read_body

    assert asyncio.run(read_body(_Request(b"x" * 5000, {}), 5000)) == b"x" * 5000
    told = _Request(b"x" * 10_000, {"content-length": "10000"})
    with pytest.raises(HTTPFailure, match="10,000 bytes, over the limit of 5,000") as e:
        asyncio.run(read_body(told, 5000))
    assert e.value.status == 413 and told.streamed == 0  # refused by its Content-Length, nothing read
    untold = _Request(b"x" * 1_000_000, {})  # no length given: cut off as soon as it passes the limit
    with pytest.raises(HTTPFailure, match="over the limit of 5,000 bytes"):
        asyncio.run(read_body(untold, 5000))
    assert untold.streamed <= 6000


def test_images_of_a_form_a_raw_body_and_what_is_neither():
    from resnets.serve import HTTPFailure, Limits
    from resnets.serve.limits import images_of

    form = httpx.Request("POST", "http://x/", files=[("files", ("a.png", b"AAA")), ("files", ("b.jpg", b"BB"))])
    body = form.read()
    got = asyncio.run(images_of(_Request(body, dict(form.headers)), body, Limits()))
    assert got == [("a.png", b"AAA"), ("b.jpg", b"BB")]
    assert asyncio.run(images_of(_Request(b"RAW", {"content-type": "image/png"}), b"RAW", Limits())) == [
        ("body", b"RAW")
    ]
    cases = [
        (b"{}", {"content-type": "application/json"}, 415, "not application/json"),
        (b"", {"content-type": "image/png"}, 400, "no image in the request"),
    ]
    many = httpx.Request("POST", "http://x/", files=[("files", (f"{i}.png", b"A")) for i in range(3)])
    # starlette's own max_files, answered as the README says: 413, naming the option
    cases.append((many.read(), dict(many.headers), 413, "more than 2 images in one request \\(--max-files\\)"))
    broken = b"--xyz\r\nContent-Disposition: form-data\r\n\r\nA"
    cases.append((broken, {"content-type": "multipart/form-data; boundary=xyz"}, 400, "bad multipart form"))
    for body, headers, status, words in cases:
        with pytest.raises(HTTPFailure, match=words) as e:
            asyncio.run(images_of(_Request(body, headers), body, Limits(max_files=2)))
        assert e.value.status == status


def test_header_safe_escapes_control_and_non_ascii_text():
    from resnets.serve.limits import header_safe

    assert header_safe("cat") == "cat"
    assert header_safe("a\nb\x1b[2J") == "a\\nb\\x1b[2J"
    assert header_safe("caf\u00e9") == "caf\\xe9" and all(32 <= ord(c) < 127 for c in header_safe("\u2603\r"))
