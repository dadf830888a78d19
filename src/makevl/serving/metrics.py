"""Request counts, latency and batching histograms, rendered in Prometheus text format.

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
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)  # queries per encoder call
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
OTHER_METHOD = "other"  # any method string a client makes up
SHED_REASONS = ("queue_full", "deadline")  # why a search was answered 503


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Histogram:
    """Cumulative bucket counts, a sum and a count (not thread-safe: :class:`Metrics` locks)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1  # cumulative: every bucket at or above the value
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        """Exposition lines; ``labels`` like ``route="/search"`` (or none)."""
        bucket = f"{labels}," if labels else ""
        others = f"{{{labels}}}" if labels else ""
        return [
            *(
                f'{name}_bucket{{{bucket}le="{bound}"}} {n}'
                for bound, n in zip(self.buckets, self.counts)
            ),
            f'{name}_bucket{{{bucket}le="+Inf"}} {self.count}',
            f"{name}_sum{others} {self.sum:.6f}",
            f"{name}_count{others} {self.count}",
        ]


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = defaultdict(lambda: Histogram(BUCKETS))
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.shed = dict.fromkeys(SHED_REASONS, 0)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else OTHER_METHOD
        with self._lock:
            self.requests[(method, route, status)] += 1
            self.latency[route].observe(seconds)

    def observe_batch(self, queries: int) -> None:
        """One encoder call of the search worker, over ``queries`` queries."""
        with self._lock:
            self.batch_sizes.observe(queries)

    def observe_shed(self, reason: str) -> None:
        """A search answered 503 instead of served (a reason in :data:`SHED_REASONS`)."""
        with self._lock:
            self.shed[reason] += 1

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
            for route in sorted(self.latency):
                lines += self.latency[route].lines(
                    "makevl_request_duration_seconds", f'route="{_label(route)}"'
                )
            lines += [
                "# HELP makevl_batch_queries Queries per encoder call of the search worker.",
                "# TYPE makevl_batch_queries histogram",
                *self.batch_sizes.lines("makevl_batch_queries"),
                "# HELP makevl_shed_total Searches answered 503 by reason.",
                "# TYPE makevl_shed_total counter",
                *(f'makevl_shed_total{{reason="{r}"}} {n}' for r, n in self.shed.items()),
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
