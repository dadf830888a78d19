"""A running server picks up `index add` / `delete` without a restart or a mixed answer."""

import gc
import shutil
import threading
import time
import weakref
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from index.index_testing import PRODUCTS, build, write_catalog
from makevl.cli import main
from makevl.index.store import PRODUCTS_FILE, new_version, publish
from makevl.serving.app import create_app
from makevl.serving.batching import BatchSettings

WAIT_S = 60  # generous bound for a busy machine; a passing test never waits this long
QUERIES = ["red t-shirt", "leather", "new arrival", "watch"]


def published(index_dir: Path) -> tuple[str, set[str]]:
    """The version the index link points at now, and its product ids."""
    version = index_dir.resolve()
    ids = pq.read_table(version / PRODUCTS_FILE, columns=["id"]).column("id").to_pylist()
    return version.name, set(ids)


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.01)


def answered(answers, version: str) -> int:
    return sum(v == version for v, _ in answers)


def search_in_a_loop(client, stop, answers, errors, seed: int) -> None:
    """GET and POST searches for every product (k above the catalog size) until ``stop``."""
    i = seed
    while not stop.is_set():
        i += 1
        if i % 3:
            response = client.get("/search", params={"q": QUERIES[i % len(QUERIES)], "k": 100})
            pages = [response.json()["results"]] if response.status_code == 200 else []
        else:
            response = client.post("/search", json={"queries": QUERIES, "k": 100})
            pages = response.json()["results"] if response.status_code == 200 else []
        if response.status_code != 200:
            errors.append(f"{response.status_code}: {response.text[:200]}")
            continue
        version = response.headers["X-Index-Version"]
        answers.extend((version, frozenset(r["id"] for r in page)) for page in pages)


@pytest.mark.parametrize("process", [False, True], ids=["worker-thread", "worker-process"])
def test_updates_are_served_while_clients_search(tmp_path, process):
    shop, index_dir = tmp_path / "shop", tmp_path / "index"
    build(index_dir, write_catalog(shop))
    new = [(f"n{i}", f"New arrival number {i}", (i * 40, 90, 200), "new") for i in range(1, 5)]
    updates = [
        ["index", "add", str(index_dir), "--catalog", str(write_catalog(shop, new[:2], "a.csv"))],
        ["index", "delete", str(index_dir), "--ids", "p1", "p2", "n1"],
        ["index", "add", str(index_dir), "--catalog", str(write_catalog(shop, new[2:], "b.csv"))],
        ["index", "delete", str(index_dir), "--ids", "n2", "n3", "p12"],
    ]
    versions = dict([published(index_dir)])
    # No 503 for a search that waits behind the updates on a busy machine: not what is tested.
    batching = BatchSettings(deadline_ms=WAIT_S * 1000, process=process)
    app = create_app(index_dir, reload_s=0.02, batching=batching)
    first_encoder = app.state.live_index.current.encoder
    stop, answers, errors = threading.Event(), [], []
    with TestClient(app) as client:
        clients = [
            threading.Thread(target=search_in_a_loop, args=(client, stop, answers, errors, i))
            for i in range(4)
        ]
        for thread in clients:
            thread.start()
        try:
            for update in updates:
                assert main([*update, "--quiet"] if update[1] == "add" else update) == 0
                version, ids = published(index_dir)
                versions[version] = ids

                wait_until(
                    lambda v=version: client.get("/healthz").json()["index_version"] == v,
                    f"the server to serve version {version}",
                )
                seen = answered(answers, version)
                wait_until(lambda v=version, n=seen: answered(answers, v) > n, "a search")
        finally:
            stop.set()
            for thread in clients:
                thread.join()
        health = client.get("/healthz").json()

    assert not errors, errors[:5]
    assert len(versions) == 1 + len(updates)
    assert {version for version, _ in answers} == set(versions)
    for version, ids in answers:
        assert ids == versions[version], f"a response from {version} mixed in other products"
    assert health["products"] == len(PRODUCTS) + len(new) - 6 and health["reload_error"] is None
    assert app.state.live_index.current.encoder is first_encoder  # same model: not reloaded


def test_a_version_that_fails_to_load_leaves_the_old_one_served(tmp_path):
    index_dir = tmp_path / "index"
    build(index_dir, write_catalog(tmp_path / "shop"))
    app = create_app(index_dir, reload_s=0)  # the test checks for new versions itself
    live = app.state.live_index
    good = live.version

    broken = new_version(index_dir)
    shutil.copytree(index_dir.resolve(), broken, dirs_exist_ok=True)
    (broken / "index.faiss").write_bytes(b"garbage")
    publish(index_dir, broken)  # also deletes the served version's folder

    with TestClient(app) as client:
        assert live.check() is False
        health = client.get("/healthz").json()
        assert health["index_version"] == good
        assert "index.faiss: checksum mismatch" in health["reload_error"]
        response = client.get("/search", params={"q": "wrist watch", "k": 1})
        assert response.status_code == 200 and response.headers["X-Index-Version"] == good
        assert response.json()["results"][0]["id"] == "p12"
        assert live.check() is False  # a failed version is not loaded again and again

        build(index_dir, write_catalog(tmp_path / "shop", PRODUCTS[:3]))
        assert live.check() is True
        health = client.get("/healthz").json()
        assert health["index_version"] == index_dir.resolve().name != good
        assert health["products"] == 3 and health["reload_error"] is None
        assert "makevl_index_reloads 1\n" in client.get("/metrics").text


def test_a_served_version_is_kept_out_of_the_collectors_walks_and_freed_when_replaced(tmp_path):
    """Python's full collection must not walk the model and index (300+ ms pauses under
    load); a replaced version must still be freed, reference cycles and all."""
    index_dir = tmp_path / "index"
    build(index_dir, write_catalog(tmp_path / "shop"))
    app = create_app(index_dir, reload_s=0)
    live = app.state.live_index
    try:
        with TestClient(app) as client:
            tracked = {id(o) for o in gc.get_objects()}
            assert id(live.current) not in tracked and id(live.current.encoder) not in tracked

            old = live.current
            old.itself = old  # a reference cycle: only the cyclic collector frees it
            replaced = weakref.ref(old)
            del old
            build(index_dir, write_catalog(tmp_path / "shop", PRODUCTS[:3]))
            assert live.check() is True
            assert replaced() is None, "the replaced version is still in memory"
            assert id(live.current) not in {id(o) for o in gc.get_objects()}
            assert client.get("/search", params={"q": "watch", "k": 1}).status_code == 200
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
