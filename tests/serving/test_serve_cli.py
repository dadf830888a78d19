"""``makevl serve`` starts a working server on loopback and refuses a broken index."""

import socket
import subprocess
import sys
import time

import httpx

from makevl.cli import main


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_answers_on_loopback(served_index):
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "makevl.cli",
            "serve",
            str(served_index),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        client = httpx.Client(trust_env=False, timeout=5)  # loopback only, never a proxy
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = client.get(base + "/healthz", timeout=1).json()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError(f"server did not come up: {process.communicate(timeout=5)[0]}")
        assert health["products"] == 16
        assert health["index_version"] == served_index.resolve().name
        response = client.get(base + "/search", params={"q": "wrist watch", "k": 1})
        assert response.json()["results"][0]["id"] == "p12"
        assert response.headers["X-Index-Version"] == health["index_version"]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_serve_refuses_a_corrupt_index(served_index, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in served_index.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / "products.parquet").write_bytes(b"garbage")
    assert main(["serve", str(copy), "--port", str(free_port())]) == 1
    assert "products.parquet: checksum mismatch" in capsys.readouterr().err


def test_serve_refuses_bad_batching_options(served_index, capsys):
    assert main(["serve", str(served_index), "--queue-size", "0"]) == 1
    assert "queue_size must be at least 1" in capsys.readouterr().err
