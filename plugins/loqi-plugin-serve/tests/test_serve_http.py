"""The HTTP server on an ephemeral loopback port: every endpoint, every bad input (a 4xx JSON, the server still
healthy after it), video segments, 64 concurrent clients, and answers equal to the eval engine's own search."""

from __future__ import annotations

import json
import re
import struct
import threading
import zlib

import numpy as np
import pytest


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _assert_same(results, idx, scores):
    assert [r["index"] for r in results] == idx.tolist()
    np.testing.assert_allclose([r["score"] for r in results], scores, atol=1e-4)


def test_health_info_page_and_thumbnails(server, engine):
    status, body = server.get_json("/healthz")
    assert status == 200 and body == {"status": "ok", "database_images": 300, "method": "lite0-gem"}
    status, info = server.get_json("/v1/info")
    assert status == 200 and info["dataset"] == "demo" and info["dim"] == 192 and info["search"]["backend"] == "flat"
    status, headers, page = server.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"/v1/locate" in page
    status, headers, thumb = server.request("GET", "/v1/thumbnail/7")
    assert status == 200 and headers["content-type"] == "image/jpeg" and thumb[:2] == b"\xff\xd8"
    status, body = server.get_json("/v1/thumbnail/300")
    assert status == 404 and "no database image 300" in body["error"]


