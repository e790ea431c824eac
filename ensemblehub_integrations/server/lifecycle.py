"""A replica's life: bind before loading, time out slow clients, drain on SIGTERM, exit 0.

- `bind` checks the address and takes the port before any model is loaded, so a wrong ``--port`` or a port
  already in use fails in a second, not after the weights have loaded.
- `guarded_protocol` is uvicorn's HTTP/1.1 protocol with a deadline for a request's headers: a client that
  opens a connection and sends its headers slowly (or never) is disconnected (the body has its own deadline
  in `ensemblehub_integrations.server.limits.BodyLimit`).
- `ReplicaServer` is a uvicorn server whose first SIGTERM (or SIGINT) starts a drain: new requests get a 503
  with ``Retry-After`` and ``/health`` says so (a router sends them elsewhere), requests in flight may finish
  within the grace period, then the ones left are ended cleanly (a 503, or an error event on a stream) and the
  process exits 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ensemblehub_core.exceptions import EnsembleHubError

__all__ = ["ReplicaServer", "bind", "guarded_protocol"]

log = logging.getLogger("ensemblehub.server")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``.

    Raises:
        EnsembleHubError: the port is out of range, or the address cannot be bound (in use, not this machine's).
    """
    if not 0 <= port <= 65535:
        raise EnsembleHubError(f"port {port} is out of range; choose one from 1 to 65535 (0: any free port)")
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may reuse a port in TIME_WAIT
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = "another process is listening there; stop it or choose another --port" \
            if exc.errno in (98, 48) else "check --host and --port"
        raise EnsembleHubError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; {hint}") from None
    sock.set_inheritable(True)
    return sock


def guarded_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol, closing connections whose request headers take over ``header_timeout_s``."""

    class GuardedH11(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the next request on a kept-alive connection has begun
            super().data_received(data)

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:  # a whole header block arrived
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                log.info("closing a connection whose request headers took over %g s", header_timeout_s)
                self.transport.close()

    return GuardedH11


class ReplicaServer(uvicorn.Server):
    """uvicorn's server with a drain on the first SIGTERM/SIGINT (see the module docstring).

    Args:
        config: uvicorn's config.
        state: The app's `ServerState` (what is in flight, and the drain flag the routes read).
        grace_s: How long requests in flight may run on after the signal.
    """

    def __init__(self, config: uvicorn.Config, *, state: Any, grace_s: float) -> None:
        super().__init__(config)
        self.state = state
        self.grace_s = grace_s
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded as uvicorn's captured signal: uvicorn would raise it again after shutting down, and
        # the process would end by the signal instead of exiting 0.
        if self._draining or self._loop is None or not self.started:
            self.should_exit = True
            self.force_exit = self._draining
            return
        self._draining = True
        log.warning("signal %d: draining; new requests get a 503, requests in flight have %g s", sig, self.grace_s)
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain()))  # type: ignore[union-attr]

    async def _drain(self) -> None:
        self.state.draining = True
        deadline = time.monotonic() + self.grace_s
        while self.state.admission.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = self.state.admission.active
        if left:
            log.warning("grace period over: ending %d requests still in flight", left)
            self.state.end_inflight()
            await asyncio.sleep(0.2)  # their error responses and events go out
        self.should_exit = True
