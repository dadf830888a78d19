"""The query tower and the vector search in a process of their own.

In one process the HTTP event loop and the search worker share the GIL. A torch
forward pass is hundreds of small ops, and the worker has to take the GIL back
after each one; while the event loop parses and serializes requests it waits,
so under load every encoder call stretches (see docs/BENCHMARKS.md, "Server
under load"). Here the worker thread of :class:`~makevl.serving.batching.SearchBatcher`
only hands each batch to a child process and waits on a pipe (GIL released);
the child encodes and searches, and sends back ``(row, score)`` pairs, which
the HTTP process turns into results from its own copy of the same index version.

If the child dies (killed, out of memory), the next search starts a new one,
which loads the requested version on demand, and is retried there once: one
slow answer instead of failed searches until a restart.

Messages are length-prefixed JSON over the child's stdin and stdout (no pickle).
The child loads a version when told to (:meth:`SearchProcess.load`, which the
live index calls before it serves a new version) and keeps it until the HTTP
process's Searcher of that version is gone (no request holds it any more), so
a request is answered from the version it started on, however many are
published meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import threading
import weakref
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

from makevl.index.search import (
    Fusion,
    Hit,
    NoLexicalChannelError,
    Searcher,
    UnknownFilterError,
)
from makevl.serving.batching import pin_threads
from makevl.serving.live_index import WARM_QUERY, load_version, settle_heap

log = logging.getLogger("makevl.serving")
FRAME = struct.Struct("<I")  # message length in bytes
# Errors the child reports that the app answers as the client's fault (422); others are 500s.
CLIENT_ERRORS = {cls.__name__: cls for cls in (UnknownFilterError, NoLexicalChannelError)}


class WorkerError(RuntimeError):
    """The search process failed or went away."""


def send(stream: BinaryIO, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode("utf-8")
    stream.write(FRAME.pack(len(data)) + data)
    stream.flush()


def receive(stream: BinaryIO) -> dict[str, Any] | None:
    """The next message, or None when the other side closed the pipe."""
    header = stream.read(FRAME.size)
    if len(header) < FRAME.size:
        return None
    (size,) = FRAME.unpack(header)
    return json.loads(stream.read(size))


def can_search_apart(searcher: Searcher) -> bool:
    """False for a Milvus Lite index: it serves one process at a time (the HTTP process
    has it open already)."""
    options = searcher.manifest.get("backend_options", {})
    return searcher.manifest.get("backend") != "milvus" or "://" in options.get("uri", ".db")


class SearchProcess:
    """A child process serving :meth:`Searcher.rank` for the versions of one index.

    ``searcher_options`` (``checkpoint``, ``runtime``, ``ef_search``, ...) are
    those the server loads its Searchers with; they must be JSON values.
    ``threads`` pins the child's torch and FAISS threads.
    """

    def __init__(
        self, first: Searcher, threads: int | None = None, **searcher_options: Any
    ) -> None:
        self._config = {
            "threads": threads,
            "options": {k: _json_value(v) for k, v in searcher_options.items() if k != "encoder"},
        }
        self._lock = threading.Lock()  # one request and its answer at a time
        self._unused: deque[str] = deque()  # versions no Searcher here serves any more
        self.restarts = 0
        self._process = self._start()
        try:
            self.load(first)  # also waits until the child is up
        except BaseException:
            self._process.kill()
            self._process.wait()
            raise

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "makevl.serving.worker_process", json.dumps(self._config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def load(self, searcher: Searcher) -> None:
        """Have the child load ``searcher``'s version (before the server serves it)."""
        self._call({"op": "load", "version": str(searcher.path)})
        # When no request holds this version any more, the child may forget it (told with
        # the next message: a finalizer must not take the lock, it may run in any thread).
        weakref.finalize(searcher, self._unused.append, str(searcher.path))

    def search(self, searcher: Searcher, queries: list[str], **options: Any) -> list[list[Hit]]:
        """``searcher.search(queries, **options)``, encoded and searched in the child."""
        fusion = options.get("fusion")
        message = {
            "op": "search",
            "version": str(searcher.path),
            "queries": queries,
            **options,
            "fusion": asdict(fusion) if fusion is not None else None,
        }
        return searcher.hits(self._call(message))  # [row, score] pairs

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def close(self) -> None:
        if self.running:
            self._process.stdin.close()  # the child's loop ends at end of input
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def _call(self, message: dict[str, Any]) -> Any:
        with self._lock:
            message["forget"] = [self._unused.popleft() for _ in range(len(self._unused))]
            answer, why = self._exchange(message)
            if answer is None and message["op"] == "search":
                status = self._process.poll()
                log.error("the search process stopped (exit status %s, %s); starting a new "
                          "one", status, why)  # fmt: skip
                self._process.kill()  # in case it hangs rather than exited
                self._process.wait()
                self._process = self._start()
                self.restarts += 1
                message["forget"] = []  # the new process has loaded nothing yet
                answer, why = self._exchange(message)
        if answer is None:
            raise WorkerError(
                f"the search process stopped (exit status {self._process.poll()}): {why or ''}"
            )
        if "error" in answer:
            raise CLIENT_ERRORS.get(answer["error"], WorkerError)(answer["message"])
        return answer["result"]

    def _exchange(self, message: dict[str, Any]) -> tuple[dict[str, Any] | None, Any]:
        """Send ``message`` and read the answer: ``(answer, why)``, where ``answer`` is None
        when the process has gone and ``why`` then says how."""
        try:
            send(self._process.stdin, message)
            return receive(self._process.stdout), "it closed its output"
        except (OSError, ValueError) as exc:
            return None, exc


def _json_value(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


class _Versions:
    """The child's Searchers by version path."""

    def __init__(self, options: dict[str, Any], threads: int | None) -> None:
        self.options, self.threads = options, threads
        self.loaded: dict[str, Searcher] = {}

    def get(self, version: str) -> Searcher:
        if version not in self.loaded:
            newest = next(reversed(self.loaded.values()), None)
            self.loaded[version] = (
                load_version(Path(version), newest, **self.options)
                if newest is not None
                else Searcher(version, **self.options)
            )
            if self.threads is not None:  # after the load: torch is imported only for a model
                pin_threads(self.threads)
            self.loaded[version].rank([WARM_QUERY], 1)  # lazy initialisation, page faults
            settle_heap()
        return self.loaded[version]

    def answer(self, message: dict[str, Any]) -> Any:
        searcher = self.get(message["version"])
        for version in message.get("forget", []):  # after the load: its encoder is reused
            self.loaded.pop(version, None)
        if message["op"] == "load":
            return None
        fusion = message.get("fusion")
        return searcher.rank(
            message["queries"],
            message["k"],
            filters=message.get("filters"),
            mode=message.get("mode", "vector"),
            fusion=Fusion(**fusion) if fusion is not None else None,
        )


def main(argv: list[str]) -> int:
    """The child: answer messages on stdin until it closes."""
    config = json.loads(argv[0])
    requests, answers = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the message stream
    versions = _Versions(config["options"], config["threads"])
    while (message := receive(requests)) is not None:
        try:
            answer = {"result": versions.answer(message)}
        except Exception as exc:  # noqa: BLE001 - reported to the HTTP process
            answer = {"error": type(exc).__name__, "message": str(exc)}
        try:
            send(answers, answer)
        except BrokenPipeError:
            return 0  # the HTTP process has gone: nobody to answer
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
