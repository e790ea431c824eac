"""Real OpenAI-compatible servers on 127.0.0.1 for the API backends (fixed-text ones, fault ones, a real model)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed: pip install 'ensemblehub[server]'")
pytest.importorskip("uvicorn", reason="the server extra is not installed: pip install 'ensemblehub[server]'")
pytest.importorskip("openai", reason="the api extra is not installed: pip install 'ensemblehub[api]'")

from benchmarks.openai_stub import Faults, Served, create_app, fixed_text, serve_in_thread
from ensemblehub_core.scorers.base import ScoreRequest
from ensemblehub_core.scorers.function import FunctionScorer
from ensemblehub_core.types import Candidate
from ensemblehub_integrations.server.threaded import free_port

ROOT = Path(__file__).resolve().parents[2]
ANSWER = "Paris is the capital of France.\n\nIt lies on the Seine."


def served(text: str = ANSWER, **faults: Any) -> AbstractContextManager[Served]:
    """A fixed-text server with the given faults (see `Faults`)."""
    return serve_in_thread(create_app(fixed_text(text), faults=Faults(**faults)))


@pytest.fixture
def ok_server() -> Iterator[Served]:
    with served() as s:
        yield s


def longest(request: ScoreRequest, cand: Candidate) -> float:
    return float(len(cand.text))


def scorer() -> FunctionScorer:
    return FunctionScorer("longest", longest)


class KillableServer:
    """A stub server in its own process, so a test can kill it while a request is in flight."""

    def __init__(self, delay_s: float) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.openai_stub", "--port", str(self.port), "--delay", str(delay_s)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.api_base = f"http://127.0.0.1:{self.port}/v1"
        self._wait_ready()

    def _wait_ready(self) -> None:
        import socket

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the stub server process exited at start-up")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("the stub server process did not start")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def killable() -> Iterator[KillableServer]:
    server = KillableServer(delay_s=3.0)
    try:
        yield server
    finally:
        server.kill()
