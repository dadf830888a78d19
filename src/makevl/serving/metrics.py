"""Request counts and a latency histogram, rendered in Prometheus text format.

Small enough to write by hand (no prometheus_client dependency). Every label
takes a bounded set of values, so no client can blow up the number of series:
routes are labelled by their template (``/products/{product_id}``), requests
that match no route share one label, and so do unknown HTTP methods.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
OTHER_METHOD = "other"  # any method string a client makes up


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.bucket_counts: dict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.latency_count: dict[str, int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else OTHER_METHOD
        with self._lock:
            self.requests[(method, route, status)] += 1
            counts = self.bucket_counts[route]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    counts[i] += 1  # cumulative: every bucket at or above the value
            self.latency_sum[route] += seconds
            self.latency_count[route] += 1

    def render(self, gauges: dict[str, tuple[str, float]] | None = None) -> str:
        """Prometheus exposition text; ``gauges`` maps name -> (help, value)."""
        lines = [
            "# HELP makevl_requests_total HTTP requests by method, route and status.",
            "# TYPE makevl_requests_total counter",
        ]
        with self._lock:
            for (method, route, status), n in sorted(self.requests.items()):
                lines.append(
                    f'makevl_requests_total{{method="{method}",route="{_label(route)}",'
                    f'status="{status}"}} {n}'
                )
            lines += [
                "# HELP makevl_request_duration_seconds Request latency by route.",
                "# TYPE makevl_request_duration_seconds histogram",
            ]
            for route in sorted(self.bucket_counts):
                label = _label(route)
                for bound, n in zip(BUCKETS, self.bucket_counts[route]):
                    lines.append(
                        f'makevl_request_duration_seconds_bucket{{route="{label}",le="{bound}"}} {n}'
                    )
                count = self.latency_count[route]
                lines += [
                    f'makevl_request_duration_seconds_bucket{{route="{label}",le="+Inf"}} {count}',
                    f'makevl_request_duration_seconds_sum{{route="{label}"}} {self.latency_sum[route]:.6f}',
                    f'makevl_request_duration_seconds_count{{route="{label}"}} {count}',
                ]
        for name, (help_text, value) in (gauges or {}).items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Plain ASGI middleware timing every HTTP request (lighter than ``@app.middleware``)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering

        async def send_and_note_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            # The router stores the matched route in the scope: label by its template.
            route = getattr(scope.get("route"), "path", "<unmatched>")
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - start)