def test_locate_a_database_image_finds_itself(server, engine, kit):
    files = kit.database_files(engine.index)
    status, body = server.post("/v1/locate?k=5", files[42].read_bytes(), "image/png")
    assert status == 200, body
    results = body["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    top = results[0]
    assert top["index"] == 42 and top["name"] == engine.index.names[42] and top["score"] == pytest.approx(1.0, abs=1e-5)
    assert (top["utm_east"], top["utm_north"]) == tuple(engine.index.utm[42])
    assert all(r["distance"] == pytest.approx(np.sqrt(max(0, 2 - 2 * r["score"])), abs=1e-6) for r in results)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert set(body["timing_ms"]) == {"read", "decode", "queue", "model", "search", "total", "batch_size", "batches"}


@pytest.mark.parametrize(("fmt", "content_type", "save"), [("JPEG", "image/jpeg", {"quality": 30}), ("WEBP", "image/webp", {"quality": 50}),
                                                           ("PNG", "application/octet-stream", {})])  # fmt: skip
def test_locate_equals_the_eval_engine(server, engine, kit, fmt, content_type, save):
    """A degraded query (a winter frame, re-encoded): the server's top-k is what encode_batch + exact search give."""
    from loqi_core import load_dataset

    query = load_dataset("demo", "test").queries.paths[123]
    data = kit.image_bytes(kit.decoded(query.read_bytes()), fmt, **save)
    status, body = server.post("/v1/locate?k=7", data, content_type)
    assert status == 200, body
    idx, scores = kit.expected(engine, [kit.decoded(data)], 7)
    _assert_same(body["results"], idx[0], scores[0])


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width×height but carries almost no data: the classic decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _bad_inputs(kit, png: bytes):
    jpeg = kit.image_bytes(kit.decoded(png), "JPEG", quality=90)
    gif = kit.image_bytes(kit.decoded(png), "GIF")
    return {
        "non-image bytes": ("/v1/locate", b"this is not an image at all" * 10, "image/jpeg", 400, "not_an_image"),
        "truncated JPEG": ("/v1/locate", jpeg[: len(jpeg) // 2], "image/jpeg", 400, "corrupt_image"),
        "decompression bomb": ("/v1/locate", _png_header_only(5000, 5000), "image/png", 413, "too_many_pixels"),
        "bomb beyond Pillow's own limit": ("/v1/locate", _png_header_only(30000, 30000), "image/png", 413, "too_many_pixels"),
        "empty body": ("/v1/locate", b"", "image/png", 400, "empty_body"),
        "wrong content type": ("/v1/locate", png, "text/plain", 415, "content_type"),
        "no content type": ("/v1/locate", png, None, 415, "content_type"),
        "GIF": ("/v1/locate", gif, "image/gif", 415, "content_type"),
        "GIF sent as bytes": ("/v1/locate", gif, "application/octet-stream", 400, "not_an_image"),
        "body too large": ("/v1/locate", b"\xff\xd8" + b"\x00" * (1 << 20), "image/jpeg", 413, "body_too_large"),
        "k not a number": ("/v1/locate?k=five", png, "image/png", 400, "bad_k"),
        "k zero": ("/v1/locate?k=0", png, "image/png", 400, "bad_k"),
        "k above the limit": ("/v1/locate?k=51", png, "image/png", 400, "bad_k"),
        "image to the stream endpoint": ("/v1/locate/stream", png, "application/octet-stream", 400, "not_a_video"),
        "garbage as H.264": ("/v1/locate/stream", b"\x00\x00\x00\x01\x67" + bytes(range(256)) * 4, "video/h264", 400, "corrupt_video"),
        "empty segment": ("/v1/locate/stream", b"", "video/h264", 400, "empty_body"),
        "image type to the stream endpoint": ("/v1/locate/stream", png, "image/png", 415, "content_type"),
    }  # fmt: skip


def test_every_bad_input_gets_a_4xx_with_the_reason_and_the_server_stays_up(server, engine, kit):
    png = kit.database_files(engine.index)[0].read_bytes()
    before = server.request("GET", "/metrics")[2].decode()
    cases = _bad_inputs(kit, png)
    for what, (path, body, content_type, status, code) in cases.items():
        got, answer = server.post(path, body, content_type)
        assert (got, answer.get("code")) == (status, code), f"{what}: {got} {answer}"
        assert answer["status"] == status and len(answer["error"]) > 10, what
    assert "5000×5000" in server.post("/v1/locate", _png_header_only(5000, 5000), "image/png")[1]["error"]
    for method, path, status in (("GET", "/nope", 404), ("GET", "/v1/locate", 405)):
        got, _, data = server.request(method, path)
        assert got == status and json.loads(data)["status"] == status
    assert server.get_json("/healthz")[0] == 200
    assert server.post("/v1/locate", png, "image/png")[0] == 200
    after = server.request("GET", "/metrics")[2].decode()
    for what, (path, _, _, status, code) in cases.items():
        key = f'loqi_request_errors_total{{endpoint="{path.split("?")[0]}",reason="{code}"}}'
        assert _metric(after, key) > _metric(before, key), what
    assert 'status="500"' not in after


def test_video_segments_get_one_result_list_per_frame(server, engine, kit):
    files = kit.database_files(engine.index)
    frames = [kit.decoded(files[i].read_bytes()) for i in range(100, 106)]
    for codec, fmt, content_type in (("libx264", "h264", "video/h264"), ("libx265", "hevc", "video/hevc"),
                                     ("libx264", "mp4", "application/octet-stream"), ("libx265", "mpegts", "video/mp2t")):  # fmt: skip
        data = kit.video_bytes(frames, codec, fmt)
        status, body = server.post("/v1/locate/stream?k=3", data, content_type)
        assert status == 200, (fmt, body)
        assert [f["frame"] for f in body["frames"]] == list(range(6))
        idx, scores = kit.expected(engine, kit.decoded_video(data, fmt), 3)
        for frame, i, s in zip(body["frames"], idx, scores):
            _assert_same(frame["results"], i, s)
        north = [f["results"][0]["utm_north"] - engine.index.utm[100 + n][1] for n, f in enumerate(body["frames"])]
        assert all(abs(d) <= 25 for d in north), (fmt, north)  # each frame found at its own place: frames stay aligned
    too_long = kit.video_bytes(frames * 3)  # 18 frames, the test server takes 16
    status, body = server.post("/v1/locate/stream", too_long, "video/h264")
    assert (status, body["code"]) == (413, "too_many_frames")
    large = [f.repeat_interleave(4, 1).repeat_interleave(4, 2) for f in frames[:2]]  # 2 frames of 256×128: 32 demo frames
    status, body = server.post("/v1/locate/stream", kit.video_bytes(large), "video/h264")
    assert (status, body["code"]) == (413, "too_many_pixels") and "pixels in all" in body["error"]


def test_64_concurrent_clients_get_64_correct_answers(server, engine, kit):
    files = kit.database_files(engine.index)
    picks = list(range(0, 300, 300 // 64))[:64]
    bodies = [files[i].read_bytes() for i in picks]
    answers: list = [None] * 64
    barrier = threading.Barrier(64)

    def client(n: int) -> None:
        barrier.wait()
        answers[n] = server.post("/v1/locate?k=3", bodies[n], "image/png")

    before = server.request("GET", "/metrics")[2].decode()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    idx, scores = kit.expected(engine, [kit.decoded(b) for b in bodies], 3)
    for n, (status, body) in enumerate(answers):
        assert status == 200, body
        assert body["results"][0]["index"] == picks[n]
        _assert_same(body["results"], idx[n], scores[n])
    after = server.request("GET", "/metrics")[2].decode()
    batches = _metric(after, "loqi_batch_size_count") - _metric(before, "loqi_batch_size_count")
    images = _metric(after, "loqi_images_total") - _metric(before, "loqi_images_total")
    assert images == 64 and batches < 64, "concurrent requests must share model calls"
    assert max(b["timing_ms"]["batch_size"] for _, b in answers) > 1


def test_metrics_are_prometheus_text(server, engine, kit):
    server.post("/v1/locate", kit.database_files(engine.index)[1].read_bytes(), "image/png")
    status, headers, data = server.request("GET", "/metrics")
    text = data.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    for name, kind in (("loqi_requests_total", "counter"), ("loqi_request_errors_total", "counter"),
                       ("loqi_request_duration_seconds", "histogram"), ("loqi_batch_size", "histogram")):  # fmt: skip
        assert f"# TYPE {name} {kind}" in text
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9.e+-]+$')
    for line in text.splitlines():
        assert line.startswith("# ") or sample.match(line), line
    assert _metric(text, 'loqi_requests_total{endpoint="/v1/locate",status="200"}') >= 1
    count = _metric(text, 'loqi_request_duration_seconds_count{endpoint="/v1/locate"}')
    assert _metric(text, 'loqi_request_duration_seconds_bucket{endpoint="/v1/locate",le="+Inf"}') == count >= 1
