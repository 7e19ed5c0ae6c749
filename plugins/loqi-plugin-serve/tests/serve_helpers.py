"""Test helpers of loqi-plugin-serve: a server on an ephemeral loopback port in a thread, a plain HTTP client,
image and video bytes, and the answers the eval engine's own encoder and search give (loaded by conftest.py and
the test modules through the ``kit`` fixture)."""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
from pathlib import Path

import numpy as np

from loqi_plugin_serve.app import Limits
from loqi_plugin_serve.server import bind, make_server

HOST = "127.0.0.1"
LIMITS = Limits(max_body_bytes=1 << 20, max_pixels=4_000_000, max_model_pixels=200_000, max_frames=16,
                max_segment_pixels=16 * 64 * 32, max_k=50, timeout_s=60.0, max_batch=16, max_wait_ms=20.0)  # fmt: skip
"""The test server's limits: 16 demo frames (64×32) per segment at most; 200 000 pixels in the model's preprocessing
(a demo frame, upscaled to a short side of 128, is 256×128)."""


def index_config(cache_dir: Path, **overrides):
    from loqi_core.plugin import resolve_run_config

    return resolve_run_config(None, {"model.method": "lite0-gem", "degrade": "none", "device": "cpu",
                                     "eval.num_workers": 0, "eval.cache_dir": str(cache_dir), **overrides})  # fmt: skip


class Server:
    """uvicorn serving an app on 127.0.0.1:<free port> in a thread; ``stop()`` is the same graceful exit as SIGTERM."""

    def __init__(self, app, graceful_s: float = 10.0) -> None:
        self.app = app
        sock = bind(HOST, 0)
        self.port = sock.getsockname()[1]
        self.server = make_server(app, app.state.limits, graceful_s)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                timeout: float = 120.0) -> tuple[int, dict, bytes]:  # fmt: skip
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": content_type} if content_type else {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def post(self, path: str, body: bytes, content_type: str | None) -> tuple[int, dict]:
        status, _, data = self.request("POST", path, body, content_type)
        return status, json.loads(data)

    def get_json(self, path: str) -> tuple[int, dict]:
        status, _, data = self.request("GET", path)
        return status, json.loads(data)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive()


def image_bytes(tensor, fmt: str, **save) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(tensor.permute(1, 2, 0).numpy()).save(buf, format=fmt, **save)
    return buf.getvalue()


def decoded(data: bytes):
    """What the server's decoder makes of image bytes, decoded independently with Pillow."""
    import torch
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


def expected(engine, images, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The eval engine's answer: its encode_batch (one image at a time) and its exact flat search."""
    from loqi_core.plugin import encode_batch, search

    desc = np.concatenate([encode_batch(engine.model, [img], engine.device, False) for img in images])
    return search(np.asarray(engine.index.descriptors), desc, k, "flat")


def video_bytes(images, codec: str = "libx264", fmt: str = "h264", qp: int = 12) -> bytes:
    """uint8 RGB frames encoded in memory with PyAV at a constant QP: H.264 or HEVC, raw (Annex B) or in a container."""
    import av

    height, width = images[0].shape[-2:]
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"x265-params": f"qp={qp}:log-level=error"} if codec == "libx265" else {"qp": str(qp)}
        for img in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy()), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def decoded_video(data: bytes, fmt: str):
    """The frames of a segment, decoded independently with PyAV, in display order."""
    import av
    import torch

    with av.open(io.BytesIO(data), format=fmt) as container:
        return [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1) for f in container.decode(video=0)]


def database_files(index) -> list[Path]:
    """The image files behind an index's database entries, in index order (checked against names.json)."""
    from loqi_core import load_dataset

    paths = load_dataset(index.meta["dataset"], "test").database.paths
    assert [p.as_posix().endswith(n) for n, p in zip(index.names, paths)] == [True] * len(paths)
    return paths
