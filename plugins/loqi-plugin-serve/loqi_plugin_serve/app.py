"""The ASGI application (Starlette): locate an image or a video segment, alone or in a sequence session; a page, an
API description, health, readiness and metrics.

    POST   /v1/locate?k=5                      an image (raw bytes or a multipart upload) → the top-k places
    POST   /v1/locate/stream?k=5               an H.264/HEVC segment → the top-k of every frame
    POST   /v1/sessions                        a sequence session → its id
    POST   /v1/sessions/{id}/locate?k=5        a frame of the session → its top-k and the sequence's
    POST   /v1/sessions/{id}/locate/stream     a segment of the session → both, for every frame
    GET    /v1/sessions/{id}, DELETE ...       a session's state; end it
    GET    /v1/info, /v1/thumbnail/{i}, /v1/places   the index and model; a thumbnail; every database position
    GET    /, /docs, /openapi.json             the page; the API's description, for people and for machines
    GET    /healthz, /readyz, /metrics         liveness, readiness, Prometheus text

Bad input is a 4xx JSON ``{"error": reason, "code": short_code, "status": N}``; only a fault of the server is a 5xx.
Every answer carries ``X-Request-ID``. With API keys (``Access.api_keys``), everything but the page, the API
description, liveness and readiness needs ``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import numpy as np

from loqi_plugin_serve.access import BearerAuth, RequestLog, route_of
from loqi_plugin_serve.batcher import MicroBatcher
from loqi_plugin_serve.decode import IMAGE_TYPES, VIDEO_TYPES, BadInput, Bounds, decode_image, decode_video, upload_of
from loqi_plugin_serve.engine import with_errors
from loqi_plugin_serve.metrics import Metrics
from loqi_plugin_serve.sessions import SessionLimits, Sessions

if TYPE_CHECKING:  # pragma: no cover
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from loqi_plugin_serve.engine import Engine

log = logging.getLogger("loqi.serve")

MAX_MAP_PLACES = 200_000
"""Database images up to which ``/v1/places`` gives every position for the page's map (about 6 MB of JSON)."""


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


@dataclass(frozen=True)
class Access:
    """Who may ask: the SHA-256 digests of the API keys (none: no key needed), the origins a browser page may call
    from (CORS; none: same origin only), and whether each request is logged."""

    api_keys: tuple[bytes, ...] = ()
    cors_origins: tuple[str, ...] = ()
    access_log: bool = True


def _error(exc: BadInput) -> "Response":
    from starlette.responses import JSONResponse

    headers = {"Retry-After": "1"} if exc.status == 503 else None
    return JSONResponse({"error": exc.message, "code": exc.code, "status": exc.status}, exc.status, headers=headers)


def _key(request: "Request") -> bytes | None:
    """The digest of the API key the request was let in with (``BearerAuth``); None without keys."""
    return request.scope.get("state", {}).get("api_key")


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


def _info(engine: "Engine", limits: Limits, access: Access, sessions: SessionLimits, ordered: bool) -> dict[str, Any]:
    """``GET /v1/info``: what is served, without any path of the server's file system."""
    meta = engine.index.meta
    model = {k: v for k, v in meta["model"]["info"].items() if k != "weights"}
    weights = str(meta["model"]["weights"])
    positions = engine.index.utm[:, 0]
    return {
        "index": engine.index.path.name, "database_images": engine.index.size, "dim": meta["dim"],
        "dataset": meta["dataset_name"], "built_from": meta["built_from"], "degradation": meta["degradation"],
        "model": model, "weights": "checkpoint" if "/" in weights or "\\" in weights else weights,
        "fingerprint": meta["model"]["fingerprint"],
        "queries": {"fingerprint": engine.fingerprint,
                    "distilled_from": engine.lineage["fingerprint"] if engine.lineage else None},
        "search": {k: v for k, v in meta["search"].items()}, "device": str(engine.device),
        "thumbnails": meta["thumbnails"], "positions": int(np.isfinite(positions).sum()),
        "capture_order": ordered, "api_keys": bool(access.api_keys), "limits": asdict(limits),
        "sessions": asdict(sessions),
    }  # fmt: skip


