"""A bounded load test of ``makevl serve`` on loopback.

Starts the server in a subprocess on 127.0.0.1 (or targets --url, which must be
loopback), runs --clients concurrent clients (httpx async) for --seconds
against ``GET /search`` (each on one kept-alive connection), and prints p50/p99 latency and requests/s beside what
the same index and encoder do offline, in batches of --offline-batch queries
(``Searcher.search`` in this process, before the load). Answers 503 (the
server shedding load: its queue was full or a search waited past its deadline)
are counted apart, with the server's reasons; any other error (another status
or a failed request) makes the exit status 1. Also printed: the server's
batch sizes (from ``/metrics``), the CPU time each request cost the client,
the HTTP process and the search worker process (what bounds requests/s on a
machine whose cores they share, whatever else runs on it), and the machine's
load average, since other work on the machine skews every figure.

    python benchmarks/load_test.py                       # fashion-mini, hashing encoder
    python benchmarks/load_test.py --index runs/fm/index --clients 50 --seconds 20

Without --index a temporary index of the fashion-mini catalog is built with
the model-free hashing encoder, so the figures measure the server and the
index, not a neural query tower (pass an index built from a checkpoint for
that; ``makevl export`` it first to serve the ONNX query tower).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode, urlparse

import httpx
import numpy as np
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sample_queries import QUERIES

from makevl.serving.batching import default_threads


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


def offline_rate(
    index: Path, batch: int, seconds: float, k: int, threads: int, runtime: str
) -> tuple[float, str]:
    """Queries/s of ``Searcher.search`` over batches of ``batch`` queries, in this process,
    on as many threads as the server's search worker, and the query runtime it used."""
    from makevl.index.runtime import RUNTIME_FLAGS
    from makevl.index.search import Searcher
    from makevl.serving.batching import pin_threads

    searcher = Searcher(index, runtime=RUNTIME_FLAGS[runtime], batched=True)  # as serve picks
    pin_threads(threads)
    queries = [QUERIES[i % len(QUERIES)] for i in range(batch)]
    searcher.search(queries, k)  # warm up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        searcher.search(queries, k)
        done += batch
    return done / (time.perf_counter() - start), searcher.runtime


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (the server's search worker)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue  # gone meanwhile
    return children


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_server(index: Path, serve_args: list[str]) -> tuple[subprocess.Popen, str]:
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
            *serve_args,
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


class Connection:
    """One kept-alive HTTP/1.1 connection that sends GETs and reads the answers.

    A load generator on the server's own cores must be cheap: httpx's async
    client cost 5.5 ms of CPU per request here, four times the server's HTTP
    work, so it measured itself. This reads a status line, headers and a
    Content-Length body, which is all uvicorn sends.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, target: str) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers, body)``; a connection the server closed while idle (its
        keep-alive timeout) is opened again and the request sent once more."""
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.writer.write(f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            try:
                head = await self.reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                self.close()
                if attempt == 2:
                    raise
                continue
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
            body = await self.reader.readexactly(int(headers.get("content-length", 0)))
            if headers.get("connection") == "close":
                self.close()
            return int(lines[0].split()[1]), headers, body
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def client_loop(
    url: str,
    deadline: float,
    k: int,
    seed: int,
    latencies: list[float],
    shed: list[str],
    errors: list[str],
) -> None:
    rng = random.Random(seed)
    address = urlparse(url)
    connection = Connection(address.hostname, address.port)
    try:
        while time.perf_counter() < deadline:
            target = "/search?" + urlencode({"q": rng.choice(QUERIES), "k": k})
            start = time.perf_counter()
            try:
                status, headers, body = await connection.get(target)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                connection.close()
                continue
            if status == 200:
                latencies.append(time.perf_counter() - start)
            elif status == 503:  # shed: a client retries after Retry-After
                shed.append(body[:200].decode("utf-8", "replace"))
                await asyncio.sleep(float(headers.get("retry-after", 1)))
            else:
                errors.append(f"{status}: {body[:200].decode('utf-8', 'replace')}")
    finally:
        connection.close()


async def run_load(
    url: str, clients: int, seconds: float, k: int, server_pid: int | None
) -> tuple[list[float], list[str], list[str], float, dict[str, float]]:
    """Latencies, 503 answers, errors, seconds, and CPU seconds used meanwhile by
    the client, the HTTP process and its search process (when the server was started here)."""
    latencies: list[float] = []
    shed: list[str] = []
    errors: list[str] = []
    warm = Connection(urlparse(url).hostname, urlparse(url).port)
    await warm.get("/search?" + urlencode({"q": "warm up", "k": k}))
    warm.close()
    processes = {"client": None}
    if server_pid is not None:
        processes["HTTP process"] = server_pid
        for child in child_pids(server_pid):
            processes["search process"] = child
    cpu = {name: cpu_now(pid) for name, pid in processes.items()}
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(
        *(client_loop(url, deadline, k, i, latencies, shed, errors) for i in range(clients))
    )
    elapsed = time.perf_counter() - start
    cpu = {name: cpu_now(pid) - cpu[name] for name, pid in processes.items()}
    return latencies, shed, errors, elapsed, cpu


def cpu_now(pid: int | None) -> float:
    return client_cpu_seconds() if pid is None else cpu_seconds(pid)


def metric(text: str, name: str) -> dict[str, float]:
    """Values of one metric in Prometheus text, by label string (``""`` if none)."""
    pattern = rf"^{name}(\{{[^}}]*\}})? (\S+)$"
    return {m[1] or "": float(m[2]) for m in re.finditer(pattern, text, re.MULTILINE)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--index", help="index directory to serve (default: build fashion-mini)")
    parser.add_argument("--url", help="a running server on loopback, e.g. http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument(
        "--offline-batch", type=int, default=32, help="queries per offline search call"
    )
    parser.add_argument(
        "--offline-seconds", type=float, default=5.0, help="offline measurement (0: skip)"
    )
    parser.add_argument(
        "--runtime",
        default="auto",
        choices=["auto", "torch", "onnx", "onnx-int8"],
        help="`makevl serve --runtime`, also used offline (default auto)",
    )
    parser.add_argument(
        "--worker",
        default="process",
        choices=["process", "thread"],
        help="`makevl serve --worker` (default process)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help=f"`makevl serve --threads`, also used offline (default {default_threads()})",
    )
    for flag in ("--max-batch", "--max-wait-ms", "--queue-size", "--deadline-ms"):
        parser.add_argument(flag, help=f"`makevl serve {flag}` (default: serve's)")
    args = parser.parse_args()
    if not 1 <= args.clients <= 200 or not 0 < args.seconds <= 120:
        parser.error("keep it bounded: 1..200 clients, at most 120 seconds")
    serve_args = [
        item
        for flag in (
            "runtime",
            "worker",
            "threads",
            "max_batch",
            "max_wait_ms",
            "queue_size",
            "deadline_ms",
        )
        if getattr(args, flag) is not None
        for item in (f"--{flag.replace('_', '-')}", str(getattr(args, flag)))
    ]

    process, offline = None, None
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        index = None
        if args.url:
            if urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
                parser.error("--url must be a loopback address")
            url = args.url.rstrip("/")
            index = Path(args.index) if args.index else None  # for the offline figure only
        else:
            index = Path(args.index) if args.index else build_demo_index(Path(tmp))
        if index is not None and args.offline_seconds > 0:
            offline, offline_runtime = offline_rate(
                index, args.offline_batch, args.offline_seconds, args.k, args.threads, args.runtime
            )
        if not args.url:
            process, url = start_server(index, serve_args)
        try:
            server_pid = process.pid if process is not None else None
            latencies, shed, errors, elapsed, cpu = uvloop.run(
                run_load(url, args.clients, args.seconds, args.k, server_pid)
            )
            with httpx.Client(trust_env=False) as client:
                health = client.get(url + "/healthz", timeout=5).json()
                metrics = client.get(url + "/metrics", timeout=5).text
        finally:
            if process is not None:
                process.terminate()  # graceful: open connections get up to 10 s
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()  # its search process exits when its input closes
                    process.wait()
    load_after = os.getloadavg()

    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    total = len(latencies) + len(shed) + len(errors)
    rate = len(latencies) / elapsed
    model = health["model_hash"]
    model = model[:16] + "..." if len(model) == 64 else model  # a SHA-256, or an encoder name
    print(
        f"index: {health['products']} products ({health['index_type']}, model {model}, "
        f"{health['runtime']} query tower, worker {args.worker})"
    )
    print(
        f"{args.clients} clients x {elapsed:.1f} s on {url}: {total} requests, "
        f"{len(shed)} shed (503), {len(errors)} errors"
    )
    print(
        f"latency p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, "
        f"max {ms.max():.1f} ms; {rate:.1f} requests/s"
    )
    if offline is not None:
        print(
            f"served {rate:.1f} requests/s | offline ({offline_runtime}, batches of "
            f"{args.offline_batch} on {args.threads} threads) {offline:.1f} queries/s | "
            f"served/offline {rate / offline:.0%}"
        )
    served = metric(metrics, "makevl_request_duration_seconds_sum")['{route="/search"}']
    count = metric(metrics, "makevl_request_duration_seconds_count")['{route="/search"}']
    print(f"server-side: {served / count * 1000:.1f} ms per search on average (mean)")
    sizes = metric(metrics, "makevl_batch_queries_sum")
    calls = metric(metrics, "makevl_batch_queries_count")
    if calls.get("", 0):
        print(
            f"server: {int(calls[''])} encoder calls, {sizes[''] / calls['']:.1f} queries "
            "per call on average"
        )
    answered = max(1, total)
    per_request = {name: seconds * 1000 / answered for name, seconds in cpu.items()}
    print(
        "CPU ms per request: "
        + ", ".join(f"{name} {ms:.2f}" for name, ms in per_request.items())
        + f"; all together {sum(per_request.values()):.2f} ms: at most "
        f"{os.cpu_count() * 1000 / sum(per_request.values()):.0f} requests/s on "
        f"{os.cpu_count()} cores with nothing else running"
    )
    reasons = metric(metrics, "makevl_shed_total")
    if shed:
        print(
            f"shed (503): {reasons} (queue full: more searches waiting than --queue-size; "
            "deadline: a search waited past --deadline-ms for the model)"
        )
    print(
        "load average (1/5/15 min) before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f} "
        "on {} cores".format(*load_before, *load_after, os.cpu_count())
    )
    for error in errors[:5]:
        print(f"  error: {error}")
    return 1 if errors or not latencies else 0


if __name__ == "__main__":
    sys.exit(main())
