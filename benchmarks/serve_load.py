"""Load test of `loqi serve`: throughput and p50/p95/p99 latency for 1, 8 and 64 concurrent clients, with and
without dynamic micro-batching, side by side in one run; with ``--attacks``, good clients' latency and errors while
the server is attacked; with ``--deployment``, what a deployment's requests cost.

Run by hand (never in unit tests)::

    python benchmarks/serve_load.py                              # demo index (built if needed), CPU, defaults
    python benchmarks/serve_load.py --device cuda --threads 8    # the same on a GPU machine
    python benchmarks/serve_load.py --index indexes/city --requests 500 --json out.json
    python benchmarks/serve_load.py --attacks                    # good requests under attack (issue 22)
    python benchmarks/serve_load.py --deployment                 # keys, the page's requests, sessions (issue 23)

``--deployment`` starts servers with the defaults (micro-batching 8 on a CPU) and, for 1 and 8 clients
(``--deployment-clients``), measures side by side: raw JPEG bodies to ``/v1/locate`` without keys and with
``--api-key-file`` (each request with its bearer token); the page's requests (the JPEG uploaded as
multipart/form-data, then its ``k`` thumbnails fetched on the same connection, with the key: one row is one query
as the page makes it); and one sequence session per client (``--sequence-length`` frames), each frame posted to
``/v1/sessions/ID/locate`` in capture order (the online path's per-frame latency). A last row interleaves one
client's requests with in-process ``loqi_core.encode()`` of the same JPEG files (one image per call, no cache, no
loader workers, the same torch threads) and gives the server's rate as a share of the in-process rate.

``--attacks`` starts one server (the defaults: micro-batching 8 on a CPU) and measures ``--attack-clients`` good
clients, each row side by side with the same server: with no attack; while ``--attackers`` connections post a
60 kB PNG of 20000×1 pixels over and over (which preprocessing would upscale to 128×2,560,000); and while
``--slow-connections`` connections each send a request header a byte every second and never finish it
(slowloris), reopened as the server closes them. Each row gives the good requests' p50/p95 and errors, what the
attack got back, and the server's peak resident memory. ``--server-nofile N`` limits the server's file
descriptors and ``--server-args`` passes it more flags (``"--header-timeout 100000 --max-idle-connections
100000"`` lifts the bounds on slow clients), to see what the bounds are for.

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
    """The demo database encoded with lite0-gem (ImageNet weights), via the eval cache, with thumbnails."""
    from loqi_core.config import resolve_run_config
    from loqi_plugin_serve.index import build_index

    out = folder / "demo-index"
    config = resolve_run_config(None, {"model.method": "lite0-gem", "degrade": "none", "device": device,
                                       "eval.num_workers": 0})  # fmt: skip
    return build_index(config, "demo", out)


def query_order() -> list[int]:
    """The demo's queries in capture order (its traverses one after the other), as a robot sends them."""
    from loqi_core.data.datasets import load_dataset

    return [i for run in load_dataset("demo", "test").queries.sequences for i in run]


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

    def __init__(self, index: Path, args: list[str], nofile: int | None = None) -> None:
        loqi = Path(sys.executable).with_name("loqi")
        cmd = [str(loqi), "serve", str(index), "--host", HOST, "--port", "0", *args]
        self.log = tempfile.TemporaryFile()  # not a pipe: a server that logs much would block on a full one

        def limit() -> None:  # the server's own file-descriptor limit (ulimit -n), when asked for
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     preexec_fn=limit if nofile else None)  # fmt: skip
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if " on http://" in line:
                self.port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
                break
        else:
            self.log.seek(0)
            raise RuntimeError(f"loqi serve did not start: {self.log.read().decode()}")

    def metric(self, name: str) -> float:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")), 0.0)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def post_jpeg(conn: http.client.HTTPConnection, body: bytes, headers: dict | None = None) -> int:
    """One raw JPEG to /v1/locate?k=5; the HTTP status."""
    conn.request("POST", "/v1/locate?k=5", body=body, headers={"Content-Type": "image/jpeg", **(headers or {})})
    response = conn.getresponse()
    response.read()
    return response.status


def page_query(conn: http.client.HTTPConnection, body: bytes, headers: dict) -> int:
    """What the page does for one query: the JPEG uploaded as a form, then the answer's thumbnails."""
    boundary = "----loqibench"
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="frame.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    conn.request("POST", "/v1/locate?k=5", body=form, headers={"Content-Type": f"multipart/form-data; boundary={boundary}", **headers})
    response = conn.getresponse()
    answer = response.read()
    if response.status != 200:
        return response.status
    for result in json.loads(answer)["results"]:
        conn.request("GET", f"/v1/thumbnail/{result['index']}", headers=headers)
        thumb = conn.getresponse()
        thumb.read()
        if thumb.status != 200:
            return thumb.status
    return 200


