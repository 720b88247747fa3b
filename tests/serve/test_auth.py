"""The bearer token (serve/auth.py): one dependency on every router but the open one, checked before the body is
read; the token's own checks."""

import asyncio

import pytest
from conftest import in_process

import resnets

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")


def test_the_token_is_wanted_by_every_route_but_health_and_the_page(serve_files):
    """Every route the app has, asked without the token: 401 (one JSON line, WWW-Authenticate), except /healthz,
    /readyz and the page; a route added to a router later is behind the token without a line of its own."""
    from resnets.serve import app

    api = app(resnets.load(serve_files[0]), backend="eager", device="cpu", token="s3cret")
    documented = [(m.upper(), p) for p, ops in api.openapi()["paths"].items() for m in ops]
    routes = documented + [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/")]  # (not in the API's schema)
    assert len(routes) == 18 and sum(p.startswith("/v2") for _, p in routes) == 6, routes  # (the OIP's too)
    answers = asyncio.run(in_process(api, [(m, p, {}) for m, p in routes]))
    opened = {p for (_, p), a in zip(routes, answers) if a.status_code != 401}
    assert opened == {"/healthz", "/readyz", "/", "/v2/health/live", "/v2/health/ready"}, opened
    for (_, path), a in zip(routes, answers):
        if path not in opened:  # (the Open Inference Protocol says its errors as {"error"})
            key = "error" if path.startswith("/v2") else "detail"
            assert a.json() == {key: "a bearer token is required (Authorization: Bearer <token>)"}
            assert a.headers["www-authenticate"] == "Bearer"
    good = {"headers": {"Authorization": "Bearer s3cret"}}
    model, metrics = asyncio.run(in_process(api, [("GET", "/v1/model", good), ("GET", "/metrics", good)]))
    assert model.status_code == 200 and metrics.status_code == 200
    assert 'resnets_errors_total{kind="unauthorized"}' in metrics.text


def test_a_bearer_token_is_compared_and_checked():
    from starlette.requests import Request

    from resnets.serve import HTTPFailure
    from resnets.serve.auth import BearerToken

    def request(authorization: str | None) -> Request:
        headers = [] if authorization is None else [(b"authorization", authorization.encode())]
        return Request({"type": "http", "headers": headers})

    BearerToken(None)(request(None))  # no token: everyone passes
    auth = BearerToken("s3cret")
    auth(request("Bearer s3cret"))
    auth(request("bearer s3cret "))
    for bad in (None, "Bearer wrong", "Basic s3cret", "s3cret", "Bearer"):
        with pytest.raises(HTTPFailure) as e:
            auth(request(bad))
        assert e.value.status == 401 and e.value.kind == "unauthorized"
    for bad in ("", " s3cret", "a b", "caf\u00e9"):
        with pytest.raises(resnets.ResnetsError, match="the token must be printable ASCII"):
            BearerToken(bad)


def test_the_token_comes_from_the_environment(monkeypatch):
    from resnets.serve.auth import TOKEN_ENV, BearerToken

    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert BearerToken().token == "from-env" and BearerToken("given").token == "given"
    monkeypatch.setenv(TOKEN_ENV, "")
    with pytest.raises(resnets.ResnetsError, match=r"\$RESNETS_SERVE_TOKEN must be"):
        BearerToken()
