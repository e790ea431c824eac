"""A member that hangs (accepts the connection, never answers) or is down, among three, under load through
`ensemblehub serve`: each request pays at most one timeout for it, not one per round, and once the member's
circuit is open (``policy.cooldown_s``) new requests do not wait for it at all."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ensemblehub_core.config import parse_config
from tests.server.conftest import fn_member, running

TIMEOUT_S = 1.5
ROUNDS = 4
CLIENTS = 16


class Listener:
    """A TCP server on 127.0.0.1 that accepts connections and never writes a byte (a hung member)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            self._open.append(conn)  # held open, never answered

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._open:
            conn.close()
        self.sock.close()


@contextlib.contextmanager
def hung_member() -> Iterator[Listener]:
    listener = Listener()
    try:
        yield listener
    finally:
        listener.close()


def _config(port: int, cooldown_s: float) -> Any:
    far = {"name": "far", "backend": "openai", "model": "remote",
           "options": {"api_base": f"http://127.0.0.1:{port}/v1", "timeout_s": 60}}
    ensemble = {
        "members": [fn_member("a", "words"), fn_member("b", "words"), far],
        "scorer": {"type": "function", "options": {"fn": "tests.server.fakes:longest"}},
        "strategy": {"name": "segment", "segment_tokens": 4, "max_rounds": ROUNDS, "delimiters": []},
        # retries=2: a timeout is still not retried (it would cost another timeout).
        "policy": {"timeout_s": TIMEOUT_S, "retries": 2, "backoff_s": 0.01, "cooldown_s": cooldown_s},
    }
    # Every client's request runs at once (the default, 4 at a time, would queue the rest behind the timeouts).
    return parse_config({"default_ensemble": "three", "ensembles": {"three": ensemble},
                         "server": {"max_concurrency": CLIENTS}})


def _wave(url: str, n: int) -> list[tuple[float, Any]]:
    """``n`` chat requests from CLIENTS concurrent clients; each one's latency and response."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)

    def one(i: int) -> tuple[float, Any]:
        t0 = time.perf_counter()
        r = client.chat.completions.create(
            model="three", messages=[{"role": "user", "content": f"Count ({i})."}], max_tokens=4 * ROUNDS,
            extra_body={"ensemble_trace": True})
        return time.perf_counter() - t0, r

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(one, range(n)))


def _far_errors(response: Any) -> list[str]:
    (trace,) = response.model_extra["ensemble_trace"]
    rounds = trace["rounds"]
    return [r.get("errors", {}).get("far", "") for r in rounds]


@pytest.mark.slow
def test_a_hung_member_costs_each_request_one_timeout_under_load() -> None:
    from ensemblehub_integrations.server import create_app

    with hung_member() as hung, running(create_app(_config(hung.port, cooldown_s=0), api_key="")) as served:
        results = _wave(served.url, 2 * CLIENTS)
    assert hung.accepted == 2 * CLIENTS  # one connection per request: not one per round, not retried
    for latency, r in results:
        assert r.choices[0].message.content.startswith("w0 w1 w2 w3")
        errors = _far_errors(r)
        assert len(errors) == ROUNDS
        assert errors[0] == f"timed out after {TIMEOUT_S:g} s"
        assert errors[1:] == ["skipped: timed out earlier in this request (policy.timeout_s)"] * (ROUNDS - 1)
        # One timeout, not ROUNDS of them (a busy machine adds queueing, well under a second timeout here).
        assert latency < 2 * TIMEOUT_S, latency


@pytest.mark.slow
def test_an_open_circuit_spares_new_requests_the_timeout() -> None:
    from ensemblehub_integrations.server import create_app

    with hung_member() as hung, running(create_app(_config(hung.port, cooldown_s=600), api_key="")) as served:
        first = _wave(served.url, CLIENTS)  # concurrent: each may pay one timeout before the circuit opens
        opened_after = hung.accepted
        second = _wave(served.url, 2 * CLIENTS)
    assert 3 <= opened_after <= CLIENTS  # policy.max_failures (3) timeouts in a row open the circuit
    assert hung.accepted == opened_after  # no request after that waits for the hung member
    assert all(latency < 2 * TIMEOUT_S for latency, _ in first)
    for latency, r in second:
        assert r.choices[0].message.content.startswith("w0 w1 w2 w3")
        assert all(e.startswith("skipped: cooling down") for e in _far_errors(r))
        assert latency < TIMEOUT_S, latency


@pytest.mark.slow
def test_a_member_that_is_down_costs_no_timeout() -> None:
    from ensemblehub_integrations.server import create_app

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with running(create_app(_config(port, cooldown_s=0), api_key="")) as served:
        results = _wave(served.url, CLIENTS)
    for latency, r in results:
        assert r.choices[0].message.content.startswith("w0 w1 w2 w3")
        errors = _far_errors(r)
        assert errors[0].startswith("connection to http://127.0.0.1:") and "failed" in errors[0]
        assert latency < TIMEOUT_S, latency
