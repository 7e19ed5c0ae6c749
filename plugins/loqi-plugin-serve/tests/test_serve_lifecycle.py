"""Micro-batching, per-request timeouts, and the real command: `loqi serve` on port 0, answering, then a SIGTERM
that lets the request in flight finish before the process exits cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from loqi_plugin_serve.app import Limits, create_app
from loqi_plugin_serve.batcher import MicroBatcher
from loqi_plugin_serve.index import open_index


def _run_batcher(batcher: MicroBatcher, jobs) -> list:
    async def main():
        await batcher.start()
        try:
            return await jobs(batcher)
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_concurrent_submissions_share_batches_of_at_most_max_batch():
    sizes = []

    def run(images, ks):
        sizes.append(len(images))
        time.sleep(0.01)
        return [img * 10 + k for img, k in zip(images, ks)], {"model_ms": 1.0, "search_ms": 1.0}

    async def jobs(b):
        return await asyncio.gather(*(b.submit([n, n + 100], k=n % 3) for n in range(10)))

    answers = _run_batcher(MicroBatcher(run, max_batch=4, max_wait_ms=50), jobs)
    for n, pair in enumerate(answers):
        assert [value for value, _ in pair] == [n * 10 + n % 3, (n + 100) * 10 + n % 3]
        assert all(1 <= timing["batch_size"] <= 4 and timing["queue_ms"] >= 0 for _, timing in pair)
    assert sum(sizes) == 20 and max(sizes) == 4 and len(sizes) == 5


def test_max_batch_one_turns_batching_off_and_max_wait_is_honoured():
    sizes = []

    def run(images, ks):
        sizes.append(len(images))
        return list(images), {"model_ms": 0.0, "search_ms": 0.0}

    async def jobs(b):
        return await asyncio.gather(*(b.submit([n], 1) for n in range(6)))

    _run_batcher(MicroBatcher(run, max_batch=1, max_wait_ms=1000), jobs)
    assert sizes == [1] * 6

    async def alone(b):
        start = time.perf_counter()
        await b.submit([0], 1)
        return time.perf_counter() - start

    assert _run_batcher(MicroBatcher(run, max_batch=8, max_wait_ms=5000), alone) < 1  # nothing on its way: no wait

    async def company_on_its_way(b):
        b.announce()  # another request is still reading its body
        start = time.perf_counter()
        first = asyncio.ensure_future(b.submit([1], 1))
        await asyncio.sleep(0.3)
        second = await b.submit([2], 1, announced=True)
        return time.perf_counter() - start, [(await first)[0][1]["batch_size"], second[0][1]["batch_size"]]

    sizes.clear()
    waited, batch_sizes = _run_batcher(MicroBatcher(run, max_batch=8, max_wait_ms=5000), company_on_its_way)
    assert 0.29 <= waited < 4 and batch_sizes == [2, 2] and sizes == [2]  # waited for it, not for max_wait

    async def company_that_never_comes(b):
        b.announce()
        start = time.perf_counter()
        first = asyncio.ensure_future(b.submit([1], 1))
        await asyncio.sleep(0.3)
        b.withdraw()  # its body was bad: the batch goes at once
        await first
        return time.perf_counter() - start

    assert 0.29 <= _run_batcher(MicroBatcher(run, max_batch=8, max_wait_ms=5000), company_that_never_comes) < 4

    async def until_max_wait(b):
        b.announce()
        start = time.perf_counter()
        await b.submit([1], 1)
        return time.perf_counter() - start

    assert 0.29 <= _run_batcher(MicroBatcher(run, max_batch=8, max_wait_ms=300), until_max_wait) < 4

    async def full(b):
        start = time.perf_counter()
        await asyncio.gather(b.submit([0], 1), b.submit([1], 1))
        return time.perf_counter() - start

    assert _run_batcher(MicroBatcher(run, max_batch=2, max_wait_ms=20_000), full) < 10  # a full batch goes at once


def test_a_failing_batch_fails_its_requests_only():
    def run(images, ks):
        if 13 in images:
            raise RuntimeError("model exploded")
        return list(images), {"model_ms": 0.0, "search_ms": 0.0}

    async def jobs(b):
        with pytest.raises(RuntimeError, match="model exploded"):
            await b.submit([13], 1)
        return await b.submit([7], 1)

    [(value, _)] = _run_batcher(MicroBatcher(run, max_batch=1, max_wait_ms=0), jobs)
    assert value == 7


class _SlowModel:
    """The engine, with a model that takes 5 s per batch once ``armed`` (after the server's warm-up)."""

    def __init__(self, engine) -> None:
        self.engine, self.armed = engine, False

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def locate(self, *args, **kw):
        if self.armed:
            time.sleep(5)
        return self.engine.locate(*args, **kw)


def test_request_timeouts_are_503_when_busy_and_408_for_a_slow_body(engine, kit):
    png = kit.database_files(engine.index)[3].read_bytes()
    model = _SlowModel(engine)
    slow = kit.Server(create_app(model, Limits(timeout_s=1.0, max_batch=64, max_wait_ms=5)))
    model.armed = True
    try:
        status, body = slow.post("/v1/locate", png, "image/png")  # its batch takes 5 s
        assert (status, body["code"]) == (503, "timeout") and "1 s" in body["error"]
        with socket.create_connection((kit.HOST, slow.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/locate HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
                         + png[:10])  # fmt: skip
            reply = b""
            while not reply.endswith(b"}"):  # headers, then the JSON body
                chunk = sock.recv(65536)
                assert chunk, reply
                reply += chunk
            reply = reply.decode()
        assert reply.startswith("HTTP/1.1 408") and '"code":"body_timeout"' in reply
        time.sleep(5)  # the batch of the abandoned request runs and is discarded: the server stays sound
        assert slow.get_json("/healthz")[0] == 200
        metrics = slow.request("GET", "/metrics")[2].decode()
        assert 'reason="timeout"} 1' in metrics and 'reason="body_timeout"} 1' in metrics
    finally:
        slow.stop()


def _read_url(proc: subprocess.Popen, timeout: float) -> str:
    """The URL `loqi serve` prints once it listens (read on a thread: readline has no timeout)."""
    found: list[str] = []

    def read():
        for line in proc.stdout:
            if " on http://" in line:
                found.append(line.rsplit(" on ", 1)[1].strip())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert found, f"no URL printed; stderr: {proc.stderr.read() if proc.poll() is not None else '(still running)'}"
    return found[0]


@pytest.mark.slow
def test_loqi_serve_answers_then_sigterm_lets_the_request_in_flight_finish(demo_index, kit):
    loqi = Path(sys.executable).with_name("loqi")
    cmd = [str(loqi), "serve", str(demo_index), "--host", "127.0.0.1", "--port", "0", "--device", "cpu", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        url = _read_url(proc, 120)
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        assert host == "127.0.0.1"
        png = kit.database_files(open_index(demo_index))[9].read_bytes()
        with socket.create_connection((host, int(port)), timeout=120) as sock:  # a client on a slow link
            sock.sendall(b"POST /v1/locate?k=2 HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         + f"Content-Length: {len(png)}\r\nX-Request-ID: slow-client-1\r\n\r\n".encode() + png[:100])  # fmt: skip
            time.sleep(0.7)
            proc.send_signal(signal.SIGTERM)  # while the body is still on its way
            time.sleep(1.0)
            sock.sendall(png[100:])
            reply = b""
            while not reply.endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, reply
                reply += chunk
        head, body = reply.decode().split("\r\n\r\n", 1)
        assert head.startswith("HTTP/1.1 200") and "x-request-id: slow-client-1" in head.lower()
        assert json.loads(body)["results"][0]["index"] == 9
        # uvicorn re-raises the signal once it has shut down (recent versions), so the parent sees a SIGTERM exit
        assert proc.wait(60) in (0, -signal.SIGTERM)
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=5).close()
        stderr = proc.stderr.read()
        assert "Traceback" not in stderr, stderr
        assert '"POST /v1/locate" 200' in stderr and "id=slow-client-1" in stderr  # the access log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