def session_of(conn: http.client.HTTPConnection, length: int) -> str:
    conn.request("POST", "/v1/sessions", body=json.dumps({"length": length}), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status != 201:
        raise RuntimeError(f"POST /v1/sessions: {response.status} {data[:200]!r}")
    return json.loads(data)["session"]


def session_frame(conn: http.client.HTTPConnection, sid: str, body: bytes) -> int:
    conn.request("POST", f"/v1/sessions/{sid}/locate?k=5", body=body, headers={"Content-Type": "image/jpeg"})
    response = conn.getresponse()
    response.read()
    return response.status


def load_point(port: int, bodies: list[bytes], clients: int, max_requests: int, max_seconds: float,
               send=post_jpeg, setup=None) -> dict:  # fmt: skip
    """``clients`` threads, each on its own connection, ``send(conn, body)`` (after ``setup(conn)``, whose
    result ``send`` then takes first: a session id) until ``max_requests`` are done or ``max_seconds`` pass;
    latencies in ms."""
    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    errors = [0]
    kinds: dict[str, int] = {}
    deadline = time.perf_counter() + max_seconds
    barrier = threading.Barrier(clients + 1)

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=max_seconds + 60)
        state = (setup(conn),) if setup is not None else ()
        barrier.wait()
        mine = 0
        while time.perf_counter() < deadline:
            with lock:
                if issued[0] >= max_requests:
                    break
                issued[0] += 1
            t0 = time.perf_counter()
            try:
                status = send(conn, *state, bodies[mine % len(bodies)])
                mine += 1
                ok = status == 200
                if not ok:
                    kinds[f"HTTP {status}"] = kinds.get(f"HTTP {status}", 0) + 1
            except (OSError, http.client.HTTPException) as exc:  # counted, and the client connects again
                ok = False
                conn.close()
                kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
            with lock:
                if ok:
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
    lat = np.asarray(latencies) if latencies else np.asarray([np.nan])
    return {
        "clients": clients, "requests": len(lat), "errors": errors[0], "error_kinds": kinds, "seconds": wall,
        "throughput": len(lat) / wall, "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
        "p99": float(np.percentile(lat, 99)),
    }  # fmt: skip


