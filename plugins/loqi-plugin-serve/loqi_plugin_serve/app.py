"""The ASGI application (Starlette): locate an image or a video segment, a page, health and metrics.

    POST /v1/locate?k=5          raw JPEG/PNG/WebP/BMP/TIFF bytes → {"results": [...], "timing_ms": {...}}
    POST /v1/locate/stream?k=5   an H.264/HEVC segment   → {"frames": [{"frame": i, "results": [...]}], ...}
    GET  /                       upload or drop an image, see the top-k database thumbnails
    GET  /v1/info                the index and model being served
    GET  /v1/thumbnail/{i}       database image i as a small JPEG
    GET  /healthz, GET /metrics  liveness, Prometheus text

Bad input is a 4xx JSON ``{"error": reason, "code": short_code, "status": N}``; only a fault of the server is a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from importlib import resources
from typing import TYPE_CHECKING

from loqi_plugin_serve.batcher import MicroBatcher
from loqi_plugin_serve.decode import (
    IMAGE_TYPES,
    VIDEO_TYPES,
    BadInput,
    Bounds,
    check_content_type,
    decode_image,
    decode_video,
)
from loqi_plugin_serve.metrics import Metrics

if TYPE_CHECKING:  # pragma: no cover
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from loqi_plugin_serve.engine import Engine

log = logging.getLogger("loqi.serve")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, how long a client may take to send it, and how requests are batched."""

    max_body_bytes: int = 32 * 2**20
    max_pixels: int = 25_000_000
    max_aspect: float = 20.0
    max_model_pixels: int = 16_777_216
    max_frames: int = 120
    max_segment_pixels: int = 100_000_000
    max_k: int = 100
    timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    max_idle_connections: int = 100
    max_batch: int = 32
    max_wait_ms: float = 5.0


def _error(exc: BadInput) -> "Response":
    from starlette.responses import JSONResponse

    headers = {"Retry-After": "1"} if exc.status == 503 else None
    return JSONResponse({"error": exc.message, "code": exc.code, "status": exc.status}, exc.status, headers=headers)


def _k(request: "Request", limits: Limits) -> int:
    raw = request.query_params.get("k", "5")
    try:
        k = int(raw)
    except ValueError:
        raise BadInput(400, "bad_k", f'query parameter k must be a whole number, got "{raw}"') from None
    if not 1 <= k <= limits.max_k:
        raise BadInput(400, "bad_k", f"query parameter k must be between 1 and {limits.max_k}, got {k}")
    return k


