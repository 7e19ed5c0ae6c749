"""Who may ask, and a record of every request: opt-in API keys (bearer tokens), request ids and the access log.

Both are plain ASGI middleware around the application:

- ``RequestLog`` gives every request an id (the client's ``X-Request-ID`` when it is a short plain token, else a new
  one), returns it as ``X-Request-ID``, counts the request in the metrics by route (unknown paths together) and
  status, and writes one access-log line: client, method, path (never the query string or a header, so never a
  key), status, milliseconds, id.
- ``BearerAuth`` answers 401 to a request for a protected path without ``Authorization: Bearer KEY`` for one of the
  keys. Keys are compared as SHA-256 digests with ``hmac.compare_digest``, every key every time: the time taken
  says nothing about how much of a key was right. Only the digests are kept in memory. The matching key's digest is
  left in the request's ``state`` as ``api_key``: a sequence session belongs to the key that created it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import stat
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from loqi_core.plugin import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from loqi_plugin_serve.metrics import Metrics

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("loqi.serve.access")

KEY = re.compile(r"^[A-Za-z0-9\-._~+/]{16,}=*$")
"""An API key: at least 16 characters of RFC 6750's token alphabet."""
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
PUBLIC = ("/", "/docs", "/openapi.json", "/healthz", "/readyz")
"""Paths anyone may read with keys on: the page and the API description (no data), liveness and readiness (for
load balancers and orchestrators). Everything else, ``/v1/*`` and ``/metrics``, needs a key."""


def read_api_keys(path: Path) -> tuple[bytes, ...]:
    """The SHA-256 digests of the keys in ``path``: one per line, blank lines and ``#`` comments ignored. A file
    that cannot be read, holds no key or a line that is not one is refused, by line number (never by content)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--api-key-file {path}: cannot be read ({type(exc).__name__})") from None
    digests = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if not KEY.match(text):
            raise ConfigError(f"--api-key-file {path}, line {number}: not an API key (at least 16 characters of "
                              "A-Z a-z 0-9 - . _ ~ + /, then = padding; one key per line)")  # fmt: skip
        digests.append(hashlib.sha256(text.encode()).digest())
    if not digests:
        raise ConfigError(f"--api-key-file {path}: holds no key (one per line; # starts a comment)")
    return tuple(digests)


def readable_by_others(path: Path) -> bool:
    """True when users other than the owner may read ``path`` (then the CLI warns: chmod 600)."""
    return bool(os.stat(path).st_mode & (stat.S_IRGRP | stat.S_IROTH))


def route_of(scope: Scope) -> str:
    """The route a request matched (``/v1/thumbnail/{i}``), ``(unmatched)`` for an unknown path."""
    route = scope.get("route")
    return getattr(route, "path_format", None) or "(unmatched)"


async def _json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


class RequestLog:
    """Request ids, the access log and the request metrics of every HTTP request (see the module's docstring)."""

    def __init__(self, app: App, metrics: "Metrics", enabled: bool = True) -> None:
        self.app, self.metrics, self.enabled = app, metrics, enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = [500]

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            self.metrics.request(route_of(scope), status[0], seconds)
            if self.enabled:
                client = scope.get("client") or ("-", 0)
                access_log.info('%s "%s %s" %d %.1fms id=%s', client[0], scope["method"], scope["path"], status[0],
                                seconds * 1000, request_id)


class BearerAuth:
    """401 for a protected path without a valid ``Authorization: Bearer KEY`` (see the module's docstring)."""

    def __init__(self, app: App, digests: tuple[bytes, ...], metrics: "Metrics") -> None:
        self.app, self.digests, self.metrics = app, digests, metrics

    def key_of(self, header: bytes) -> bytes | None:
        """The digest of the key ``header`` carries as a bearer token; None when it is not one of the keys."""
        scheme, _, token = header.decode("latin-1").partition(" ")
        given = hashlib.sha256(token.strip().encode("latin-1")).digest()
        match = None
        for digest in self.digests:  # no early exit
            if hmac.compare_digest(given, digest):
                match = digest
        return match if scheme.lower() == "bearer" else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization")
        key = self.key_of(header) if header is not None else None
        if key is not None:
            scope.setdefault("state", {})["api_key"] = key
            await self.app(scope, receive, send)
            return
        reason = "no Authorization header" if header is None else "the key is not valid"
        self.metrics.error("(auth)", "unauthorized")
        await _json(send, 401, {"error": f"{reason}: send Authorization: Bearer KEY (loqi serve --api-key-file)",
                                "code": "unauthorized", "status": 401},
                    [(b"www-authenticate", b'Bearer realm="loqi"')])  # fmt: skip
