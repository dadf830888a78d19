"""Request body limits: a size cap (413) and a read deadline (408), enforced before the app.

uvicorn hands the app whatever body a client sends, as slowly as the client
sends it, and FastAPI turns any error while reading it into a generic 400. So
this ASGI middleware reads the body first: more than ``max_bytes`` (declared in
Content-Length or counted as it streams) gets 413, a body not complete within
``timeout`` seconds gets 408, and either closes the connection. The app then
gets the buffered body as usual.
"""

from __future__ import annotations

import asyncio
import json

MAX_BODY_BYTES = 1 << 20  # a full batch of 64 x 256-character queries, JSON-escaped, is < 200 KB
BODY_TIMEOUT_S = 10.0


class BodyTooLarge(Exception):
    pass


def _declared_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server rejects it; the streamed size is checked anyway
    return None


async def _answer(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimits:
    """ASGI middleware: read each request body in full, within size and time limits."""

    def __init__(
        self, app, max_bytes: int = MAX_BODY_BYTES, timeout: float = BODY_TIMEOUT_S
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def _read(self, receive) -> bytes | None:
        """The whole body, or None if the client went away."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body over the limit of {self.max_bytes} bytes"
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _answer(send, 413, f"{too_large} (Content-Length: {declared})")
            return
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout)
        except BodyTooLarge:
            await _answer(send, 413, too_large)
            return
        except TimeoutError:
            await _answer(send, 408, f"request body not received within {self.timeout:g} s")
            return
        if body is None:
            return

        replayed = False

        async def receive_buffered():
            nonlocal replayed
            if replayed:
                return await receive()  # http.disconnect, when the client goes
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, receive_buffered, send)
