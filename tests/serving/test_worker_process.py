"""Searches in a worker process (``makevl serve``'s default) answer as the in-process worker."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from makevl.serving.app import create_app
from makevl.serving.batching import BatchSettings
from makevl.serving.worker_process import can_search_apart

IN_PROCESS = BatchSettings(deadline_ms=600_000)
WORKER_PROCESS = BatchSettings(deadline_ms=600_000, process=True)
REQUESTS = [
    {"q": "red t-shirt", "k": 5},
    {"q": "wrist watch", "k": 3, "filter": "category:watch"},
    {"q": "leather bag", "k": 4, "mode": "hybrid", "lexical_weight": 2.0},
]


def answers(index, batching: BatchSettings) -> list[dict]:
    with TestClient(create_app(index, batching=batching, reload_s=0)) as client:
        found = []
        for params in REQUESTS:
            response = client.get("/search", params=params)
            assert response.status_code == 200, response.text
            found.append([(r["id"], round(r["score"], 5)) for r in response.json()["results"]])
        return found


def test_worker_process_answers_as_the_thread(served_index):
    expected = answers(served_index, IN_PROCESS)
    assert all(expected)
    assert answers(served_index, WORKER_PROCESS) == expected


def test_worker_process_reports_bad_filters_as_422(served_index):
    app = create_app(served_index, batching=WORKER_PROCESS, reload_s=0)
    with TestClient(app) as client:
        response = client.get("/search", params={"q": "shoe", "filter": "colour:red"})
        assert response.status_code == 422
        assert "unknown filter attribute 'colour'" in response.json()["detail"]
        assert client.get("/search", params={"q": "shoe"}).status_code == 200


def test_worker_process_stops_with_the_app(served_index):
    app = create_app(served_index, batching=WORKER_PROCESS, reload_s=0)
    assert app.state.search_process is None  # started with the app, not before
    apart = can_search_apart(app.state.live_index.current)  # Milvus Lite: one process only
    with TestClient(app) as client:
        assert client.get("/search", params={"q": "shoe"}).status_code == 200
        process = app.state.search_process
        assert (process is not None and process.running) == apart
    assert process is None or not process.running


def test_a_search_process_that_dies_is_replaced(served_index):
    app = create_app(served_index, batching=WORKER_PROCESS, reload_s=0)
    if not can_search_apart(app.state.live_index.current):
        pytest.skip("Milvus Lite searches in the server's own thread: no process to kill")
    with TestClient(app) as client:
        expected = client.get("/search", params=REQUESTS[0]).json()["results"]
        first = app.state.search_process._process
        first.kill()
        first.wait()
        response = client.get("/search", params=REQUESTS[0])
        assert response.status_code == 200, response.text
        assert response.json()["results"] == expected
        assert app.state.search_process._process.pid != first.pid
        assert "makevl_search_process_restarts 1\n" in client.get("/metrics").text