async def _body(request: "Request", limits: Limits) -> bytes:
    """The request body, refused as soon as it is known to exceed the limit."""
    declared = request.headers.get("content-length")
    too_large = BadInput(413, "body_too_large", f"the body is larger than the limit of {limits.max_body_bytes} bytes")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(engine: "Engine", limits: Limits = Limits()) -> "Starlette":
    """The application serving ``engine``; the batcher starts and stops with it (uvicorn's lifespan)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    metrics = Metrics()
    bounds = Bounds(limits.max_pixels, limits.max_aspect, limits.max_model_pixels, engine.model.preprocess)
    batcher = MicroBatcher(engine.locate, limits.max_batch, limits.max_wait_ms, on_batch=metrics.batch)
    page = resources.files("loqi_plugin_serve").joinpath("page.html").read_text()
    meta = engine.index.meta
    info = {
        "index": str(engine.index.path), "database_images": engine.index.size, "dim": meta["dim"],
        "dataset": meta["dataset"], "degradation": meta["degradation"], "model": meta["model"]["info"],
        "fingerprint": meta["model"]["fingerprint"], "search": meta["search"], "device": str(engine.device),
        "thumbnails": meta["thumbnails"], "limits": asdict(limits),
    }  # fmt: skip

    async def handle(request: Request, endpoint: str, work) -> Response:
        """Time, count and guard one request: limits and bad input become 4xx JSON, nothing escapes as a crash."""
        start = time.perf_counter()
        metrics.started()
        status, code = 500, "internal"
        progress = {"body_read": False}
        try:
            response = await asyncio.wait_for(work(request, start, progress), limits.timeout_s)
            status, code = response.status_code, None
            return response
        except BadInput as exc:
            status, code = exc.status, exc.code
            return _error(exc)
        except ClientDisconnect:
            status, code = 400, "client_disconnected"
            return _error(BadInput(400, code, "the client disconnected before the body arrived"))
        except asyncio.TimeoutError:
            if progress["body_read"]:
                status, code, why = 503, "timeout", "the server is overloaded: try again"
            else:
                status, code, why = 408, "body_timeout", "the body did not arrive in time"
            return _error(BadInput(status, code, f"the request took longer than the limit of {limits.timeout_s:g} s ({why})"))
        except Exception:
            log.exception("%s failed", endpoint)
            return JSONResponse({"error": "internal server error (logged)", "code": "internal", "status": 500}, 500)
        finally:
            metrics.request(endpoint, status, time.perf_counter() - start, code)

    def timing(start: float, read: float, decoded: float, batch_timing: dict[str, float]) -> dict[str, float]:
        return {
            "read": (read - start) * 1000, "decode": (decoded - read) * 1000, "queue": batch_timing["queue_ms"],
            "model": batch_timing["model_ms"], "search": batch_timing["search_ms"],
            "total": (time.perf_counter() - start) * 1000, "batch_size": batch_timing["batch_size"],
        }  # fmt: skip

    async def locate_image(request: Request, start: float, progress: dict[str, bool]) -> Response:
        k = _k(request, limits)
        check_content_type(request.headers.get("content-type"), IMAGE_TYPES)
        data = await _body(request, limits)
        progress["body_read"] = True
        read = time.perf_counter()
        image = await run_in_threadpool(decode_image, data, bounds)
        decoded = time.perf_counter()
        [(results, batch_timing)] = await batcher.submit([image], k)
        return JSONResponse({"results": results, "timing_ms": timing(start, read, decoded, batch_timing)})

    async def locate_stream(request: Request, start: float, progress: dict[str, bool]) -> Response:
        k = _k(request, limits)
        kind = check_content_type(request.headers.get("content-type"), VIDEO_TYPES)
        data = await _body(request, limits)
        progress["body_read"] = True
        read = time.perf_counter()
        frames = await run_in_threadpool(decode_video, data, kind, bounds, limits.max_frames, limits.max_segment_pixels)
        decoded = time.perf_counter()
        answers = await batcher.submit(frames, k)
        out = [{"frame": i, "results": results} for i, (results, _) in enumerate(answers)]
        last = max((t for _, t in answers), key=lambda t: t["queue_ms"] + t["model_ms"])
        return JSONResponse({"frames": out, "timing_ms": timing(start, read, decoded, last)})

    async def locate_route(request: Request) -> Response:
        return await handle(request, "/v1/locate", locate_image)

    async def stream_route(request: Request) -> Response:
        return await handle(request, "/v1/locate/stream", locate_stream)

    async def thumbnail_route(request: Request) -> Response:
        i = request.path_params["i"]
        blob = engine.index.thumbnail(i)
        if blob is None:
            why = "the index has no thumbnails" if not meta["thumbnails"] else f"no database image {i}"
            return JSONResponse({"error": why, "code": "not_found", "status": 404}, 404)
        return Response(blob, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    async def page_route(request: Request) -> Response:
        return HTMLResponse(page)

    async def info_route(request: Request) -> Response:
        return JSONResponse(info)

    async def health_route(request: Request) -> Response:
        return JSONResponse({"status": "ok", "database_images": engine.index.size, "method": meta["model"]["info"]["method"]})

    async def metrics_route(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    routes = [
        Route("/", page_route), Route("/healthz", health_route), Route("/metrics", metrics_route),
        Route("/v1/info", info_route), Route("/v1/thumbnail/{i:int}", thumbnail_route),
        Route("/v1/locate", locate_route, methods=["POST"]), Route("/v1/locate/stream", stream_route, methods=["POST"]),
    ]  # fmt: skip
    async def http_error(request: Request, exc: HTTPException) -> Response:  # unknown path, wrong method
        return JSONResponse({"error": f"{request.method} {request.url.path}: {exc.detail}", "code": "http",
                             "status": exc.status_code}, exc.status_code, headers=exc.headers)  # fmt: skip

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.metrics, app.state.limits = metrics, limits
    return app
