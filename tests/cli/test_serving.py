"""`resnets serve`, `push` and `cache` on the command line (cli/serving.py): bad settings refused in one line."""

import socket

import pytest
from conftest import free_port, run_cli

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def test_serve_refuses_bad_settings_in_one_line(serve_files):

    weights, _, _ = serve_files
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_cli("serve", "--weights", weights, "--port", port)
        assert code == 2 and "cannot listen on 127.0.0.1" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli("serve", "--weights", weights, "--max-batch", 0)
    assert code == 2
    code, _, err = run_cli("serve", "--weights", weights, "--backend", "onnxruntime-int8", "--port", free_port())
    assert code == 2 and "--calib DIR" in err and len(err.strip().splitlines()) == 1, err


def test_serve_refuses_an_empty_token_and_settings_out_of_range(serve_files, monkeypatch):
    """An empty $RESNETS_SERVE_TOKEN, ports and limits out of range: one line naming the flag, before listening."""
    weights, _, _ = serve_files
    monkeypatch.setenv("RESNETS_SERVE_TOKEN", "")
    code, _, err = run_cli("serve", "--weights", weights, "--port", free_port())
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
