"""Running the app with uvicorn: the address checked first, a deadline on slow request headers, a graceful stop on
SIGTERM."""

from __future__ import annotations

import asyncio
import threading

from ..errors import ResnetsError


def _slow_header_guard(seconds: float):
    """uvicorn's h11 protocol with a deadline on each request's headers: a connection that has not sent a whole
    request line and headers `seconds` after it opened (or after its previous answer, once it sends again) is
    closed. uvicorn bounds an idle keep-alive connection but not one that sends a byte now and then."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:  # a request's headers are complete
                self._disarm()
            elif self.cycle is None or self.cycle.response_complete:  # the next request's headers are coming
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_deadline is None:
                self._header_deadline = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _too_slow(self) -> None:
            self._header_deadline = None
            if not self.transport.is_closing():
                self.logger.info("%s: closed, its request headers took over %g s", self.client, seconds)
                self.transport.close()

    return Protocol


def run(
    api,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    graceful_s: float = 30.0,
    header_timeout_s: float = 10.0,
) -> None:
    """Serve `api` with uvicorn until SIGINT/SIGTERM: then no new connections, and the requests in flight are
    answered (for up to `graceful_s`) before this returns. A stop asked for is a clean exit: uvicorn would
    raise the signal again after its graceful shutdown, so the process would end as killed by it. Each request
    is logged (uvicorn's access log, at log_level info: the client, request line and status; never a header,
    so never the token); a connection whose headers take over `header_timeout_s` is closed."""
    import contextlib
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    check_listen(host, port)
    config = uvicorn.Config(
        api,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=graceful_s,
        access_log=True,
        http=_slow_header_guard(header_timeout_s),
    )
    Server(config).run()


def check_listen(host: str, port: int) -> None:
    """One line (not uvicorn's traceback) when the address cannot be listened on."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ResnetsError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise ResnetsError(f"cannot listen on {host}:{port}: {e.strerror}") from None