def strip_png(width: int = 20000) -> bytes:
    """The hostile image of issue 22: a PNG of ``width``×1 pixels (about 60 kB)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1, width, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Attack:
    """An attack on a running server, in threads, from ``start()`` to ``stop()``; ``outcome()`` says what it got."""

    def __init__(self, kind: str, port: int, attackers: int, slow: int) -> None:
        self.kind, self.port, self.attackers, self.slow = kind, port, attackers, slow
        self.halt = threading.Event()
        self.statuses: dict[str, int] = {}
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def count(self, what: str) -> None:
        with self.lock:
            self.statuses[what] = self.statuses.get(what, 0) + 1

    def start(self) -> None:
        if self.kind == "strip":
            body = strip_png()
            self.threads = [threading.Thread(target=self._post_strips, args=(body,)) for _ in range(self.attackers)]
        elif self.kind == "slowloris":
            self.threads = [threading.Thread(target=self._hold_headers)]
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.halt.set()
        for t in self.threads:
            t.join()

    def outcome(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())) or "-"

    def _post_strips(self, body: bytes) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=120)
        while not self.halt.is_set():
            try:
                conn.request("POST", "/v1/locate", body=body, headers={"Content-Type": "image/png"})
                response = conn.getresponse()
                response.read()
                self.count(f"HTTP {response.status}")
            except (OSError, http.client.HTTPException):
                self.count("connection error")
                conn.close()
                conn = http.client.HTTPConnection(HOST, self.port, timeout=120)
        conn.close()

    def _hold_headers(self) -> None:
        """``slow`` connections, each sending one more header byte every second; a closed one is opened again."""
        import socket

        def opened() -> socket.socket:
            sock = socket.create_connection((HOST, self.port), timeout=5)
            sock.sendall(b"POST /v1/locate HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            return sock

        socks = [opened() for _ in range(self.slow)]
        while not self.halt.wait(1.0):
            for i, sock in enumerate(socks):
                try:
                    sock.sendall(b"a")
                except OSError:
                    self.count("closed by the server")
                    sock.close()
                    socks[i] = opened()
        for sock in socks:
            sock.close()


def attack_rows(index: Path, bodies: list[bytes], args: argparse.Namespace) -> list[dict]:
    """Good clients against one server, with no attack, a flood of 20000×1 strips, and slowloris."""
    extra = args.server_args.split() if args.server_args else []
    server = ServerProcess(index, ["--device", args.device, "--threads", str(args.threads), "--max-k", "5", *extra],
                           nofile=args.server_nofile)
    rows = []
    try:
        load_point(server.port, bodies, 1, 5, 30)  # warm-up
        for kind in args.attack_kinds.split(","):
            attack = Attack(kind, server.port, args.attackers, args.slow_connections)
            attack.start()
            peak = [rss_mb(server.proc.pid)]
            watching = threading.Event()

            def watch() -> None:
                while not watching.wait(0.2):
                    peak.append(rss_mb(server.proc.pid))

            watcher = threading.Thread(target=watch)
            watcher.start()
            time.sleep(2 if kind != "none" else 0)  # the attack in full swing before the good clients start
            row = load_point(server.port, bodies, args.attack_clients, args.requests, args.seconds)
            watching.set()
            watcher.join()
            attack.stop()
            row |= {"attack": kind, "attack_outcome": attack.outcome(), "peak_rss_mb": max(peak)}
            rows.append(row)
            print(f"attack {kind:9s}  {row['requests']:4d} good requests  p50 {row['p50']:7.1f}  p95 {row['p95']:7.1f} ms  "
                  f"errors {row['errors']}  attack got: {row['attack_outcome']}  peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
    finally:
        server.stop()
    return rows


def in_process_pair(port: int, bodies: list[bytes], args: argparse.Namespace) -> dict:
    """One client's requests interleaved with in-process ``encode()`` of the same JPEG files: p50 of each, ms."""
    import torch

    from loqi_core import build_model, encode

    torch.set_num_threads(args.threads)
    model = build_model("lite0-gem")
    server, local = [], []
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for n, body in enumerate(bodies[: args.requests]):
            files.append(Path(tmp) / f"frame{n:04d}.jpg")
            files[-1].write_bytes(body)
        encode(model, [files[0]], cache=False, num_workers=0, device=args.device)  # warm-up
        for path, body in zip(files, bodies):
            t0 = time.perf_counter()
            assert post_jpeg(conn, body) == 200
            server.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            encode(model, [path], cache=False, num_workers=0, device=args.device)
            local.append((time.perf_counter() - t0) * 1000)
    conn.close()
    p50_server, p50_local = float(np.percentile(server, 50)), float(np.percentile(local, 50))
    return {"requests": len(server), "server_p50": p50_server, "encode_p50": p50_local, "rate_share": p50_local / p50_server,
            "server_p95": float(np.percentile(server, 95)), "encode_p95": float(np.percentile(local, 95))}  # fmt: skip


