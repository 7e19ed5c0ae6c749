"""The API's description: the answers as pydantic models (their JSON Schema, which forbids undocumented fields), and
the OpenAPI 3.1 document of every endpoint, its parameters, bodies and answers, served at ``/openapi.json``
(``/docs`` renders it for people). A test validates the server's real answers against this document.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from loqi_plugin_serve.decode import IMAGE_TYPES, VIDEO_TYPES


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Place(_Answer):
    """A database image and where it was taken (null where its name gives no position)."""

    index: int = Field(ge=0, description="Database index (GET /v1/thumbnail/{index})")
    name: str = Field(description="File name under the database folder; bytes that are not UTF-8 as \\xNN")
    utm_east: float | None = Field(description="UTM easting, metres")
    utm_north: float | None = Field(description="UTM northing, metres")
    utm_zone: str | None = Field(description='UTM zone number and latitude band letter, e.g. "33T"')
    lat: float | None = Field(description="Latitude, degrees (WGS 84)")
    lon: float | None = Field(description="Longitude, degrees (WGS 84)")


class Match(Place):
    rank: int = Field(ge=1)
    score: float = Field(description="Inner product of the L2-normalised descriptors (higher is closer); equal scores "
                         "rank the lower index first, as in loqi eval")  # fmt: skip
    distance: float = Field(ge=0, description="Descriptor distance sqrt(2 - 2·score), not metres")
    error_m: float | None = Field(None, description="Metres between this place and the query's position (only when the "
                                  "upload's file name carries one; null where either position is unknown)")  # fmt: skip


class SequenceMatch(Place):
    rank: int = Field(ge=1)
    sequence_score: float = Field(description="SeqSLAM score of the best trajectory ending at this image (lower is "
                                  "better): the sum of contrast-enhanced differences over its steps, divided by √steps")  # fmt: skip
    error_m: float | None = Field(None, description="Metres between this place and the frame's position (only when the "
                                  "upload's file name carries one; null where either position is unknown)")  # fmt: skip


class QueryPlace(_Answer):
    """Where the uploaded frame was taken, from its file name (gmberton's @east@north@... names)."""

    name: str
    utm_east: float
    utm_north: float
    utm_zone: str | None
    lat: float | None
    lon: float | None


class Timing(_Answer):
    """Milliseconds: reading the body, decoding it, waiting for a batch, the model's and the search's share (summed
    over the batches a segment's frames ran in), the whole request; a session's sequence matching."""

    read: float
    decode: float
    queue: float
    model: float
    search: float
    total: float
    batch_size: int = Field(ge=1, description="Images in the (largest) batch the request's images ran in")
    batches: int = Field(ge=1, description="Model batches the request's images ran in")
    sequence: float | None = Field(None, description="Sequence matching (sessions only)")


class LocateAnswer(_Answer):
    results: list[Match]
    query: QueryPlace | None = Field(None, description="Present when the upload's file name carries a position")
    timing_ms: Timing


class FrameAnswer(_Answer):
    frame: int = Field(ge=0, description="Frame number in display order")
    results: list[Match]


class StreamAnswer(_Answer):
    frames: list[FrameAnswer]
    timing_ms: Timing


class SequenceAnswer(_Answer):
    frames: int = Field(ge=1, description="Frames in the sequence ending at this one: min(length, frames so far)")
    results: list[SequenceMatch]


class SessionFrameAnswer(_Answer):
    frame: int = Field(ge=0, description="The frame's number in the session")
    results: list[Match] = Field(description="The frame's own top-k")
    sequence: SequenceAnswer = Field(description="The top-k of the sequence ending at this frame")
    query: QueryPlace | None = None
    timing_ms: Timing


class SessionFrame(_Answer):
    frame: int = Field(ge=0)
    results: list[Match]
    sequence: SequenceAnswer


class SessionStreamAnswer(_Answer):
    frames: list[SessionFrame]
    timing_ms: Timing


class SequenceSettings(_Answer):
    """SeqSLAM's parameters (Milford & Wyeth 2012), as `loqi eval --sequence` takes them."""

    length: int = Field(ge=1, description="d_s: frames per sequence (default: loqi serve --sequence-length)")
    rate: float = Field(gt=0, description="Database frames per query frame (the velocities multiply it); default 1")
    window: int = Field(ge=2, description="R_window: database frames of the contrast-enhancement window; default 10")
    v_min: float = Field(gt=0, description="Slowest trajectory, default 0.8")
    v_max: float = Field(gt=0, description="Fastest trajectory, default 1.2")
    v_step: float = Field(gt=0, description="Step between velocities, default 0.1")


class SessionRequest(_Answer):
    """Any of the sequence settings; an empty object (or no body) takes the defaults."""

    length: int | None = None
    rate: float | None = None
    window: int | None = None
    v_min: float | None = None
    v_max: float | None = None
    v_step: float | None = None


class SessionState(_Answer):
    session: str = Field(description="The session's id (128 random bits, hex)")
    frames: int = Field(ge=0, description="Frames matched so far")
    sequence: SequenceSettings
    memory_bytes: int = Field(ge=0, description="What the session holds: length × database images × 8 bytes")
    expires_in_s: float = Field(ge=0, description="Seconds until it expires unless a frame comes")


class Error(_Answer):
    error: str = Field(description="What went wrong, in one line")
    code: str = Field(description="Short reason, as counted in loqi_request_errors_total")
    status: int = Field(description="The HTTP status, again")


class Health(_Answer):
    status: str
    database_images: int
    method: str


class Ready(_Answer):
    status: str = Field(description='"ready", or "not ready" while starting and once stopping')
    why: str | None = None


class Places(_Answer):
    utm: list[list[float] | None] | None = Field(description="[east, north] of every database image in index order "
                                                 "(null where unknown); null when the database holds more than `limit`")  # fmt: skip
    limit: int


class Info(BaseModel):
    """What is served (no path of the server's file system); more fields may be added."""

    model_config = ConfigDict(extra="allow")

    index: str = Field(description="The index folder's name")
    database_images: int
    dim: int
    dataset: str
    built_from: str
    degradation: str
    model: dict[str, Any]
    weights: str = Field(description='A variant name ("imagenet") or "checkpoint"')
    fingerprint: str = Field(description="Model fingerprint of the database's model")
    queries: dict[str, Any] = Field(description="Fingerprint of the model encoding the queries, and the teacher it was "
                                    "distilled from when it is a student querying its teacher's index")  # fmt: skip
    search: dict[str, Any]
    device: str
    thumbnails: bool
    positions: int = Field(description="Database images with a known position")
    capture_order: bool = Field(description="Whether the database has a capture order (sessions need one)")
    api_keys: bool
    limits: dict[str, Any]
    sessions: dict[str, Any]


MODELS = (LocateAnswer, StreamAnswer, SessionFrameAnswer, SessionStreamAnswer, SessionRequest, SessionState, Error,
          Health, Ready, Places, Info)  # fmt: skip


def _schemas() -> dict[str, Any]:
    _, top = models_json_schema([(m, "serialization") for m in MODELS], ref_template="#/components/schemas/{model}")
    return top["$defs"]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


ERRORS = {
    "400": "Bad input: not an image or video, corrupt, a bad k or setting (code says which)",
    "404": "No such session (expired, ended, never created, created with another API key, or the server restarted)",
    "408": "The body or the request headers did not arrive in time",
    "409": "The index has no capture order: sessions need one",
    "413": "Over a limit: body size, pixels, aspect ratio, frames",
    "415": "A Content-Type or video codec that is not served",
    "503": "Overloaded (timeout), or the session bounds are reached; Retry-After: 1",
}


def _errors(*statuses: str, keys: bool) -> dict[str, Any]:
    out = {s: _json("Error", ERRORS[s]) for s in statuses}
    if keys:
        out["401"] = _json("Error", "No Authorization: Bearer KEY header, or not a valid key")
    return out


def _upload(types: "tuple[str, ...] | dict[str, str]", what: str) -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    content = {kind: binary for kind in [*types, "application/octet-stream"]}
    content["multipart/form-data"] = {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary", "description": f"The {what}; a file name that "
                                "carries a position (gmberton's @east@north@...) adds the query's position and each "
                                "result's error in metres"}},
    }}  # fmt: skip
    return {"required": True, "description": f"The {what}'s bytes as they are, or uploaded as a form (curl -F file=@PATH)",
            "content": content}  # fmt: skip


