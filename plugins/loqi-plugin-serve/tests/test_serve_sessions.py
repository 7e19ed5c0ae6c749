"""Sequence sessions (issue 24, online): a robot's frames posted one by one (or as a segment) answer with their own
top-k and the sequence's, equal to the offline sequence matching of the same frames; sessions expire when idle,
are bounded in number and memory, and run side by side."""

from __future__ import annotations

import threading
import time

import numpy as np

from loqi_plugin_serve.app import create_app
from loqi_plugin_serve.sessions import SessionLimits

RATE = 1.0


def _frames(kit, part: int, start: int, count: int):
    """``count`` consecutive winter frames of the demo's traverse ``part``, in capture order."""
    from loqi_core import load_dataset

    queries = load_dataset("demo", "test").queries
    run = queries.sequences[part][start : start + count]
    return [kit.decoded(queries.paths[i].read_bytes()) for i in run]


def _offline(engine, frames, length: int, k: int):
    """loqi eval's sequence matching (``sequence_search``) of these frames as one query traverse."""
    from loqi_core.plugin import SequenceParams, Traverses, encode_batch, sequence_search

    desc = np.concatenate([encode_batch(engine.model, [f], engine.device, False) for f in frames])
    database = Traverses.of(engine.index.traverses(), engine.index.size)
    return sequence_search(np.asarray(engine.index.descriptors), desc, database, Traverses.of([list(range(len(frames)))], len(frames)),
                           SequenceParams(length), k, RATE)  # fmt: skip


def _post_frames(server, kit, sid: str, frames, k: int) -> list[dict]:
    answers = []
    for frame in frames:
        status, body = server.post(f"/v1/sessions/{sid}/locate?k={k}", kit.image_bytes(frame, "PNG"), "image/png")
        assert status == 200, body
        answers.append(body)
    return answers


def _assert_offline(answers: list[dict], offline, length: int) -> None:
    indices, scores = offline
    for n, answer in enumerate(answers):
        sequence = answer["sequence"]
        assert answer["frame"] == n and sequence["frames"] == min(length, n + 1)
        assert [r["index"] for r in sequence["results"]] == indices[n].tolist(), n
        np.testing.assert_allclose([r["sequence_score"] for r in sequence["results"]], scores[n], rtol=0, atol=1e-9)


def _session(server, **settings) -> str:
    import json

    status, _, data = server.request("POST", "/v1/sessions", json.dumps(settings).encode(), "application/json")
    assert status == 201, data
    return json.loads(data)["session"]


def test_a_sessions_answers_equal_the_offline_sequence_matching_of_the_same_frames(server, engine, kit):
    frames = _frames(kit, 0, 20, 12)
    sid = _session(server, length=5, rate=RATE)
    answers = _post_frames(server, kit, sid, frames, 4)
    _assert_offline(answers, _offline(engine, frames, 5, 4), 5)
    alone = [server.post("/v1/locate?k=4", kit.image_bytes(f, "PNG"), "image/png")[1]["results"] for f in frames]
    assert [a["results"] for a in answers] == alone  # the frame's own top-k: what /v1/locate answers
    status, state = server.get_json(f"/v1/sessions/{sid}")
    assert status == 200 and state["frames"] == 12 and state["sequence"]["length"] == 5
    assert state["memory_bytes"] == 5 * engine.index.size * 8
    assert server.request("DELETE", f"/v1/sessions/{sid}")[0] == 204
    status, body = server.post(f"/v1/sessions/{sid}/locate", kit.image_bytes(frames[0], "PNG"), "image/png")
    assert (status, body["code"]) == (404, "unknown_session") and "was ended" in body["error"]


def test_a_segment_posted_to_a_session_equals_its_frames_matched_offline(server, engine, kit):
    frames = _frames(kit, 1, 40, 8)
    sid = _session(server, length=4, rate=RATE)
    first, rest = kit.video_bytes(frames[:3]), kit.video_bytes(frames[3:])  # two segments, one after the other
    answers = []
    for data in (first, rest):
        status, body = server.post(f"/v1/sessions/{sid}/locate/stream?k=3", data, "video/h264")
        assert status == 200, body
        answers += body["frames"]
    decoded = kit.decoded_video(first, "h264") + kit.decoded_video(rest, "h264")
    _assert_offline(answers, _offline(engine, decoded, 4, 3), 4)
    assert body["timing_ms"]["sequence"] > 0


