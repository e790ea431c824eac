"""A real uvicorn server on 127.0.0.1 (random free port, in a thread) over fake or real ensembles.

Without the server extra the server tests are not collected, and test_extras.py says so in the skip list.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MISSING = [m for m in ("fastapi", "uvicorn", "openai", "httpx2") if importlib.util.find_spec(m) is None]
if MISSING:  # only test_extras.py is collected, and it says why the rest is not
    collect_ignore = [p.name for p in Path(__file__).parent.glob("test_*.py") if p.name != "test_extras.py"]

from ensemblehub_core.config import parse_config  # noqa: E402
from ensemblehub_core.registry import register  # noqa: E402

# Test-only backends (the registry is name → import path, so registering them is all it takes).
register("backend", "fake-batch", "tests.server.fakes:build_batcher")
register("backend", "context-limited", "tests.server.fakes:build_context_limited")
register("backend", "slow-build", "tests.server.fakes:build_slowly")
register("backend", "broken-build", "tests.server.fakes:build_broken")


def fn_member(name: str, fn: str, **options: Any) -> dict[str, Any]:
    return {"name": name, "backend": "function", "options": {"fn": f"tests.server.fakes:{fn}", **options}}


FAST_ENSEMBLES: dict[str, Any] = {
    "duo": {
        "description": "two fake members, the longer segment wins",
        "members": [fn_member("a", "steps"), fn_member("b", "echo")],
        "scorer": {"type": "function", "options": {"fn": "tests.server.fakes:longest"}},
        "strategy": {"name": "segment", "segment_tokens": 8},
    },
    "echo": {"members": [fn_member("e", "echo")], "strategy": "single"},
    "words": {"members": [fn_member("w", "words")], "strategy": {"name": "segment", "segment_tokens": 4}},
    "flaky": {"members": [fn_member("f", "fail_after_first")], "strategy": {"name": "segment", "segment_tokens": 8}},
    "slow": {"members": [fn_member("s", "slow_steps")], "strategy": {"name": "segment", "segment_tokens": 4}},
    "limited": {"members": [{"name": "l", "backend": "context-limited"}], "strategy": "single"},
    "batchy": {"members": [{"name": "bt", "backend": "fake-batch"}], "strategy": "single"},
    "agent": {"members": [fn_member("wa", "weather_agent")], "strategy": "single"},
}


def fast_config(**server: Any) -> Any:
    return parse_config({"defaults": {"max_tokens": 64}, "default_ensemble": "duo",
                         "ensembles": FAST_ENSEMBLES, "server": server})


class Served:
    """A running server: its base URL and its app (for looking at its state)."""

    def __init__(self, url: str, app: Any) -> None:
        self.url = url
        self.app = app

    @property
    def state(self) -> Any:
        return self.app.state.server


@contextlib.contextmanager
def running(app: Any, *, wait_ready: bool = True) -> Iterator[Served]:
    """Run ``app`` with uvicorn on a free port of 127.0.0.1 until the block ends."""
    from ensemblehub_integrations.server.threaded import serve_in_thread

    with serve_in_thread(app, graceful_s=2) as running:
        served = Served(running.url, app)
        if wait_ready:
            wait_until_ready(served.url)
        yield served


def wait_until_ready(url: str, timeout: float = 120) -> None:
    import httpx2

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx2.get(f"{url}/status")
        if r.status_code == 200:
            return
        if r.json().get("status") == "error":
            raise RuntimeError(f"the server failed to load: {r.text}")
        time.sleep(0.1)
    raise RuntimeError("the server did not get ready in time")


@pytest.fixture(scope="package")
def fast_server() -> Iterator[Served]:
    """The fake ensembles, no API key, default limits."""
    from ensemblehub_integrations.server import create_app

    # A generous batch window: on a busy machine concurrent test requests may arrive tens of ms apart.
    with running(create_app(fast_config(batch_window_ms=50), api_key="")) as served:
        yield served


@pytest.fixture()
def client(fast_server: Served) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{fast_server.url}/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.fixture()
def http(fast_server: Served) -> Iterator[Any]:
    import httpx2

    with httpx2.Client(base_url=fast_server.url, timeout=30) as c:
        yield c
