"""Graceful shutdown of a real ``ensemblehub serve`` process: SIGTERM drains it, then it exits 0."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ensemblehub_integrations.server.threaded import free_port, stop_process, wait_until_up
from tests.server.conftest import fn_member

httpx2 = pytest.importorskip("httpx2")

ROOT = Path(__file__).resolve().parents[2]
Q = [{"role": "user", "content": "hi"}]
# 4 words a round at 0.2 s a round: max_tokens sets how long a request runs.
ENSEMBLES = {"slow": {"members": [fn_member("s", "slow_steps")], "strategy": {"name": "segment", "segment_tokens": 4}}}


@contextlib.contextmanager
def replica(tmp_path: Path, grace_s: float) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    config = tmp_path / "slow.yaml"
    config.write_text(yaml.safe_dump({"ensembles": ENSEMBLES, "server": {"shutdown_grace_s": grace_s}}))
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ensemblehub_core.cli", "serve", "--config", str(config), "--port", str(port)],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/status", process=proc, timeout_s=120, interval_s=0.2)
        yield proc, url
    finally:
        if proc.poll() is None:
            stop_process(proc, timeout_s=5)


def in_background(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except Exception as exc:  # handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def sse_events(url: str, max_tokens: int) -> list[str]:
    body = {"model": "slow", "messages": Q, "max_tokens": max_tokens, "stream": True}
    with httpx2.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
        return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def test_sigterm_refuses_new_requests_finishes_those_in_flight_and_exits_0(tmp_path: Path) -> None:
    with replica(tmp_path, grace_s=10) as (proc, url):
        plain, plain_box = in_background(lambda: httpx2.post(
            f"{url}/v1/chat/completions", json={"model": "slow", "messages": Q, "max_tokens": 24}, timeout=60))
        stream, stream_box = in_background(lambda: sse_events(url, 24))
        time.sleep(0.5)  # both are running (about 1.2 s each)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        refused = httpx2.post(f"{url}/v1/chat/completions", json={"model": "slow", "messages": Q}, timeout=10)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "shutting_down"
        health = httpx2.get(f"{url}/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "shutting_down"
        for t in (plain, stream):
            t.join(30)
        assert "error" not in plain_box and "error" not in stream_box
        reply = plain_box["value"]
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 24
        events = stream_box["value"]
        assert events[-1] == "[DONE]" and not any('"error"' in e for e in events)
        assert proc.wait(20) == 0


def test_requests_left_at_the_end_of_the_grace_period_end_cleanly(tmp_path: Path) -> None:
    with replica(tmp_path, grace_s=1) as (proc, url):
        plain, plain_box = in_background(lambda: httpx2.post(
            f"{url}/v1/chat/completions", json={"model": "slow", "messages": Q, "max_tokens": 400}, timeout=60))
        stream, stream_box = in_background(lambda: sse_events(url, 400))
        time.sleep(0.5)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in (plain, stream):
            t.join(30)
        assert proc.wait(20) == 0
        assert time.monotonic() - signalled < 10  # the 1 s grace period, not the 20 s the requests wanted
        reply = plain_box["value"]
        assert reply.status_code == 503 and reply.json()["error"]["code"] == "shutting_down"
        events = stream_box["value"]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "shutting_down"