def openapi_document(info: dict[str, Any], limits: Any, sessions: Any, keys: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a server with these limits (``keys``: API keys required)."""
    k = {"name": "k", "in": "query", "required": False, "description": "How many places to return",
         "schema": {"type": "integer", "minimum": 1, "maximum": limits.max_k, "default": 5}}  # fmt: skip
    sid = {"name": "sid", "in": "path", "required": True, "description": "The session's id", "schema": {"type": "string"}}
    secured = {"security": [{"bearer": []}]} if keys else {}
    image = _upload(IMAGE_TYPES, "image (JPEG, PNG, WebP, BMP or TIFF)")
    video = _upload(tuple(VIDEO_TYPES), "H.264 or HEVC segment (raw Annex B, MP4, MPEG-TS or Matroska)")

    def op(summary: str, responses: dict[str, Any], *, params: list | None = None, body: dict | None = None,
           protected: bool = True) -> dict[str, Any]:  # fmt: skip
        out: dict[str, Any] = {"summary": summary, "responses": responses}
        if params:
            out["parameters"] = params
        if body:
            out["requestBody"] = body
        return {**out, **(secured if protected else {})}

    def text(kind: str, description: str) -> dict[str, Any]:
        return {"description": description, "content": {kind: {"schema": {"type": "string"}}}}

    paths = {
        "/v1/locate": {"post": op(
            "Locate one image: the top-k database places", {"200": _json("LocateAnswer", "The places, best first"),
                                                            **_errors("400", "408", "413", "415", "503", keys=keys)},
            params=[k], body=image)},
        "/v1/locate/stream": {"post": op(
            "Locate every frame of a video segment", {"200": _json("StreamAnswer", "Each frame's places, in display order"),
                                                      **_errors("400", "408", "413", "415", "503", keys=keys)},
            params=[k], body=video)},
        "/v1/sessions": {"post": op(
            "Start a sequence session (a robot's stream): frames posted to it are also matched as a sequence",
            {"201": _json("SessionState", "The new session"), **_errors("400", "409", "503", keys=keys)},
            body={"required": False, "content": {"application/json": {"schema": _ref("SessionRequest")}}})},
        "/v1/sessions/{sid}": {
            "get": op("A session's state", {"200": _json("SessionState", "The session"), **_errors("404", keys=keys)},
                      params=[sid]),
            "delete": op("End a session", {"204": {"description": "Ended"}, **_errors("404", keys=keys)}, params=[sid]),
        },
        "/v1/sessions/{sid}/locate": {"post": op(
            "The session's next frame: its own top-k and the sequence's",
            {"200": _json("SessionFrameAnswer", "Both answers"), **_errors("400", "404", "408", "413", "415", "503", keys=keys)},
            params=[sid, k], body=image)},
        "/v1/sessions/{sid}/locate/stream": {"post": op(
            "The session's next frames, as a video segment: both answers for every frame",
            {"200": _json("SessionStreamAnswer", "Both answers per frame"),
             **_errors("400", "404", "408", "413", "415", "503", keys=keys)}, params=[sid, k], body=video)},
        "/v1/info": {"get": op("The index, the models and the limits being served", {"200": _json("Info", "What is served"),
                                                                                      **_errors(keys=keys)})},
        "/v1/places": {"get": op("Every database position, for a map", {"200": _json("Places", "UTM east/north per image"),
                                                                         **_errors(keys=keys)})},
        "/v1/thumbnail/{i}": {"get": op(
            "A database image as a small JPEG",
            {"200": {"description": "The thumbnail", "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
             "404": _json("Error", "No such image, or the index has no thumbnails"), **_errors(keys=keys)},
            params=[{"name": "i", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}])},
        "/metrics": {"get": op("Prometheus metrics (text format 0.0.4)", {"200": text("text/plain", "The metrics"),
                                                                          **_errors(keys=keys)})},
        "/healthz": {"get": op("Liveness: the process serves", {"200": _json("Health", "Alive")}, protected=False)},
        "/readyz": {"get": op("Readiness: the model is loaded and warm, and the server is not stopping",
                              {"200": _json("Ready", "Ready"), "503": _json("Ready", "Starting or stopping")}, protected=False)},
        "/": {"get": op("A page to try it: upload an image or a video, see the answers on a map",
                        {"200": text("text/html", "The page")}, protected=False)},
        "/docs": {"get": op("This description, for people", {"200": text("text/html", "The page")}, protected=False)},
        "/openapi.json": {"get": op("This description, for machines", {"200": {"description": "OpenAPI 3.1",
                                                                               "content": {"application/json": {}}}},
                                    protected=False)},
    }  # fmt: skip
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "loqi serve", "version": "1",
                 "description": f"Visual place recognition over {info['database_images']} database images of "
                                f"{info['dataset']} ({info['model']['method']}). Scores, ties and ranks equal loqi eval's."},
        "paths": paths,
        "components": {"schemas": _schemas()},
    }  # fmt: skip
    if keys:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                                "description": "A key of loqi serve --api-key-file"}}
    return document
