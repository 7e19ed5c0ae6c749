"""Run the application with uvicorn on a socket bound first, so that port 0 (any free port) can be reported.

uvicorn handles SIGTERM and SIGINT: it stops accepting connections, lets the requests in flight finish (up to the
graceful timeout), then runs the application's shutdown, which stops the micro-batcher.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import uvicorn


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


def make_server(app: Any, graceful_s: float = 30.0) -> "uvicorn.Server":
    """A uvicorn server for ``app`` (quiet: warnings only, no access log); ``.run(sockets=[sock])`` serves."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(graceful_s), backlog=2048)  # fmt: skip
    return uvicorn.Server(config)
