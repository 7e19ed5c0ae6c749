"""Run the application with uvicorn on a socket bound first, so that port 0 (any free port) can be reported.

uvicorn handles SIGTERM and SIGINT: it stops accepting connections, lets the requests in flight finish (up to the
graceful timeout), then runs the application's shutdown, which stops the micro-batcher.

uvicorn bounds a request only once its headers are in (the app's ``--timeout`` covers the body and the work), so a
client that sends part of a header and stops (slowloris) would hold its connection forever. ``guarded_protocol``
adds the two bounds it lacks: each request's headers must arrive within ``--header-timeout`` (then a 408 and the
connection is closed), and at most ``--max-idle-connections`` connections may wait for headers at once. Beyond
that, the one waiting longest is closed, taken first among those that began a request and stalled, then among
those that never sent a byte, and last among keep-alive connections answered before: a new client's connection,
accepted in the same burst as many hostile ones, is not closed before its request is read.
"""

from __future__ import annotations

import json
import socket
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    import asyncio

    import uvicorn

    from loqi_plugin_serve.app import Limits


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: the system picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _timeout_response(seconds: float) -> bytes:
    body = json.dumps({"error": f"the request headers did not arrive within {seconds:g} s", "code": "header_timeout",
                       "status": 408}).encode()  # fmt: skip
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip


def guarded_protocol(header_timeout_s: float, max_idle: int, on_drop: Callable[[str], None]) -> type:
    """uvicorn's h11 protocol with a deadline for every request's headers and a cap on the connections waiting for
    them; ``on_drop(reason)`` hears of each connection closed for either ("header_timeout", "too_many_idle")."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    waiting: dict[Any, None] = {}  # connections waiting for a request's headers, the longest waiting first
    late = _timeout_response(header_timeout_s)

    class HeaderGuard(H11Protocol):
        deadline: "asyncio.TimerHandle | None" = None
        started = False  # bytes of the awaited request arrived
        answered = 0  # requests this connection completed

        def connection_made(self, transport: "asyncio.Transport") -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self.started = self.started or self in waiting
            super().data_received(data)

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request's headers are in: the app's --timeout takes over
                self._stop_waiting()

        def on_response_complete(self) -> None:
            self.answered += 1
            if not self.transport.is_closing():  # keep-alive: wait for the next request's headers
                self._await_headers()
            super().on_response_complete()  # runs a pipelined request at once, which stops the wait again

        def _await_headers(self) -> None:
            self._stop_waiting()
            self.started = False
            self.deadline = self.loop.call_later(header_timeout_s, self._drop, "header_timeout")
            waiting[self] = None
            while len(waiting) > max_idle:  # first a stalled request, then a silent connection, then the rest
                first = (next((c for c in waiting if c.started and not c.answered), None)
                         or next((c for c in waiting if not c.answered), None) or next(iter(waiting)))  # fmt: skip
                first._drop("too_many_idle")

        def _stop_waiting(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None
            waiting.pop(self, None)

        def _drop(self, reason: str) -> None:
            self._stop_waiting()
            if not self.transport.is_closing():
                if reason == "header_timeout" and self.started:
                    self.transport.write(late)
                self.transport.close()
                on_drop(reason)

    return HeaderGuard


def make_server(app: Any, limits: "Limits", graceful_s: float = 30.0) -> "uvicorn.Server":
    """A uvicorn server for ``app`` (quiet: warnings only; the app writes its own access log) that holds slow
    clients to ``limits`` and turns the app's readiness off as soon as a signal asks it to stop;
    ``.run(sockets=[sock])`` serves."""
    import uvicorn

    protocol = guarded_protocol(limits.header_timeout_s, limits.max_idle_connections, app.state.metrics.dropped)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", http=protocol,
                            timeout_graceful_shutdown=int(graceful_s), backlog=2048)  # fmt: skip

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.serving.update(ready=False, why="stopping")
            super().handle_exit(sig, frame)

    return Server(config)
