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


def test_cache_lists_and_clears_each_cache(tmp_path, monkeypatch):
    """`resnets cache` lists the weights, the ONNX exports and `similar`'s search indexes ($RESNETS_HOME/faiss);
    `--clear faiss` removes only the indexes, `--clear all` everything."""
    monkeypatch.setenv("RESNETS_HOME", str(tmp_path / "home"))
    faiss = tmp_path / "home" / "faiss"
    faiss.mkdir(parents=True)
    (faiss / "k.faiss").write_bytes(b"x" * 2000)
    (faiss / "k.sha256").write_text("0\n")
    code, out, _ = run_cli("cache")
    assert code == 0 and f"faiss: {faiss} (2 files" in out and "k.faiss" in out
    code, out, _ = run_cli("cache", "--clear", "faiss")
    assert code == 0 and "removed 2 search index files" in out and not list(faiss.iterdir())
    code, out, _ = run_cli("cache", "--clear", "all")
    assert code == 0 and "removed 0 ONNX exports" in out
