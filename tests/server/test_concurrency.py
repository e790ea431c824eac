"""Concurrency: batching, requests not blocking each other, readiness while loading, disconnects."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ensemblehub_core.config import parse_config
from ensemblehub_integrations.server import create_app
from ensemblehub_integrations.server.scheduler import BatchingRunner, DirectRunner
from tests.server import fakes
from tests.server.conftest import fast_config, running

openai = pytest.importorskip("openai")
httpx2 = pytest.importorskip("httpx2")

Q = [{"role": "user", "content": "hi"}]


async def _ask_all(url: str, model: str, prompts: list[str], **kw: Any) -> list[Any]:
    c = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    try:
        return list(await asyncio.gather(*(
            c.chat.completions.create(model=model, messages=[{"role": "user", "content": p}], **kw)
            for p in prompts)))
    finally:
        await c.close()


def test_concurrent_requests_are_batched(fast_server: Any) -> None:
    fakes.Batcher.batches.clear()
    started = time.perf_counter()
    rs = asyncio.run(_ask_all(fast_server.url, "batchy", [f"q{i}" for i in range(8)],
                              extra_body={"ensemble_trace": True}))
    elapsed = time.perf_counter() - started
    assert [r.choices[0].message.content for r in rs] == [f"echo: q{i}" for i in range(8)]
    assert isinstance(fast_server.state.runners["batchy"], BatchingRunner)
    assert sum(fakes.Batcher.batches) == 8
    assert max(fakes.Batcher.batches) >= 4, fakes.Batcher.batches  # one batch costs 0.3 s whatever its size
    assert elapsed < 8 * 0.3, elapsed
    notes = [r.model_extra["ensemble_trace"][0]["rounds"][0].get("note", "") for r in rs]
    assert any(n.startswith("decoded in a batch of") for n in notes), notes


def test_batches_only_join_requests_with_the_same_settings(fast_server: Any) -> None:
    fakes.Batcher.batches.clear()

    async def main() -> None:
        await asyncio.gather(
            _ask_all(fast_server.url, "batchy", ["a", "b", "c"], max_tokens=5),
            _ask_all(fast_server.url, "batchy", ["d", "e"], max_tokens=7),
        )

    asyncio.run(main())
    assert sum(fakes.Batcher.batches) == 5
    assert max(fakes.Batcher.batches) <= 3  # a batch of 4 or 5 would have mixed the two settings


def test_segment_ensembles_run_concurrently(fast_server: Any) -> None:
    # Each request takes 2 rounds of 0.2 s; four of them together should take about as long as one.
    started = time.perf_counter()
    rs = asyncio.run(_ask_all(fast_server.url, "slow", ["a", "b", "c", "d"], max_tokens=8))
    elapsed = time.perf_counter() - started
    assert all(r.usage.completion_tokens == 8 for r in rs)
    assert isinstance(fast_server.state.runners["slow"], DirectRunner)
    assert elapsed < 4 * 0.4, elapsed


def _config_with(extra: dict[str, Any], preload: Any) -> Any:
    return parse_config({"ensembles": extra, "server": {"preload": preload}})


def test_status_is_loading_then_ready_and_the_loop_stays_free() -> None:
    cfg = _config_with({"big": {"members": [{"name": "m", "backend": "slow-build"}], "strategy": "single"}}, "all")
    with running(create_app(cfg, api_key=""), wait_ready=False) as served:
        r = httpx2.get(f"{served.url}/status")
        assert r.status_code == 503
        assert r.json()["status"] == "loading"
        t0 = time.perf_counter()
        assert httpx2.get(f"{served.url}/health").json() == {"status": "ok"}
        assert time.perf_counter() - t0 < 0.5  # building runs in a worker thread, not on the event loop
        # A request that arrives while loading waits for the build instead of failing.
        c = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
        assert c.chat.completions.create(model="big", messages=Q).choices[0].message.content == "You said: hi"
        r = httpx2.get(f"{served.url}/status")
        assert r.status_code == 200
        assert r.json() == {"status": "ready", "ensembles": {"big": "ready"}, "errors": {}}


def test_status_and_health_report_a_failed_load_without_leaking_its_detail() -> None:
    cfg = _config_with({
        "ok": {"members": [{"name": "e", "backend": "function", "options": {"fn": "tests.server.fakes:echo"}}]},
        "bad": {"members": [{"name": "m", "backend": "broken-build"}]},
    }, "all")
    key = {"Authorization": "Bearer k"}
    with running(create_app(cfg, api_key="k"), wait_ready=False) as served:
        deadline = time.monotonic() + 10
        while (body := httpx2.get(f"{served.url}/status").json())["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert body["status"] == "error"
        assert "weights not found" not in str(body) and "server log" in body["errors"]["bad"]
        assert "weights not found" in httpx2.get(f"{served.url}/status", headers=key).json()["errors"]["bad"]
        assert httpx2.get(f"{served.url}/status").status_code == 503
        health = httpx2.get(f"{served.url}/health")
        assert health.status_code == 503 and health.json() == {"status": "error"}
        r = httpx2.post(f"{served.url}/v1/chat/completions", json={"model": "bad", "messages": Q}, headers=key)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "model_load_failed" and "weights" not in r.text
        r = httpx2.post(f"{served.url}/v1/chat/completions", json={"model": "ok", "messages": Q}, headers=key)
        assert r.status_code == 200


def test_preload_none_is_ready_at_once() -> None:
    cfg = _config_with({"big": {"members": [{"name": "m", "backend": "slow-build"}]}}, "none")
    with running(create_app(cfg, api_key=""), wait_ready=False) as served:
        assert httpx2.get(f"{served.url}/status").status_code == 200


def _calls_settle(state: Any) -> int:
    """Wait until the server has let go of every request; return the slow member's call count then."""
    deadline = time.monotonic() + 5
    while state.admission.active:
        assert time.monotonic() < deadline, "a request was never released"
        time.sleep(0.05)
    return fakes.SLOW_CALLS["n"]


