"""A deployment's surface: API keys, CORS, request ids and the access log, /v1/info without server paths, the OpenAPI
document validating the server's real answers, multipart uploads with positions in their names, per-stage metrics,
readiness, and a lone request that does not wait for company."""

from __future__ import annotations

import http.client
import json
import logging
import uuid
from dataclasses import replace

import numpy as np
import pytest

from loqi_plugin_serve.access import read_api_keys
from loqi_plugin_serve.app import Access, create_app

KEY = "k3y-" + uuid.uuid4().hex  # a fresh key: it must never show up in a log


def _multipart(data: bytes, filename: str, content_type: str = "image/png", field: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body as curl -F file=@NAME sends it."""
    boundary = "----loqi" + uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    return body, f"multipart/form-data; boundary={boundary}"


def _request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def keyed(engine, kit, tmp_path_factory):
    """A server with API keys (two of them) and CORS for one origin."""
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# the robots' keys\n{KEY}\n\nsecond-key-{'x' * 20}\n")
    running = kit.Server(create_app(engine, kit.LIMITS, Access(read_api_keys(keys), ("https://app.example.org",))))
    yield running
    running.stop()


def test_keys_401_without_a_valid_one_and_never_in_the_log(keyed, engine, kit, caplog):
    png = kit.database_files(engine.index)[7].read_bytes()
    caplog.set_level(logging.INFO, logger="loqi.serve.access")
    for headers, why in (({}, "no Authorization header"), ({"Authorization": "Bearer wrong-key-0123456789"}, "not valid"),
                         ({"Authorization": f"Basic {KEY}"}, "not valid")):  # fmt: skip
        status, got, data = _request(keyed, "POST", "/v1/locate", png, {"Content-Type": "image/png", **headers})
        assert status == 401 and got["www-authenticate"].startswith("Bearer") and why in json.loads(data)["error"]
        assert _request(keyed, "GET", "/v1/info", None, headers)[0] == 401
        assert _request(keyed, "GET", "/metrics", None, headers)[0] == 401
    ok = {"Authorization": f"Bearer {KEY}"}
    status, _, data = _request(keyed, "POST", "/v1/locate?k=2", png, {"Content-Type": "image/png", **ok})
    assert status == 200 and json.loads(data)["results"][0]["index"] == 7
    assert _request(keyed, "GET", "/v1/info", None, {"Authorization": f"Bearer second-key-{'x' * 20}"})[0] == 200
    for public in ("/", "/docs", "/openapi.json", "/healthz", "/readyz"):
        assert _request(keyed, "GET", public)[0] == 200, public
    metrics = _request(keyed, "GET", "/metrics", None, ok)[2].decode()
    assert 'loqi_request_errors_total{endpoint="(auth)",reason="unauthorized"} 9' in metrics
    lines = [r.getMessage() for r in caplog.records if r.name == "loqi.serve.access"]
    assert any('"POST /v1/locate" 401' in line for line in lines) and any('"POST /v1/locate" 200' in line for line in lines)
    assert not any(KEY in line or "wrong-key" in line for line in lines)


def test_a_session_belongs_to_the_key_that_created_it(keyed, engine, kit):
    """Another key can neither use, see nor end it: it is answered as unknown (404), so nothing says it exists."""
    mine, other = {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Bearer second-key-{'x' * 20}"}
    status, _, data = _request(keyed, "POST", "/v1/sessions", b'{"length": 3}', {"Content-Type": "application/json", **mine})
    assert status == 201, data
    sid = json.loads(data)["session"]
    png = kit.database_files(engine.index)[4].read_bytes()
    for method, path, body, headers in (("GET", f"/v1/sessions/{sid}", None, other),
                                        ("POST", f"/v1/sessions/{sid}/locate?k=2", png, {"Content-Type": "image/png", **other}),
                                        ("DELETE", f"/v1/sessions/{sid}", None, other)):  # fmt: skip
        status, _, data = _request(keyed, method, path, body, headers)
        answer = json.loads(data)
        assert status == 404 and answer["code"] == "unknown_session" and "another API key" in answer["error"], (method, data)
    status, _, data = _request(keyed, "GET", f"/v1/sessions/{sid}", None, mine)
    assert status == 200 and json.loads(data)["frames"] == 0  # the other key's frame never reached it
    status, _, data = _request(keyed, "POST", f"/v1/sessions/{sid}/locate?k=2", png, {"Content-Type": "image/png", **mine})
    assert status == 200 and json.loads(data)["frame"] == 0 and json.loads(data)["results"][0]["index"] == 4
    assert _request(keyed, "DELETE", f"/v1/sessions/{sid}", None, mine)[0] == 204
    assert _request(keyed, "GET", f"/v1/sessions/{sid}", None, mine)[0] == 404


def test_a_key_file_is_checked_line_by_line_without_echoing_it(tmp_path):
    from loqi_core.plugin import ConfigError

    bad = tmp_path / "keys.txt"
    bad.write_text("short\n")
    with pytest.raises(ConfigError, match="line 1: not an API key") as err:
        read_api_keys(bad)
    assert "short" not in str(err.value)
    bad.write_text("# nothing but a comment\n\n")
    with pytest.raises(ConfigError, match="holds no key"):
        read_api_keys(bad)


def test_cors_preflight_and_exposed_request_id(keyed):
    origin = {"Origin": "https://app.example.org"}
    status, headers, _ = _request(keyed, "OPTIONS", "/v1/locate", None, {
        **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type, x-request-id"})
    assert status == 200 and headers["access-control-allow-origin"] == "https://app.example.org"
    assert "POST" in headers["access-control-allow-methods"]
    assert {"authorization", "x-request-id"} <= set(headers["access-control-allow-headers"].lower().replace(" ", "").split(","))
    status, headers, _ = _request(keyed, "GET", "/v1/info", None, {**origin, "Authorization": f"Bearer {KEY}"})
    assert status == 200 and headers["access-control-allow-origin"] == "https://app.example.org"
    assert "x-request-id" in headers["access-control-expose-headers"].lower()
    status, headers, _ = _request(keyed, "GET", "/v1/info", None, {**origin})
    assert status == 401 and headers["access-control-allow-origin"] == "https://app.example.org"  # the page sees why
    status, headers, _ = _request(keyed, "OPTIONS", "/v1/locate", None, {
        "Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"})
    assert status == 400 and "access-control-allow-origin" not in headers


def test_request_ids_info_without_server_paths_and_readiness(server, engine, tmp_path):
    status, headers, _ = _request(server, "GET", "/healthz", None, {"X-Request-ID": "robot-7.frame-12"})
    assert status == 200 and headers["x-request-id"] == "robot-7.frame-12"
    status, headers, _ = _request(server, "GET", "/healthz", None, {"X-Request-ID": "bad id\twith junk"})
    assert len(headers["x-request-id"]) == 32 and headers["x-request-id"] != "bad id\twith junk"
    status, _, data = _request(server, "GET", "/v1/info")
    info = json.loads(data)
    text = json.dumps(info)
    assert status == 200 and str(engine.index.path.parent) not in text and "/tmp" not in text and "/home" not in text
    assert info["index"] == "demo" and info["dataset"] == "demo" and info["capture_order"] is True
    assert info["queries"] == {"fingerprint": info["fingerprint"], "distilled_from": None}
    assert _request(server, "GET", "/readyz")[:1] == (200,)


def test_readiness_turns_off_on_a_stop_signal(engine, kit):
    import signal

    running = kit.Server(create_app(engine, kit.LIMITS))
    try:
        assert json.loads(_request(running, "GET", "/readyz")[2]) == {"status": "ready"}
        running.server.handle_exit(signal.SIGTERM, None)  # what uvicorn runs on SIGTERM
        assert running.app.state.serving == {"ready": False, "why": "stopping"}
    finally:
        running.thread.join(60)


def _validate(document: dict, method: str, path: str, status: int, answer) -> None:
    """``answer`` against the schema the document gives for this operation and status."""
    from jsonschema import Draft202012Validator

    response = document["paths"][path][method]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    Draft202012Validator({**schema, "components": document["components"]}).validate(answer)


def test_openapi_document_describes_every_route_and_validates_the_real_answers(keyed, server, engine, kit):
    """Every route of the app is in /openapi.json, and every answer the tests get validates against it (the answer
    schemas forbid fields they do not list); /docs renders it."""
    pytest.importorskip("jsonschema", reason="the [test] extra: pip install jsonschema")
    from jsonschema.exceptions import ValidationError

    auth = {"Authorization": f"Bearer {KEY}"}
    document = json.loads(_request(keyed, "GET", "/openapi.json")[2])
    routes = {r.path_format for r in keyed.app.routes}
    assert set(document["paths"]) == routes
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["paths"]["/v1/locate"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in document["paths"]["/healthz"]["get"]

    files = kit.database_files(engine.index)
    png, frames = files[30].read_bytes(), [kit.decoded(files[i].read_bytes()) for i in range(40, 44)]
    body, multipart = _multipart(png, "@0.00@3100.00@@@@@310@@@@@@@@.png")
    calls = [
        ("post", "/v1/locate?k=3", png, {"Content-Type": "image/png"}, 200),
        ("post", "/v1/locate?k=3", body, {"Content-Type": multipart}, 200),
        ("post", "/v1/locate/stream?k=2", kit.video_bytes(frames), {"Content-Type": "video/h264"}, 200),
        ("post", "/v1/locate?k=0", png, {"Content-Type": "image/png"}, 400),
        ("post", "/v1/locate", b"text", {"Content-Type": "text/plain"}, 415),
        ("post", "/v1/locate", png, {"Content-Type": "image/png", "Authorization": "Bearer nope-nope-nope-nope"}, 401),
        ("get", "/v1/info", None, {}, 200), ("get", "/v1/places", None, {}, 200), ("get", "/healthz", None, {}, 200),
        ("get", "/readyz", None, {}, 200), ("get", "/v1/thumbnail/99999", None, {}, 404),
        ("post", "/v1/sessions", json.dumps({"length": 3}).encode(), {"Content-Type": "application/json"}, 201),
        ("post", "/v1/sessions", b'{"length": 0}', {"Content-Type": "application/json"}, 400),
        ("get", "/v1/sessions/0123", None, {}, 404),
    ]  # fmt: skip
    checked = 0
    for method, path, data, headers, status in calls:
        headers = {**auth, **headers} if "Authorization" not in headers else headers
        got, _, raw = _request(keyed, method.upper(), path, data, headers)
        assert got == status, (path, raw[:300])
        template = {"/v1/thumbnail/99999": "/v1/thumbnail/{i}", "/v1/sessions/0123": "/v1/sessions/{sid}"}.get(
            path.split("?")[0], path.split("?")[0])
        _validate(document, method, template, got, json.loads(raw))
        checked += 1
        if path == "/v1/sessions" and got == 201:
            sid = json.loads(raw)["session"]
            for m, p, d, h in (("get", f"/v1/sessions/{sid}", None, {}),
                               ("post", f"/v1/sessions/{sid}/locate?k=2", png, {"Content-Type": "image/png"}),
                               ("post", f"/v1/sessions/{sid}/locate?k=2", body, {"Content-Type": multipart}),
                               ("post", f"/v1/sessions/{sid}/locate/stream?k=2", kit.video_bytes(frames), {"Content-Type": "video/h264"})):  # fmt: skip
                got, _, raw = _request(keyed, m.upper(), p, d, {**auth, **h})
                assert got == 200, raw[:300]
                template = p.split("?")[0].replace(sid, "{sid}")
                _validate(document, m, template, got, json.loads(raw))
                checked += 1
            assert _request(keyed, "DELETE", f"/v1/sessions/{sid}", None, auth)[0] == 204
    assert checked == len(calls) + 4
    with pytest.raises(ValidationError):  # the schemas are strict: an undocumented field fails
        _validate(document, "get", "/healthz", 200, {"status": "ok", "database_images": 1, "method": "x", "extra": 1})
    status, headers, page = _request(keyed, "GET", "/docs")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"/openapi.json" in page


def test_multipart_upload_answers_as_the_raw_body_and_gives_the_query_position(server, engine, kit):
    files = kit.database_files(engine.index)
    png = files[150].read_bytes()
    raw = server.post("/v1/locate?k=4", png, "image/png")[1]
    body, content_type = _multipart(png, "@0.00@15500.00@@@@@1550@@@@@@@@.png")
    status, answer = server.post("/v1/locate?k=4", body, content_type)
    assert status == 200 and [r["index"] for r in answer["results"]] == [r["index"] for r in raw["results"]]
    assert [r["score"] for r in answer["results"]] == [r["score"] for r in raw["results"]]
    assert answer["query"] == {"name": "@0.00@15500.00@@@@@1550@@@@@@@@.png", "utm_east": 0.0, "utm_north": 15500.0,
                               "utm_zone": None, "lat": None, "lon": None}  # fmt: skip
    for r in answer["results"]:
        assert r["error_m"] == pytest.approx(np.hypot(r["utm_east"] - 0.0, r["utm_north"] - 15500.0))
    assert "query" not in raw and "error_m" not in raw["results"][0]
    named_plainly, content_type = _multipart(png, "frame.png", field="upload")
    status, answer = server.post("/v1/locate?k=1", named_plainly, content_type)  # the only file, under another name
    assert status == 200 and "query" not in answer and answer["results"][0]["index"] == 150
    no_file = b'--other\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--other--\r\n'
    for bad, why in ((b"--nope\r\n\r\n", "cannot be parsed"), (no_file, "holds 0 files")):
        status, answer = server.post("/v1/locate", bad, "multipart/form-data; boundary=other")
        assert (status, answer["code"]) == (400, "bad_multipart") and why in answer["error"], answer
    status, answer = server.post("/v1/locate", body, "multipart/form-data")
    assert (status, answer["code"]) == (400, "bad_multipart") and "no boundary" in answer["error"]


def test_stage_histograms_every_request_counted_and_a_streams_timing_over_all_its_batches(engine, kit):
    running = kit.Server(create_app(engine, replace(kit.LIMITS, max_batch=2)))
    try:
        files = kit.database_files(engine.index)
        frames = [kit.decoded(files[i].read_bytes()) for i in range(60, 65)]
        status, body = running.post("/v1/locate/stream?k=1", kit.video_bytes(frames), "video/h264")
        assert status == 200 and body["timing_ms"]["batches"] == 3 and body["timing_ms"]["batch_size"] == 2
        for path in ("/nope", "/healthz"):
            running.request("GET", path)
        running.request("DELETE", "/v1/locate")
        text = running.request("GET", "/metrics")[2].decode()
    finally:
        running.stop()
    for stage in ("decode", "queue", "model", "search"):
        assert f'loqi_stage_duration_seconds_count{{stage="{stage}"}}' in text, stage
    model_batches = [line for line in text.splitlines() if line.startswith('loqi_stage_duration_seconds_count{stage="model"}')]
    assert model_batches == ['loqi_stage_duration_seconds_count{stage="model"} 3']
    for line in ('loqi_requests_total{endpoint="(unmatched)",status="404"} 1', 'loqi_requests_total{endpoint="/healthz",status="200"} 1',
                 'loqi_requests_total{endpoint="/v1/locate",status="405"} 1', 'loqi_request_errors_total{endpoint="(unmatched)",reason="http"} 1'):  # fmt: skip
        assert line in text, line


def test_a_lone_request_does_not_wait_for_company(engine, kit):
    """max_wait_ms of 3 s: a request alone goes at once (its queue time is far below it)."""
    running = kit.Server(create_app(engine, replace(kit.LIMITS, max_wait_ms=3000)))
    try:
        png = kit.database_files(engine.index)[3].read_bytes()
        queues = [running.post("/v1/locate?k=1", png, "image/png")[1]["timing_ms"]["queue"] for _ in range(3)]
    finally:
        running.stop()
    assert max(queues) < 1000, queues
