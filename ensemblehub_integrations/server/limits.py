"""`BodyLimit`: request bodies larger than the configured bound get a 413 before any of it is parsed, and
bodies that arrive too slowly a 408."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ensemblehub_integrations.server.errors import APIError

__all__ = ["BodyLimit"]


class BodyLimit:
    """ASGI middleware: reads each HTTP request body up to ``max_bytes`` and refuses a larger one with 413.

    A declared ``Content-Length`` over the bound is refused without reading; a chunked body is counted as it
    arrives. The accepted body is handed to the app unchanged, and later ``receive`` calls (disconnect
    notices, which streaming responses watch) go through.

    Args:
        app: The ASGI app.
        max_bytes: The largest body accepted.
        timeout_s: How long the whole body may take to arrive (a client that stalls holds a socket).
    """

    def __init__(self, app: Any, max_bytes: int, timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_s is None else loop.time() + self.timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), None if deadline is None else deadline - loop.time())
            except TimeoutError:
                await self._refuse(send, APIError(
                    408, f"the request body did not arrive within {self.timeout_s:g} s; send it at once",
                    code="request_timeout"))
                return
            if message["type"] != "http.request":  # the client left before sending it all
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        pending: list[dict[str, Any]] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> dict[str, Any]:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any, err: APIError | None = None) -> None:
        err = err or APIError(413, f"the request body is larger than the server's limit of {self.max_bytes} bytes; "
                              "send a shorter prompt (or raise server.max_body_mb)", code="request_too_large")
        body = json.dumps(err.body()).encode()
        await send({"type": "http.response.start", "status": err.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