def test_concurrent_sessions_keep_their_own_sequences(server, engine, kit):
    streams = {name: _frames(kit, part, start, 8) for name, (part, start) in {"a": (0, 50), "b": (2, 10), "c": (1, 70)}.items()}
    sids = {name: _session(server, length=3, rate=RATE) for name in streams}
    answers: dict[str, list] = {}
    barrier = threading.Barrier(len(streams))

    def robot(name: str) -> None:
        barrier.wait()
        answers[name] = _post_frames(server, kit, sids[name], streams[name], 3)

    threads = [threading.Thread(target=robot, args=(name,)) for name in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for name, frames in streams.items():
        _assert_offline(answers[name], _offline(engine, frames, 3, 3), 3)


def test_sessions_expire_when_idle_and_are_bounded_in_number_and_memory(engine, kit):
    n = engine.index.size
    limits = SessionLimits(max_sessions=2, idle_s=2.0, memory_bytes=8 * n * 8, max_length=6, default_length=4)
    running = kit.Server(create_app(engine, kit.LIMITS, session_limits=limits))
    png = kit.image_bytes(_frames(kit, 0, 0, 1)[0], "PNG")
    try:
        first = _session(running)  # 4 frames × 300 images × 8 bytes
        status, body = running.post("/v1/sessions", b'{"length": 5}', "application/json")  # 4 + 5 > 8 rows
        assert (status, body["code"]) == (503, "too_many_sessions") and "this one needs" in body["error"]
        second = _session(running, length=2)
        status, body = running.post("/v1/sessions", b'{"length": 1}', "application/json")  # a third: over the count
        assert (status, body["code"]) == (503, "too_many_sessions") and "at most 2" in body["error"]
        status, body = running.post("/v1/sessions", b'{"length": 7}', "application/json")
        assert (status, body["code"]) == (400, "bad_session") and "between 1 and 6" in body["error"]
        for _ in range(5):  # the first session stays alive while frames come (a gap under 2 s each)
            time.sleep(0.6)
            assert running.post(f"/v1/sessions/{first}/locate?k=1", png, "image/png")[0] == 200
        status, body = running.post(f"/v1/sessions/{second}/locate?k=1", png, "image/png")  # idle for over 3 s
        assert (status, body["code"]) == (404, "unknown_session") and "expired after 2 s" in body["error"]
        assert running.post("/v1/sessions", b"{}", "application/json")[0] == 201  # its memory and place are free
        time.sleep(3.5)  # nobody posts: the sweeper releases them
        metrics = running.request("GET", "/metrics")[2].decode()
        assert "loqi_sessions 0" in metrics and 'loqi_sessions_total{event="expired"} 3' in metrics
        assert 'loqi_sessions_total{event="refused"} 2' in metrics
    finally:
        running.stop()


def test_bad_session_settings_and_an_index_without_capture_order(server, engine, kit, tmp_path):
    from loqi_plugin_serve.engine import load_engine
    from loqi_plugin_serve.index import build_index

    for body, why in ((b"[1]", "JSON object"), (b"{nope", "not JSON"), (b'{"speed": 2}', "unknown session setting(s) speed"),
                      (b'{"length": 2.5}', "length must be a whole number"), (b'{"rate": -1}', "rate"),
                      (b'{"v_min": 0.1, "v_max": 50, "v_step": 0.1}', "velocities"), (b'{"window": 1}', "window")):  # fmt: skip
        status, answer = server.post("/v1/sessions", body, "application/json")
        assert (status, answer["code"]) == (400, "bad_session") and why in answer["error"], (body, answer)
    from PIL import Image

    (tmp_path / "map").mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 48, 3), 40 * i, np.uint8)).save(tmp_path / "map" / f"{i}.png")
    config = kit.index_config(tmp_path / "cache", **{"model.weights": "random", "seed": 3})
    index = build_index(config, None, tmp_path / "index", database=tmp_path / "map", thumbnails=False, echo=lambda _: None)
    running = kit.Server(create_app(load_engine(index, device="cpu"), kit.LIMITS))
    try:
        status, answer = running.post("/v1/sessions", b"{}", "application/json")
        assert (status, answer["code"]) == (409, "no_capture_order") and "--order" in answer["error"]
    finally:
        running.stop()


def test_a_session_frame_named_with_its_position_gives_each_sequence_answer_its_error(server, engine, kit):
    """A frame uploaded as multipart with a gmberton name: the sequence's answers carry error_m like the frame's own."""
    boundary = "loqi-test-boundary"
    frame = kit.image_bytes(_frames(kit, 0, 20, 1)[0], "PNG")
    name = "@0.00@15500.00@@@@@1550@@@@@@@@.png"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + frame + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    sid = _session(server, length=3, rate=RATE)
    status, answer = server.post(f"/v1/sessions/{sid}/locate?k=3", body, f"multipart/form-data; boundary={boundary}")
    assert status == 200, answer
    for r in answer["sequence"]["results"] + answer["results"]:
        assert r["error_m"] == np.hypot(r["utm_east"] - 0.0, r["utm_north"] - 15500.0)
    status, plain = server.post(f"/v1/sessions/{sid}/locate?k=3", frame, "image/png")
    assert status == 200 and "error_m" not in plain["sequence"]["results"][0]
