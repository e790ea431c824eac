"""An ASGI app served by uvicorn in a background thread, on a free port: for tests, benchmarks and examples.

The socket is bound before uvicorn starts and handed to it, so no other process can take the port in between
(asking for a free port, closing it and letting uvicorn bind it again would race).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn

__all__ = ["ThreadedServer", "free_port", "free_socket", "serve_in_thread", "stop_process", "wait_until_up"]


def free_socket(host: str = "127.0.0.1") -> socket.socket:
    """An IPv4 TCP socket bound to a port of ``host`` that the system picked as free (not listening yet)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A port of ``host`` that was free a moment ago, for a server started in another process."""
    with free_socket(host) as sock:
        return int(sock.getsockname()[1])


def wait_until_up(url: str, *, process: Any = None, timeout_s: float = 300.0, interval_s: float = 1.0) -> None:
    """Poll ``url`` until it answers 200, for a server started in another process.

    Args:
        url: A health or status URL.
        process: The server's ``subprocess.Popen``; its exit ends the wait at once.
        timeout_s: How long to wait.
        interval_s: Pause between polls.

    Raises:
        RuntimeError: the process exited, or the server did not answer in time (callers add their logs).
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server process exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {timeout_s:g} s")
        time.sleep(interval_s)


def stop_process(process: Any, timeout_s: float = 20.0) -> None:
    """Terminate a server process, killing it if it has not exited after ``timeout_s``."""
    import subprocess

    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass(frozen=True)
class ThreadedServer:
    """A server started by `serve_in_thread`."""

    server: uvicorn.Server
    port: int
    url: str  # http://host:port, without a trailing slash


@contextlib.contextmanager
def serve_in_thread(
    app: Any, *, host: str = "127.0.0.1", graceful_s: int = 2, start_timeout_s: float = 30
) -> Iterator[ThreadedServer]:
    """Run ``app`` with uvicorn on a free port of ``host``, in a daemon thread, until the block ends.

    Args:
        app: The ASGI app.
        host: Interface to bind; the default serves this machine only.
        graceful_s: How long open requests may take to finish at shutdown before they are cancelled.
        start_timeout_s: How long to wait for uvicorn to start listening.

    Yields:
        The running server, its port and its base URL.

    Raises:
        RuntimeError: uvicorn did not start (its thread ended, or the wait timed out).
    """
    import uvicorn

    sock = free_socket(host)
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=graceful_s))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {host}:{port}")
            time.sleep(0.02)
        yield ThreadedServer(server=server, port=port, url=f"http://{host}:{port}")
    finally:
        server.should_exit = True
        # Returns as soon as the thread ends; the cap only counts when an app's own shutdown hangs.
        thread.join(15)
        sock.close()