def test_client_disconnect_stops_a_stream(fast_server: Any) -> None:
    body = {"model": "slow", "messages": Q, "stream": True, "max_tokens": 400}  # 100 rounds of 0.2 s
    before = fakes.SLOW_CALLS["n"]
    with httpx2.Client(timeout=30) as c, c.stream("POST", f"{fast_server.url}/v1/chat/completions",
                                                   json=body) as r:
        got = 0
        for line in r.iter_lines():
            if line.startswith("data: ") and ('"content":"s' in line or '"content":" s' in line):
                got += 1
                if got == 2:
                    break
    settled = _calls_settle(fast_server.state)
    time.sleep(0.8)
    assert fakes.SLOW_CALLS["n"] - settled <= 1, "generation went on after the client left"
    assert fakes.SLOW_CALLS["n"] - before < 10


def test_client_disconnect_stops_a_plain_request(fast_server: Any) -> None:
    before = fakes.SLOW_CALLS["n"]
    with pytest.raises(httpx2.TimeoutException):
        httpx2.post(f"{fast_server.url}/v1/chat/completions", timeout=0.7,
                    json={"model": "slow", "messages": Q, "max_tokens": 400})
    settled = _calls_settle(fast_server.state)
    time.sleep(0.8)
    assert fakes.SLOW_CALLS["n"] - settled <= 1, "generation went on after the client left"
    assert fakes.SLOW_CALLS["n"] - before < 10


def test_server_settings_from_config() -> None:
    app = create_app(fast_config(max_pending=3, max_concurrency=2, max_batch_size=5, batch_window_ms=20,
                                 preload=["echo"]), api_key="k")
    s = app.state.server.settings
    assert (s.max_pending, s.max_concurrency, s.max_batch_size, s.batch_window_s) == (3, 2, 5, 0.02)
    assert s.preload == ("echo",)
    assert "k" in s.api_keys
