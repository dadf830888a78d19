"""Concurrent searches share encoder calls; an overloaded server answers 503, not late.

The encoder here blocks its first call until the test lets it go, so the test
decides what is queued while the worker is busy: no sleeps, no timing.
"""

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from makevl.index.encoders import HashingEncoder
from makevl.index.search import Searcher
from makevl.serving.app import create_app
from makevl.serving.batching import BatchSettings

WAIT_S = 30  # generous bound for a busy machine; a passing test never waits this long


class GatedEncoder:
    """The index's hashing encoder, holding its first call until ``release`` is set."""

    def __init__(self) -> None:
        self.inner = HashingEncoder(32)
        self.model_hash = self.inner.model_hash
        self.busy = threading.Event()  # the worker is inside the first call
        self.release = threading.Event()
        self.calls: list[int] = []  # queries per call

    def encode_queries(self, texts: list[str], batch_size: int = 256):
        self.calls.append(len(texts))
        self.busy.set()
        assert self.release.wait(WAIT_S)
        return self.inner.encode_queries(texts)


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.005)


@pytest.fixture
def gated(served_index):
    """``(app, encoder)``: an app whose search worker is stuck until ``encoder.release``."""
    encoder = GatedEncoder()
    searcher = Searcher(served_index, encoder=encoder)

    def make(**settings):
        # No deadline unless a test sets one: searches queued behind the gate wait a while.
        settings = {"deadline_ms": WAIT_S * 1000, **settings}
        return create_app(searcher, batching=BatchSettings(**settings), reload_s=0), encoder

    return make


def busy_worker(client, pool, app, encoder):
    """Start one search and return its future once the worker is stuck in it."""
    first = pool.submit(client.get, "/search", params={"q": "first", "k": 1})
    assert encoder.busy.wait(WAIT_S)
    wait_until(lambda: app.state.batcher.depth == 0, "the first search to leave the queue")
    return first


def test_full_queue_gets_503_with_retry_after(gated):
    app, encoder = gated(queue_size=1, max_wait_ms=0)
    with TestClient(app) as client, ThreadPoolExecutor(4) as pool:
        first = busy_worker(client, pool, app, encoder)
        queued = pool.submit(client.get, "/search", params={"q": "blue jeans"})
        wait_until(lambda: app.state.batcher.depth == 1, "the second search to be queued")

        refused = client.get("/search", params={"q": "wrist watch"})
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert "busy" in refused.json()["detail"]
        refused_batch = client.post("/search", json={"queries": ["a", "b"]})
        assert refused_batch.status_code == 503

        encoder.release.set()
        assert first.result().status_code == 200
        assert queued.result().json()["results"][0]["id"] == "p2"
        text = client.get("/metrics").text
    assert 'makevl_shed_total{reason="queue_full"} 2' in text
    assert 'makevl_requests_total{method="GET",route="/search",status="503"} 1' in text


def test_search_that_waited_past_the_deadline_gets_503(gated):
    app, encoder = gated(deadline_ms=500, max_wait_ms=0)
    now = [0.0]
    app.state.batcher.clock = lambda: now[0]
    with TestClient(app) as client, ThreadPoolExecutor(4) as pool:
        first = busy_worker(client, pool, app, encoder)
        late = pool.submit(client.get, "/search", params={"q": "blue jeans"})
        wait_until(lambda: app.state.batcher.depth == 1, "the second search to be queued")
        now[0] += 0.6  # it has now waited 600 ms
        encoder.release.set()
        assert first.result().status_code == 200
        response = late.result()
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert "over the 500 ms deadline" in response.json()["detail"]
        assert 'makevl_shed_total{reason="deadline"} 1' in client.get("/metrics").text
    assert encoder.calls == [1]  # the late search never reached the model


def test_concurrent_searches_share_one_encoder_call(gated, served_index):
    app, encoder = gated(max_batch=8, max_wait_ms=0)
    queries = ["red t-shirt", "blue jeans", "wrist watch", "leather belt"]
    with TestClient(app) as client, ThreadPoolExecutor(8) as pool:
        first = busy_worker(client, pool, app, encoder)
        # Queued in this order (batches are cut in arrival order, so a k=1 search that
        # overtook the POST would split the k=3 group): the GETs, the POST, the k=1 GET.
        waiting = [pool.submit(client.get, "/search", params={"q": q, "k": 3}) for q in queries]
        wait_until(lambda: app.state.batcher.depth == 4, "the four GETs to be queued")
        waiting.append(pool.submit(client.post, "/search", json={"queries": queries, "k": 3}))
        wait_until(lambda: app.state.batcher.depth == 5, "the POST to be queued")
        waiting.append(pool.submit(client.get, "/search", params={"q": "glass vase", "k": 1}))
        wait_until(lambda: app.state.batcher.depth == 6, "six searches to be queued")
        encoder.release.set()
        assert first.result().status_code == 200
        responses = [f.result() for f in waiting]
        text = client.get("/metrics").text

    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    # The four GETs and the POST (k=3) share one call, the k=1 search needs its own.
    assert encoder.calls[0] == 1 and sorted(encoder.calls[1:]) == [1, 8]
    expected = Searcher(served_index).search(queries, k=3)
    for response, hits in zip(responses[:4], expected):
        assert [r["id"] for r in response.json()["results"]] == [h.id for h in hits]
    batch = responses[4].json()["results"]
    assert [[r["id"] for r in results] for results in batch] == [
        [h.id for h in hits] for hits in expected
    ]
    assert [r["id"] for r in responses[5].json()["results"]] == ["sku/42"]

    assert re.search(r'makevl_batch_queries_bucket\{le="4"\} 2\n', text)  # two of size 1
    assert re.search(r'makevl_batch_queries_bucket\{le="8"\} 3\n', text)  # and one of 8
    assert "makevl_batch_queries_count 3\n" in text and "makevl_queue_depth 0\n" in text


def test_batch_settings_are_checked():
    with pytest.raises(ValueError, match="queue_size must be at least 1"):
        BatchSettings(queue_size=0)
    with pytest.raises(ValueError, match="max_wait_ms must not be negative"):
        BatchSettings(max_wait_ms=-1)