def create_app(engine: "Engine", limits: Limits = Limits(), access: Access = Access(),
               session_limits: SessionLimits = SessionLimits()) -> "Starlette":  # fmt: skip
    """The application serving ``engine``; the batcher and the session sweeper start and stop with it (uvicorn's
    lifespan), and it is ready once a warm-up frame went through the model."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import ClientDisconnect
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    from loqi_core.plugin import Traverses
    from loqi_plugin_serve.schema import openapi_document

    metrics = Metrics()
    bounds = Bounds(limits.max_pixels, limits.max_aspect, limits.max_model_pixels, engine.model.preprocess)

    def on_batch(size: int, timings: dict[str, float]) -> None:
        metrics.batch(size)
        metrics.stage("model", timings["model_ms"] / 1000)
        metrics.stage("search", timings["search_ms"] / 1000)

    batcher = MicroBatcher(lambda images, ks: engine.locate(images, ks, descriptors=True), limits.max_batch,
                           limits.max_wait_ms, on_batch=on_batch)  # fmt: skip
    traverses = engine.index.traverses()
    sessions = Sessions(Traverses.of(traverses, engine.index.size) if traverses else None, engine.index.size,
                        session_limits, on_event=metrics.session)  # fmt: skip
    files = resources.files("loqi_plugin_serve")
    page, docs = files.joinpath("page.html").read_text(), files.joinpath("docs.html").read_text()
    info = _info(engine, limits, access, session_limits, traverses is not None)
    spec = openapi_document(info, limits, session_limits, keys=bool(access.api_keys))
    state = {"ready": False}

    async def handle(request: Request, endpoint: str, work: Callable[..., Awaitable[Response]], uses_model: bool = True) -> Response:
        """Guard one request: limits and bad input become 4xx JSON, nothing escapes as a crash. A request that
        will reach the model is announced to the batcher until it submits (or leaves)."""
        metrics.started()
        code = None
        progress = {"body_read": False, "announced": uses_model, "start": time.perf_counter()}
        if uses_model:
            batcher.announce()
        try:
            return await asyncio.wait_for(work(request, progress), limits.timeout_s)
        except BadInput as exc:
            code = exc.code
            return _error(exc)
        except ClientDisconnect:
            code = "client_disconnected"
            return _error(BadInput(400, code, "the client disconnected before the body arrived"))
        except asyncio.TimeoutError:
            if progress["body_read"]:
                status, code, why = 503, "timeout", "the server is overloaded: try again"
            else:
                status, code, why = 408, "body_timeout", "the body did not arrive in time"
            return _error(BadInput(status, code, f"the request took longer than the limit of {limits.timeout_s:g} s ({why})"))
        except Exception:
            code = "internal"
            log.exception("%s failed (request %s)", endpoint, request.scope.get("state", {}).get("request_id"))
            return JSONResponse({"error": "internal server error (logged)", "code": "internal", "status": 500}, 500)
        finally:
            if progress["announced"]:
                batcher.withdraw()
            metrics.finished()
            if code is not None:
                metrics.error(endpoint, code)

    async def submit(progress: dict[str, Any], frames: list, k: int) -> list:
        announced, progress["announced"] = progress["announced"], False
        return await batcher.submit(frames, k, announced=announced)

    def timing(progress: dict[str, Any], read: float, decoded: float, answers: list) -> dict[str, float]:
        """Where the request's time went; a segment's frames may have run in several batches: model and search
        sum over them, queue is until the first began."""
        batches = {t["batch"]: t for _, t in answers}
        metrics.stage("decode", decoded - read)
        queue = min(t["queue_ms"] for _, t in answers)
        metrics.stage("queue", queue / 1000)
        return {
            "read": (read - progress["start"]) * 1000, "decode": (decoded - read) * 1000, "queue": queue,
            "model": sum(t["model_ms"] for t in batches.values()), "search": sum(t["search_ms"] for t in batches.values()),
            "total": (time.perf_counter() - progress["start"]) * 1000,
            "batch_size": max(t["batch_size"] for t in batches.values()), "batches": len(batches),
        }  # fmt: skip

    async def read_image(request: Request, progress: dict[str, Any]) -> tuple[Any, str | None, float, float]:
        data = await _body(request, limits)
        progress["body_read"] = True
        read = time.perf_counter()
        upload = upload_of(data, request.headers.get("content-type"), IMAGE_TYPES)
        image = await run_in_threadpool(decode_image, upload.data, bounds)
        return image, upload.filename, read, time.perf_counter()

    async def read_video(request: Request, progress: dict[str, Any]) -> tuple[list, str | None, float, float]:
        data = await _body(request, limits)
        progress["body_read"] = True
        read = time.perf_counter()
        upload = upload_of(data, request.headers.get("content-type"), VIDEO_TYPES)
        frames = await run_in_threadpool(decode_video, upload.data, upload.kind, bounds, limits.max_frames,
                                         limits.max_segment_pixels)  # fmt: skip
        return frames, upload.filename, read, time.perf_counter()

    def answer(results: list, query: dict[str, Any] | None) -> dict[str, Any]:
        return {"results": with_errors(results, query), **({"query": query} if query else {})}

    async def locate_image(request: Request, progress: dict[str, Any]) -> Response:
        k = _k(request, limits)
        image, name, read, decoded = await read_image(request, progress)
        answers = await submit(progress, [image], k)
        [((results, _), _)] = answers
        return JSONResponse({**answer(results, engine.query_place(name)), "timing_ms": timing(progress, read, decoded, answers)})

    async def locate_stream(request: Request, progress: dict[str, Any]) -> Response:
        k = _k(request, limits)
        frames, _, read, decoded = await read_video(request, progress)
        answers = await submit(progress, frames, k)
        out = [{"frame": i, "results": results} for i, ((results, _), _) in enumerate(answers)]
        return JSONResponse({"frames": out, "timing_ms": timing(progress, read, decoded, answers)})

    async def sequence_answers(session, answers: list, k: int) -> tuple[list[dict[str, Any]], float]:
        """Each frame through the session's sequence matching, in order: its sequence answer; and the seconds spent."""
        t0 = time.perf_counter()

        def match() -> list[dict[str, Any]]:
            out = []
            for (_, descriptor), _ in answers:
                ids, scores, frames = sessions.push(session, engine.similarity(descriptor), k)
                out.append({"frame": session.frames - 1, "sequence": {"frames": frames, "results": engine.sequence_rows(ids, scores)}})
            return out

        out = await run_in_threadpool(match)
        seconds = time.perf_counter() - t0
        metrics.stage("sequence", seconds)
        return out, seconds

    async def session_image(request: Request, progress: dict[str, Any]) -> Response:
        k = _k(request, limits)
        session = sessions.get(request.path_params["sid"], _key(request))
        async with session.lock:
            image, name, read, decoded = await read_image(request, progress)
            answers = await submit(progress, [image], k)
            [matched], seconds = await sequence_answers(session, answers, k)
        [((results, _), _)] = answers
        query = engine.query_place(name)
        matched["sequence"]["results"] = with_errors(matched["sequence"]["results"], query)
        return JSONResponse({**matched, **answer(results, query),
                             "timing_ms": {**timing(progress, read, decoded, answers), "sequence": seconds * 1000}})  # fmt: skip

    async def session_stream(request: Request, progress: dict[str, Any]) -> Response:
        k = _k(request, limits)
        session = sessions.get(request.path_params["sid"], _key(request))
        async with session.lock:
            frames, _, read, decoded = await read_video(request, progress)
            answers = await submit(progress, frames, k)
            matched, seconds = await sequence_answers(session, answers, k)
        out = [{**m, "results": results} for m, ((results, _), _) in zip(matched, answers)]
        return JSONResponse({"frames": out, "timing_ms": {**timing(progress, read, decoded, answers), "sequence": seconds * 1000}})

    async def session_create(request: Request, progress: dict[str, Any]) -> Response:
        data = await _body(request, limits)
        try:
            body = json.loads(data) if data.strip() else {}
        except ValueError:
            raise BadInput(400, "bad_session", "the body is not JSON: send {} or the sequence settings, e.g. "
                           '{"length": 10, "rate": 1.0}') from None  # fmt: skip
        if not isinstance(body, dict):
            raise BadInput(400, "bad_session", "the body must be a JSON object of sequence settings")
        session = sessions.create(body, _key(request))
        return JSONResponse(session.describe(session_limits.idle_s, sessions.clock()), 201)

    async def session_show(request: Request, progress: dict[str, Any]) -> Response:
        session = sessions.get(request.path_params["sid"], _key(request))
        return JSONResponse(session.describe(session_limits.idle_s, sessions.clock()))

    async def session_end(request: Request, progress: dict[str, Any]) -> Response:
        sessions.end(request.path_params["sid"], _key(request))
        return Response(status_code=204)

    def route(endpoint: str, work: Callable[..., Awaitable[Response]], uses_model: bool = True):
        async def run(request: Request) -> Response:
            return await handle(request, endpoint, work, uses_model)

        return run

    async def thumbnail_route(request: Request) -> Response:
        i = request.path_params["i"]
        blob = engine.index.thumbnail(i)
        if blob is None:
            why = "the index has no thumbnails" if not info["thumbnails"] else f"no database image {i}"
            metrics.error("/v1/thumbnail/{i}", "not_found")
            return JSONResponse({"error": why, "code": "not_found", "status": 404}, 404)
        return Response(blob, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    places: dict[str, bytes] = {}

    async def places_route(request: Request) -> Response:
        """Every database image's UTM east and north (null where unknown), for the page's map; built once."""
        if "json" not in places:
            utm = engine.index.utm
            rows = None if len(utm) > MAX_MAP_PLACES else [[round(float(e), 2), round(float(n), 2)]
                                                            if math.isfinite(e) and math.isfinite(n) else None for e, n in utm]  # fmt: skip
            places["json"] = json.dumps({"utm": rows, "limit": MAX_MAP_PLACES}).encode()
        return Response(places["json"], media_type="application/json")

    async def page_route(request: Request) -> Response:
        return HTMLResponse(page)

    async def docs_route(request: Request) -> Response:
        return HTMLResponse(docs)

    async def openapi_route(request: Request) -> Response:
        return JSONResponse(spec)

    async def info_route(request: Request) -> Response:
        return JSONResponse(info)

    async def health_route(request: Request) -> Response:
        return JSONResponse({"status": "ok", "database_images": engine.index.size, "method": info["model"]["method"]})

    async def ready_route(request: Request) -> Response:
        if state["ready"]:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "why": state.get("why", "starting")}, 503, headers={"Retry-After": "1"})

    async def metrics_route(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    async def sweep_sessions() -> None:
        while True:
            await asyncio.sleep(min(5.0, session_limits.idle_s / 4))
            sessions.sweep()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        import torch

        await run_in_threadpool(engine.locate, [torch.zeros((3, 64, 64), dtype=torch.uint8)], [1])  # warm-up
        await batcher.start()
        sweeper = asyncio.create_task(sweep_sessions())
        state["ready"] = True
        try:
            yield
        finally:
            state.update(ready=False, why="stopping")
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
            await batcher.stop()

    routes = [
        Route("/", page_route), Route("/docs", docs_route), Route("/openapi.json", openapi_route),
        Route("/healthz", health_route), Route("/readyz", ready_route), Route("/metrics", metrics_route),
        Route("/v1/info", info_route), Route("/v1/places", places_route), Route("/v1/thumbnail/{i:int}", thumbnail_route),
        Route("/v1/locate", route("/v1/locate", locate_image), methods=["POST"]),
        Route("/v1/locate/stream", route("/v1/locate/stream", locate_stream), methods=["POST"]),
        Route("/v1/sessions", route("/v1/sessions", session_create, False), methods=["POST"]),
        Route("/v1/sessions/{sid}", route("/v1/sessions/{sid}", session_show, False), methods=["GET"]),
        Route("/v1/sessions/{sid}", route("/v1/sessions/{sid}", session_end, False), methods=["DELETE"]),
        Route("/v1/sessions/{sid}/locate", route("/v1/sessions/{sid}/locate", session_image), methods=["POST"]),
        Route("/v1/sessions/{sid}/locate/stream", route("/v1/sessions/{sid}/locate/stream", session_stream), methods=["POST"]),
    ]  # fmt: skip

    async def http_error(request: Request, exc: HTTPException) -> Response:  # unknown path, wrong method
        metrics.error(route_of(request.scope), "http")
        return JSONResponse({"error": f"{request.method} {request.url.path}: {exc.detail}", "code": "http",
                             "status": exc.status_code}, exc.status_code, headers=exc.headers)  # fmt: skip

    middleware = [Middleware(RequestLog, metrics=metrics, enabled=access.access_log)]
    if access.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(access.cors_origins),
                                     allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                                     expose_headers=["X-Request-ID"], max_age=600))  # fmt: skip
    if access.api_keys:
        middleware.append(Middleware(BearerAuth, digests=access.api_keys, metrics=metrics))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.metrics, app.state.limits, app.state.serving = metrics, limits, state
    return app
