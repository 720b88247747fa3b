"""Running under uvicorn (serve/server.py): a graceful stop on SIGTERM."""

import asyncio
import signal

import pytest
from conftest import Server

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def test_sigterm_finishes_the_requests_in_flight(serve_files):
    weights, photos, _ = serve_files
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


def test_check_listen_names_the_address_in_one_line():
    import socket

    from resnets import ResnetsError
    from resnets.serve import check_listen

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ResnetsError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            check_listen("127.0.0.1", port)
    check_listen("127.0.0.1", port)  # free again
    with pytest.raises(ResnetsError, match="cannot listen on no-such-host.invalid:8000"):
        check_listen("no-such-host.invalid", 8000)
