"""Micro-batching: concurrent searches share one encoder call.

A query through the text tower costs nearly as much alone as in a batch of 32,
so under load the server gathers the queries that arrive together and encodes
them at once. One worker thread owns the model; request handlers put their
queries in a bounded FIFO queue and await a future the worker resolves.

- The worker waits at most ``max_wait_ms`` after the oldest queued request for
  more to arrive (no wait when the queue already holds ``max_batch`` queries),
  then takes up to ``max_batch`` queries in arrival order. Requests with the
  same searcher and options (``k``, ...) share one :meth:`Searcher.search` call.
- The worker runs each batch with ``search`` (by default :meth:`Searcher.search`
  in this process; ``makevl serve`` hands it to a worker process,
  :mod:`makevl.serving.worker_process`, so that it does not share the GIL with
  the HTTP event loop).
- Backpressure instead of unbounded latency: a request that finds the queue
  full (``queue_size`` requests) is refused at once, and one that waited longer
  than ``deadline_ms`` before the worker got to it is refused rather than
  served late. Both raise :class:`Overloaded`, which the app answers with 503
  and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from makevl.index.search import Hit, Searcher
from makevl.serving.metrics import Metrics

RETRY_AFTER_S = 1


@dataclass(frozen=True)
class BatchSettings:
    """How the search worker batches; the defaults suit a MiniLM query tower on a few cores."""

    max_batch: int = 32  # queries per encoder call
    max_wait_ms: float = 2.0  # how long the oldest request waits for company
    queue_size: int = 256  # requests waiting; more get 503 at once
    deadline_ms: float = 200.0  # a request not started after this long gets 503
    threads: int | None = None  # torch / FAISS threads of the worker; None leaves them be
    process: bool = False  # encode and search in a worker process (makevl serve's default)

    def __post_init__(self) -> None:
        for name in ("max_batch", "queue_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "deadline_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")


class Overloaded(Exception):
    """The server cannot take this search now; answered 503 with ``Retry-After``."""

    def __init__(self, detail: str, retry_after: int = RETRY_AFTER_S) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


@dataclass
class _Pending:
    searcher: Searcher
    queries: list[str]
    options: dict[str, Any]
    arrived: float
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple[int, str]:
        """Requests with equal keys can share one search call."""
        return id(self.searcher), repr(sorted(self.options.items()))


def _search_here(searcher: Searcher, queries: list[str], **options: Any) -> list[list[Hit]]:
    return searcher.search(queries, **options)


def default_threads() -> int:
    """All cores but one, which is left to the HTTP event loop."""
    return max(1, (os.cpu_count() or 2) - 1)


def pin_threads(count: int) -> None:
    """Threads one encoder call may use: torch intra-op (if loaded) and FAISS (OpenMP)."""
    from makevl.index.backends.faiss import set_threads

    if "torch" in sys.modules:  # never import torch for a model-free index
        sys.modules["torch"].set_num_threads(count)
    set_threads(count)


class SearchBatcher:
    """A bounded queue of searches and the one worker thread that runs them in batches."""

    def __init__(
        self,
        settings: BatchSettings | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,  # seconds; tests pass a fake one
        search: Callable[..., list[list[Hit]]] | None = None,
    ) -> None:
        """``search(searcher, queries, **options)`` runs one batch (default: in this thread)."""
        self.settings = settings or BatchSettings()
        self.metrics = metrics or Metrics()
        self.clock = clock
        self._search = search or _search_here
        self._queue: deque[_Pending] = deque()
        self._queued_queries = 0
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closed = False

    @property
    def depth(self) -> int:
        """Requests waiting for the worker."""
        return len(self._queue)

    def submit(self, searcher: Searcher, queries: list[str], **options: Any) -> Future:
        """Queue ``searcher.search(queries, **options)``; the future gets its result.

        Raises :class:`Overloaded` when the queue is full.
        """
        pending = _Pending(searcher, list(queries), options, self.clock())
        with self._cond:
            if self._closed:
                raise RuntimeError("the search worker has been shut down")
            full = len(self._queue) >= self.settings.queue_size
            if not full:
                if self._worker is None:
                    self._worker = threading.Thread(
                        target=self._run, name="makevl-search-worker", daemon=True
                    )
                    self._worker.start()
                self._queue.append(pending)
                self._queued_queries += len(pending.queries)
                self._cond.notify()
        if full:
            self.metrics.observe_shed("queue_full")
            raise Overloaded(
                f"the server is busy ({self.settings.queue_size} searches queued); retry shortly"
            )
        return pending.future

    async def search(
        self, searcher: Searcher, queries: list[str], **options: Any
    ) -> list[list[Hit]]:
        """:meth:`submit` for async handlers: awaits the worker without blocking the loop."""
        return await asyncio.wrap_future(self.submit(searcher, queries, **options))

    def close(self) -> None:
        """Serve what is queued, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            worker = self._worker
        if worker is not None:
            worker.join()

    def _run(self) -> None:
        if self.settings.threads is not None:
            pin_threads(self.settings.threads)
        while (batch := self._take()) is not None:
            self._serve(batch)

    def _take(self) -> list[_Pending] | None:
        """The next batch in arrival order, or None once closed and drained."""
        max_batch, max_wait = self.settings.max_batch, self.settings.max_wait_ms / 1000
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            until = self._queue[0].arrived + max_wait
            while self._queued_queries < max_batch and not self._closed:
                remaining = until - self.clock()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch, size = [], 0
            while self._queue and (not batch or size + len(self._queue[0].queries) <= max_batch):
                pending = self._queue.popleft()
                self._queued_queries -= len(pending.queries)
                size += len(pending.queries)
                batch.append(pending)
            return batch

    def _serve(self, batch: list[_Pending]) -> None:
        deadline = self.settings.deadline_ms / 1000
        groups: dict[tuple[int, str], list[_Pending]] = {}
        now = self.clock()
        for pending in batch:
            if not pending.future.set_running_or_notify_cancel():
                continue  # the client went away
            waited = now - pending.arrived
            if waited > deadline:
                self.metrics.observe_shed("deadline")
                pending.future.set_exception(
                    Overloaded(
                        f"the search waited {waited * 1000:.0f} ms for the model, over the "
                        f"{self.settings.deadline_ms:g} ms deadline; retry shortly"
                    )
                )
                continue
            groups.setdefault(pending.key, []).append(pending)
        for group in groups.values():
            queries = [query for pending in group for query in pending.queries]
            try:
                results = self._search(group[0].searcher, queries, **group[0].options)
            except Exception as exc:  # noqa: BLE001 - raised in each waiting handler instead
                for pending in group:
                    pending.future.set_exception(exc)
                continue
            self.metrics.observe_batch(len(queries))
            start = 0
            for pending in group:
                pending.future.set_result(results[start : start + len(pending.queries)])
                start += len(pending.queries)
