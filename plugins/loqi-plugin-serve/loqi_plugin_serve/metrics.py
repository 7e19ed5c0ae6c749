"""Prometheus text-format metrics of the server: every request by endpoint and status, errors by reason, latency
of requests and of each stage (decode, queue, model, search), batch sizes, sessions.

Kept in the process (one ``Metrics`` per app) and written by hand in the exposition format, version 0.0.4.
"""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STAGES = ("decode", "queue", "model", "search", "sequence")
"""Where a request's time goes: decoding its body, waiting for a batch, the model's and the search's share of its
batch, and a session's sequence matching."""
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Cumulative buckets, a sum and a count, per label value."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0] * (len(buckets) + 1))
        self.sums: dict[str, float] = defaultdict(float)

    def observe(self, label: str, value: float) -> None:
        row = self.counts[label]
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                row[i] += 1
        row[-1] += 1
        self.sums[label] += value

    def lines(self, name: str, label_name: str | None) -> list[str]:
        out = []
        for label, row in sorted(self.counts.items()):
            base = f'{label_name}="{label}",' if label_name else ""
            for bound, count in zip(self.buckets, row):
                out.append(f'{name}_bucket{{{base}le="{bound:g}"}} {count}')
            out.append(f'{name}_bucket{{{base}le="+Inf"}} {row[-1]}')
            tail = f"{{{base.rstrip(',')}}}" if base else ""
            out.append(f"{name}_sum{tail} {self.sums[label]:.6f}")
            out.append(f"{name}_count{tail} {row[-1]}")
        return out


class Metrics:
    """Thread-safe counters and histograms; ``render()`` is the body of ``GET /metrics``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.errors: dict[tuple[str, str], int] = defaultdict(int)
        self.drops: dict[str, int] = defaultdict(int)
        self.images = 0
        self.in_flight = 0
        self.sessions = 0
        self.session_events: dict[str, int] = defaultdict(int)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.stages = Histogram(STAGE_BUCKETS)
        self.batch_sizes = Histogram(BATCH_BUCKETS)

    def started(self) -> None:
        """A locate request began (``finished()`` follows)."""
        with self.lock:
            self.in_flight += 1

    def finished(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        """Any finished request (unknown paths under ``endpoint="(unmatched)"``): its status and duration."""
        with self.lock:
            self.requests[(endpoint, status)] += 1
            self.latency.observe(endpoint, seconds)

    def error(self, endpoint: str, reason: str) -> None:
        """A request refused or failed, by its short reason (the ``code`` of the JSON answer)."""
        with self.lock:
            self.errors[(endpoint, reason)] += 1

    def stage(self, name: str, seconds: float) -> None:
        """Time spent in one stage (``STAGES``) by one request, or by one batch for ``model`` and ``search``."""
        with self.lock:
            self.stages.observe(name, seconds)

    def session(self, event: str, active: int) -> None:
        """A session ``created``, ``expired``, ``deleted`` or ``refused``; ``active``: how many there are now."""
        with self.lock:
            self.session_events[event] += 1
            self.sessions = active

    def dropped(self, reason: str) -> None:
        """A connection closed before its request's headers arrived (too slow, or too many waiting)."""
        with self.lock:
            self.drops[reason] += 1

    def batch(self, size: int) -> None:
        with self.lock:
            self.batch_sizes.observe("", size)
            self.images += size

    def render(self) -> str:
        with self.lock:
            lines = ["# HELP loqi_requests_total HTTP requests by endpoint and status code.",
                     "# TYPE loqi_requests_total counter"]
            lines += [f'loqi_requests_total{{endpoint="{e}",status="{s}"}} {n}' for (e, s), n in sorted(self.requests.items())]
            lines += ["# HELP loqi_request_errors_total Rejected or failed requests by endpoint and reason.",
                      "# TYPE loqi_request_errors_total counter"]
            lines += [f'loqi_request_errors_total{{endpoint="{e}",reason="{r}"}} {n}' for (e, r), n in sorted(self.errors.items())]
            lines += ["# HELP loqi_connections_dropped_total Connections closed before their request's headers arrived, by reason.",
                      "# TYPE loqi_connections_dropped_total counter"]
            lines += [f'loqi_connections_dropped_total{{reason="{r}"}} {n}' for r, n in sorted(self.drops.items())]
            lines += ["# HELP loqi_request_duration_seconds Time from request start to response, by endpoint.",
                      "# TYPE loqi_request_duration_seconds histogram"]
            lines += self.latency.lines("loqi_request_duration_seconds", "endpoint")
            lines += ["# HELP loqi_stage_duration_seconds Time per stage: decode, queue and sequence per request, "
                      "model and search per batch.", "# TYPE loqi_stage_duration_seconds histogram"]
            lines += self.stages.lines("loqi_stage_duration_seconds", "stage")
            lines += ["# HELP loqi_sessions_total Sequence sessions by what happened to them.",
                      "# TYPE loqi_sessions_total counter"]
            lines += [f'loqi_sessions_total{{event="{e}"}} {n}' for e, n in sorted(self.session_events.items())]
            lines += ["# HELP loqi_sessions Sequence sessions held now.", "# TYPE loqi_sessions gauge",
                      f"loqi_sessions {self.sessions}"]
            lines += ["# HELP loqi_batch_size Images per model batch (dynamic micro-batching).",
                      "# TYPE loqi_batch_size histogram"]
            lines += self.batch_sizes.lines("loqi_batch_size", None)
            lines += ["# HELP loqi_images_total Images (and video frames) encoded.", "# TYPE loqi_images_total counter",
                      f"loqi_images_total {self.images}",
                      "# HELP loqi_in_flight_requests Requests being served now (locate and sessions).", "# TYPE loqi_in_flight_requests gauge",
                      f"loqi_in_flight_requests {self.in_flight}"]  # fmt: skip
        return "\n".join(lines) + "\n"
