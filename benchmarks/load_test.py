"""A bounded load test of ``makevl serve`` on loopback.

Starts the server in a subprocess on 127.0.0.1 (or targets --url, which must be
loopback), runs --clients concurrent clients (httpx async) for --seconds
against ``GET /search``, and prints p50/p99 latency and requests/s. Any error
(non-200 or a failed request) makes the exit status 1.

    python benchmarks/load_test.py                       # fashion-mini, hashing encoder
    python benchmarks/load_test.py --index runs/demo/index --clients 50 --seconds 20

Without --index a temporary index of the fashion-mini catalog is built with
the model-free hashing encoder, so the figures measure the server and the
index, not a neural query tower (pass an index built from a checkpoint for that).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sample_queries import QUERIES


def build_demo_index(folder: Path) -> Path:
    from makevl.data.catalog import iter_catalog
    from makevl.data.fashion_mini import FASHION_MINI_COLUMNS
    from makevl.data.shop import fashion_mini_dir
    from makevl.index.build import build_index
    from makevl.index.encoders import HashingEncoder

    encoder = HashingEncoder(256)
    catalog = iter_catalog(fashion_mini_dir() / "styles.csv", FASHION_MINI_COLUMNS)
    build_index(
        catalog,
        folder / "index",
        encoder,
        encoder_spec=encoder.spec,
        model_hash=encoder.model_hash,
        progress=False,
    )
    return folder / "index"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(index: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "makevl.cli",
            "serve",
            str(index),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
    )
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(trust_env=False) as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"server exited with {process.returncode}")
            try:
                client.get(url + "/healthz", timeout=1).raise_for_status()
                return process, url
            except httpx.HTTPError:
                time.sleep(0.2)
    process.kill()
    raise SystemExit("server did not come up in 60 s")


async def client_loop(
    client: httpx.AsyncClient,
    deadline: float,
    k: int,
    seed: int,
    latencies: list[float],
    errors: list[str],
) -> None:
    rng = random.Random(seed)
    while time.perf_counter() < deadline:
        query = rng.choice(QUERIES)
        start = time.perf_counter()
        try:
            response = await client.get("/search", params={"q": query, "k": k})
            if response.status_code != 200:
                errors.append(f"{response.status_code}: {response.text[:200]}")
            else:
                latencies.append(time.perf_counter() - start)
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")


async def run_load(
    url: str, clients: int, seconds: float, k: int
) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=30, trust_env=False
    ) as client:
        await client.get("/search", params={"q": "warm up", "k": k})
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(
            *(client_loop(client, deadline, k, i, latencies, errors) for i in range(clients))
        )
        elapsed = time.perf_counter() - start
    return latencies, errors, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--index", help="index directory to serve (default: build fashion-mini)")
    parser.add_argument("--url", help="a running server on loopback, e.g. http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()
    if not 1 <= args.clients <= 200 or not 0 < args.seconds <= 120:
        parser.error("keep it bounded: 1..200 clients, at most 120 seconds")

    process = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            if urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
                parser.error("--url must be a loopback address")
            url = args.url.rstrip("/")
        else:
            index = Path(args.index) if args.index else build_demo_index(Path(tmp))
            process, url = start_server(index)
        try:
            latencies, errors, elapsed = asyncio.run(
                run_load(url, args.clients, args.seconds, args.k)
            )
            with httpx.Client(trust_env=False) as client:
                health = client.get(url + "/healthz", timeout=5).json()
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=15)

    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    total = len(latencies) + len(errors)
    model = health["model_hash"]
    model = model[:16] + "..." if len(model) == 64 else model  # a SHA-256, or an encoder name
    print(f"index: {health['products']} products ({health['index_type']}, model {model})")
    print(
        f"{args.clients} clients x {elapsed:.1f} s on {url}: {total} requests, {len(errors)} errors"
    )
    print(
        f"latency p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, "
        f"max {ms.max():.1f} ms; {len(latencies) / elapsed:.1f} requests/s"
    )
    for error in errors[:5]:
        print(f"  error: {error}")
    return 1 if errors or not latencies else 0


if __name__ == "__main__":
    sys.exit(main())
