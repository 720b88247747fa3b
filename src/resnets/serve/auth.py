"""The bearer token: one dependency (FastAPI's Depends) on every router that wants it, which is everything but the
health checks and the page; compared in constant time."""

from __future__ import annotations

import hmac
import os

from fastapi import Request

from ..errors import ResnetsError
from .limits import HTTPFailure

TOKEN_ENV = "RESNETS_SERVE_TOKEN"


class BearerToken:
    """A FastAPI dependency: 401 unless the request carries `Authorization: Bearer <token>` (when a token is set).
    `token`: the one given, else $RESNETS_SERVE_TOKEN, else none (every request passes)."""

    def __init__(self, token: str | None = None):
        where = "the token" if token is not None else f"${TOKEN_ENV}"
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        if token is not None and (not token or not all(33 <= ord(c) < 127 for c in token)):
            raise ResnetsError(
                f"{where} must be printable ASCII without spaces, and not empty (an empty token would let "
                "an empty bearer in)"
            )
        self.token = token

    def __call__(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            raise HTTPFailure(
                401,
                "a bearer token is required (Authorization: Bearer <token>)",
                {"WWW-Authenticate": "Bearer"},
                "unauthorized",
            )
