"""Load test of `loqi serve`: throughput and p50/p95/p99 latency for 1, 8 and 64 concurrent clients, with and
without dynamic micro-batching, side by side in one run.

Run by hand (never in unit tests)::

    python benchmarks/serve_load.py                              # demo index (built if needed), CPU, defaults
    python benchmarks/serve_load.py --device cuda --threads 8    # the same on a GPU machine
    python benchmarks/serve_load.py --index indexes/city --requests 500 --json out.json

Several servers (`loqi serve` subprocesses, 127.0.0.1 only, port 0) share the index: one with ``--max-batch 1``
(batching off: every request is its own model call) and one per ``--max-batch B`` in ``--batch-sizes`` (with
``--max-wait-ms W``). For each number of clients they are measured one after the other, so all see the same
machine load. Each client thread keeps
one HTTP connection and posts degraded frames (the demo's winter queries as JPEG quality 30) to
``/v1/locate?k=5`` until the point's request budget or time budget is spent. Bounded: at most ``--requests``
requests and ``--seconds`` seconds per point; nothing leaves the loopback interface.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"


def demo_index(folder: Path, device: str) -> Path:
    """The demo database encoded with lite0-gem (ImageNet weights), via the eval cache."""
    from loqi_core.config import resolve_run_config
    from loqi_plugin_serve.index import build_index

    out = folder / "demo-index"
    config = resolve_run_config(None, {"model.method": "lite0-gem", "degrade": "none", "device": device,
                                       "eval.num_workers": 0})  # fmt: skip
    return build_index(config, "demo", out, thumbnails=False)


def query_bodies(n: int, quality: int) -> list[bytes]:
    """The demo's winter queries as the JPEG bytes a robot would send."""
    from PIL import Image

    from loqi_core.data.datasets import load_dataset

    bodies = []
    for path in load_dataset("demo", "test").queries.paths[:n]:
        buf = io.BytesIO()
        with Image.open(path) as img:
            img.convert("RGB").save(buf, format="JPEG", quality=quality)
        bodies.append(buf.getvalue())
    return bodies


class ServerProcess:
    """`loqi serve INDEX --port 0` in a subprocess; the URL it prints tells the port."""

    def __init__(self, index: Path, args: list[str]) -> None:
        loqi = Path(sys.executable).with_name("loqi")
        cmd = [str(loqi), "serve", str(index), "--host", HOST, "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if " on http://" in line:
                self.port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
                break
        else:
            raise RuntimeError(f"loqi serve did not start: {self.proc.stderr.read()}")  # type: ignore[union-attr]

    def metric(self, name: str) -> float:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")), 0.0)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def load_point(port: int, bodies: list[bytes], clients: int, max_requests: int, max_seconds: float) -> dict:
    """``clients`` threads post until ``max_requests`` are done or ``max_seconds`` pass; latencies in ms."""
    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    errors = [0]
    deadline = time.perf_counter() + max_seconds
    barrier = threading.Barrier(clients + 1)

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=max_seconds + 60)
        barrier.wait()
        while time.perf_counter() < deadline:
            with lock:
                if issued[0] >= max_requests:
                    break
                n = issued[0]
                issued[0] += 1
            t0 = time.perf_counter()
            conn.request("POST", "/v1/locate?k=5", body=bodies[n % len(bodies)], headers={"Content-Type": "image/jpeg"})
            response = conn.getresponse()
            response.read()
            with lock:
                if response.status == 200:
                    latencies.append((time.perf_counter() - t0) * 1000)
                else:
                    errors[0] += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.asarray(latencies)
    return {
        "clients": clients, "requests": len(lat), "errors": errors[0], "seconds": wall,
        "throughput": len(lat) / wall, "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
        "p99": float(np.percentile(lat, 99)),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, help="An index directory (default: build the demo index in a temp dir).")
    parser.add_argument("--clients", default="1,8,64", help="Concurrent clients per point, comma-separated.")
    parser.add_argument("--requests", type=int, default=200, help="Requests per point (at most).")
    parser.add_argument("--seconds", type=float, default=60.0, help="Seconds per point (at most).")
    parser.add_argument("--batch-sizes", default="8,32", help="--max-batch of the batching servers, comma-separated.")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="The batching servers' --max-wait-ms.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server.")
    parser.add_argument("--quality", type=int, default=30, help="JPEG quality of the query frames.")
    parser.add_argument("--json", type=Path, help="Also write the results as JSON.")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        index = args.index or demo_index(Path(tmp), args.device)
        bodies = query_bodies(300, args.quality)
        common = ["--device", args.device, "--threads", str(args.threads), "--max-k", "5"]
        modes = {"off": ServerProcess(index, [*common, "--max-batch", "1", "--max-wait-ms", "0"])}
        for b in args.batch_sizes.split(","):
            modes[f"on, max {b}"] = ServerProcess(index, [*common, "--max-batch", b, "--max-wait-ms", str(args.max_wait_ms)])
        rows = []
        try:
            for mode, server in modes.items():  # warm-up: first calls allocate
                load_point(server.port, bodies, 1, 5, 30)
            for clients in (int(c) for c in args.clients.split(",")):
                for mode, server in modes.items():
                    before = server.metric("loqi_batch_size_count"), server.metric("loqi_images_total")
                    row = load_point(server.port, bodies, clients, args.requests, args.seconds)
                    batches = server.metric("loqi_batch_size_count") - before[0]
                    row |= {"batching": mode, "mean_batch": (server.metric("loqi_images_total") - before[1]) / max(1, batches)}
                    rows.append(row)
                    print(f"clients {clients:3d}  batching {mode:3s}  {row['requests']:4d} requests  "
                          f"{row['throughput']:7.1f} req/s  p50 {row['p50']:7.1f}  p95 {row['p95']:7.1f}  "
                          f"p99 {row['p99']:7.1f} ms  mean batch {row['mean_batch']:.1f}  errors {row['errors']}", flush=True)  # fmt: skip
        finally:
            for server in modes.values():
                server.stop()

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device.startswith("cuda") else "CPU"
    header = (f"{platform.machine()}, {os.cpu_count()} CPU threads visible, {gpu}, torch {torch.__version__}, "
              f"{args.threads} torch thread(s) per server; index {'demo (lite0-gem, 300 images)' if not args.index else args.index}; "
              f"batching on: --max-wait-ms {args.max_wait_ms:g}; {args.requests} requests or {args.seconds:g} s per row")  # fmt: skip
    lines = [header, "", "| clients | micro-batching | requests | throughput (req/s) | p50 (ms) | p95 (ms) | p99 (ms) | mean batch |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['clients']} | {r['batching']} | {r['requests']} | {r['throughput']:.1f} | {r['p50']:.0f} | "
                     f"{r['p95']:.0f} | {r['p99']:.0f} | {r['mean_batch']:.1f} |")  # fmt: skip
    print("\n" + "\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"setup": header, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