def deployment_rows(index: Path, bodies: list[bytes], args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Raw bodies without and with keys, the page's requests, session frames; then the in-process pair."""
    key = "bench-" + os.urandom(16).hex()
    common = ["--device", args.device, "--threads", str(args.threads), "--max-k", "5", "--no-access-log"]
    ordered = [bodies[i] for i in query_order()]
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys"
        keys.write_text(key + "\n")
        keys.chmod(0o600)
        plain = ServerProcess(index, common)
        keyed = ServerProcess(index, [*common, "--api-key-file", str(keys)])
        auth = {"Authorization": f"Bearer {key}"}
        kinds = {
            "raw JPEG, no keys": (plain, post_jpeg, None, bodies),
            "raw JPEG, keys on": (keyed, lambda conn, body: post_jpeg(conn, body, auth), None, bodies),
            "the page: multipart + 5 thumbnails, keys on": (keyed, lambda conn, body: page_query(conn, body, auth), None, bodies),
            f"session frames (L = {args.sequence_length})": (plain, session_frame, lambda conn: session_of(conn, args.sequence_length), ordered),
        }  # fmt: skip
        rows = []
        try:
            for server in (plain, keyed):
                load_point(server.port, bodies, 1, 5, 30)  # warm-up
            for clients in (int(c) for c in args.deployment_clients.split(",")):
                for name, (server, send, setup, data) in kinds.items():
                    row = load_point(server.port, data, clients, args.requests, args.seconds, send, setup) | {"kind": name}
                    rows.append(row)
                    print(f"clients {clients:3d}  {name:45s} {row['requests']:4d} requests  {row['throughput']:6.1f} req/s  "
                          f"p50 {row['p50']:7.1f}  p95 {row['p95']:7.1f} ms  errors {row['errors']}", flush=True)  # fmt: skip
            pair = in_process_pair(plain.port, bodies, args)
            print(f"one client vs in-process encode(): p50 {pair['server_p50']:.1f} vs {pair['encode_p50']:.1f} ms: "
                  f"{pair['rate_share']:.2f}x of the in-process rate", flush=True)
        finally:
            plain.stop()
            keyed.stop()
    return rows, pair


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
    parser.add_argument("--attacks", action="store_true", help="Measure good requests under attack instead (see above).")
    parser.add_argument("--attack-clients", type=int, default=8, help="Good clients in the attack rows.")
    parser.add_argument("--attackers", type=int, default=4, help="Connections posting 20000×1 strips.")
    parser.add_argument("--slow-connections", type=int, default=200, help="Slowloris connections.")
    parser.add_argument("--attack-kinds", default="none,strip,slowloris", help="Attack rows, comma-separated.")
    parser.add_argument("--server-args", help='More `loqi serve` flags for the attacked server, e.g. "--header-timeout 600".')
    parser.add_argument("--server-nofile", type=int, help="The attacked server's file-descriptor limit (ulimit -n).")
    parser.add_argument("--deployment", action="store_true", help="Measure keys, the page's requests and sessions instead.")
    parser.add_argument("--deployment-clients", default="1,8", help="Concurrent clients of the deployment rows.")
    parser.add_argument("--sequence-length", type=int, default=10, help="Frames per sequence of the session rows.")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    if args.deployment:
        with tempfile.TemporaryDirectory() as tmp:
            index = args.index or demo_index(Path(tmp), args.device)
            rows, pair = deployment_rows(index, query_bodies(300, args.quality), args)
        setup = (f"{platform.machine()}, {os.cpu_count()} CPU threads visible, torch {torch.__version__}, {args.threads} "
                 f"torch thread(s) per server; {args.requests} requests or {args.seconds:g} s per row; server defaults "
                 "(micro-batching 8 on a CPU, 5 ms), no access log")  # fmt: skip
        lines = [setup, "", "| clients | requests of | answered | throughput (req/s) | p50 (ms) | p95 (ms) | p99 (ms) | errors |",
                 "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            lines.append(f"| {r['clients']} | {r['kind']} | {r['requests']} | {r['throughput']:.1f} | {r['p50']:.0f} | "
                         f"{r['p95']:.0f} | {r['p99']:.0f} | {r['errors']} |")  # fmt: skip
        lines += ["", f"One client, {pair['requests']} requests interleaved with in-process `encode()` of the same JPEG: "
                  f"p50 {pair['server_p50']:.1f} ms against {pair['encode_p50']:.1f} ms (p95 {pair['server_p95']:.1f} "
                  f"against {pair['encode_p95']:.1f}): the server answers at {pair['rate_share']:.2f}x the in-process rate."]  # fmt: skip
        print("\n" + "\n".join(lines))
        if args.json:
            args.json.write_text(json.dumps({"setup": setup, "rows": rows, "in_process": pair}, indent=2))
        return

    if args.attacks:
        with tempfile.TemporaryDirectory() as tmp:
            index = args.index or demo_index(Path(tmp), args.device)
            rows = attack_rows(index, query_bodies(300, args.quality), args)
        lines = [f"{platform.machine()}, {os.cpu_count()} CPU threads visible, torch {torch.__version__}, {args.threads} "
                 f"torch thread(s); {args.attack_clients} good clients, {args.requests} requests or {args.seconds:g} s per row; "
                 f"server flags: {args.server_args or 'defaults'}"
                 + (f", ulimit -n {args.server_nofile}" if args.server_nofile else ""),
                 "", "| attack | good requests | p50 (ms) | p95 (ms) | errors | what the attack got | server peak RSS (MB) |",
                 "|---|---|---|---|---|---|---|"]  # fmt: skip
        names = {"none": "none", "strip": f"{args.attackers} connections posting a 20000×1 PNG",
                 "slowloris": f"{args.slow_connections} slowloris connections"}  # fmt: skip
        for r in rows:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["error_kinds"].items()))
            lines.append(f"| {names[r['attack']]} | {r['requests']} | {r['p50']:.0f} | {r['p95']:.0f} | {r['errors']}"
                         f"{f' ({kinds})' if kinds else ''} | {r['attack_outcome']} | {r['peak_rss_mb']:.0f} |")  # fmt: skip
        print("\n" + "\n".join(lines))
        if args.json:
            args.json.write_text(json.dumps({"setup": lines[0], "rows": rows}, indent=2))
        return

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
