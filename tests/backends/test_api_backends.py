"""`OpenAICompatGenerator` and `LiteLLMGenerator` against real HTTP servers on 127.0.0.1, faults included.

Every request goes through the real client code (the ``openai`` package, LiteLLM) and a real uvicorn server.
Fault tests assert on what the ensemble answered and on what its trace recorded.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from benchmarks.openai_stub import Served, serve_in_thread
from ensemblehub_core.config import MemberConfig
from ensemblehub_core.context import BuildContext
from ensemblehub_core.engine import Ensemble
from ensemblehub_core.exceptions import AllMembersFailed, CapabilityError, ConfigError, GeneratorError
from ensemblehub_core.generators.base import Generator, SegmentRequest
from ensemblehub_core.pool import ModelPool
from ensemblehub_core.registry import resolve
from ensemblehub_core.strategies.base import MemberPolicy
from ensemblehub_core.types import Message
from tests.backends.conftest import ANSWER, KillableServer, scorer, served

# One event loop for every async test here: API clients cached per loop (ours, LiteLLM's) must not outlive it.
SHARED_LOOP = pytest.mark.asyncio(loop_scope="session")
USER = [Message(role="user", content="What is the capital of France?")]
KINDS = ["openai", "litellm"]


def member(kind: str, name: str, api_base: str, **options: Any) -> Generator:
    """Build a member the way a config does (registry → backend's ``build``)."""
    model = "stub-model" if kind == "openai" else "openai/stub-model"
    cfg = MemberConfig(name=name, backend=kind, model=model, options={"api_base": api_base, **options})
    gen: Generator = resolve("backend", kind)(cfg, BuildContext(pool=ModelPool.default(), members={}))
    return gen


def ensemble(members: list[Generator], policy: MemberPolicy) -> Ensemble:
    return Ensemble(members, scorer=scorer(), strategy="segment",
                    strategy_params={"segment_tokens": 16, "max_rounds": 2}, policy=policy)


# -- requests and answers ------------------------------------------------------------------------------------
@SHARED_LOOP
@SHARED_LOOP
@pytest.mark.parametrize(("kind", "options"), [
    ("openai", {"mode": "chat"}),
    ("openai", {"mode": "chat", "stream": True}),
    ("openai", {"mode": "completions"}),
    ("openai", {"mode": "completions", "stream": True}),
    ("litellm", {}),
])
async def test_segment_stops_after_the_delimiter_and_keeps_it(ok_server: Served, kind: str,
                                                              options: dict[str, Any]) -> None:
    gen = member(kind, "api", ok_server.api_base, **options)
    cand = await gen.complete(USER, "", SegmentRequest(max_new_tokens=32, delimiters=["\n\n"]))
    assert cand.text == "Paris is the capital of France.\n\n"
    assert cand.finish_reason == "delimiter" and cand.member == "api" and cand.token_count > 0


@SHARED_LOOP
@pytest.mark.parametrize("kind", KINDS)
async def test_budget_stop_strings_and_sampling_reach_the_server(ok_server: Served, kind: str) -> None:
    gen = member(kind, "api", ok_server.api_base)
    cand = await gen.complete(USER, "", SegmentRequest(max_new_tokens=3, stop=["capital"], seed=7))
    assert cand.text == "Paris is the" and cand.finish_reason == "length"
    body = ok_server.log.bodies[-1]
    assert body["max_tokens"] == 3 and body["stop"] == ["capital"] and body["seed"] == 7
    assert body["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    cand = await gen.complete(USER, "", SegmentRequest(max_new_tokens=32, stop=["capital"]))
    assert cand.text == "Paris is the " and cand.finish_reason == "eos"  # the server dropped its stop string


@SHARED_LOOP
@SHARED_LOOP
@pytest.mark.parametrize(("mode", "last"), [
    ("assistant", {"role": "assistant", "content": "Paris"}),
    ("prefix_flag", {"role": "assistant", "content": "Paris", "prefix": True}),
])
async def test_chat_prefix_is_sent_as_a_partial_assistant_message(ok_server: Served, mode: str,
                                                                  last: dict[str, Any]) -> None:
    gen = member("openai", "api", ok_server.api_base, prefix_mode=mode)
    await gen.complete(USER, "Paris", SegmentRequest(max_new_tokens=4))
    assert ok_server.log.bodies[-1]["messages"][-1] == last


@SHARED_LOOP
async def test_token_field_for_reasoning_models(ok_server: Served) -> None:
    gen = member("openai", "api", ok_server.api_base, token_field="max_completion_tokens")
    cand = await gen.complete(USER, "", SegmentRequest(max_new_tokens=2))
    assert cand.text == "Paris is" and ok_server.log.bodies[-1]["max_completion_tokens"] == 2
    assert "max_tokens" not in ok_server.log.bodies[-1]


@SHARED_LOOP
async def test_continue_final_message_and_instruction_modes(ok_server: Served) -> None:
    gen = member("openai", "api", ok_server.api_base, prefix_mode="continue_final_message")
    await gen.complete(USER, "Paris", SegmentRequest(max_new_tokens=4))
    body = ok_server.log.bodies[-1]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    gen = member("litellm", "lite", ok_server.api_base, prefix_mode="instruction")
    await gen.complete(USER, "Paris is", SegmentRequest(max_new_tokens=4))
    last = ok_server.log.bodies[-1]["messages"][-1]
    assert last["role"] == "user" and last["content"].endswith("Paris is")


def test_completions_mode_sends_the_prefix_inside_the_prompt(ok_server: Served) -> None:
    gen = member("openai", "api", ok_server.api_base, mode="completions")
    ens = Ensemble([gen], strategy="single")
    result = ens.generate("Say it.", max_tokens=64)
    assert result.text == ANSWER
    assert ok_server.log.bodies[-1]["prompt"] == "Say it."


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="api_base"):
        member("openai", "api", "")
    with pytest.raises(ConfigError, match="mode"):
        member("openai", "api", "http://127.0.0.1:9/v1", mode="telepathy")
    with pytest.raises(ConfigError, match="prefix_mode"):
        member("litellm", "api", "http://127.0.0.1:9/v1", prefix_mode="guess")
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        member("openai", "api", "http://127.0.0.1:9/v1", api_key_env="NOT_SET_ANYWHERE")


def test_token_level_strategies_reject_api_members(ok_server: Served) -> None:
    for kind in KINDS:
        with pytest.raises(CapabilityError, match="api"):
            Ensemble([member(kind, "api", ok_server.api_base)], strategy="unite")


# -- concurrency ---------------------------------------------------------------------------------------------
def test_members_of_a_round_run_concurrently() -> None:
    with served(delay_s=1.0) as a, served(delay_s=1.0) as b, served(delay_s=1.0) as c:
        gens = [member("openai", "a", a.api_base), member("openai", "b", b.api_base),
                member("litellm", "c", c.api_base)]
        ens = Ensemble(gens, scorer=scorer(), strategy="segment",
                       strategy_params={"segment_tokens": 16, "max_rounds": 1})
        ens.generate("Warm-up.", max_tokens=4)  # client set-up is not what this measures
        result = ens.generate("Capital of France?", max_tokens=16)
    assert len(result.trace[0].candidates) == 3
    assert result.trace[0].generate_s < 1.6, result.trace[0].generate_s  # three 1 s calls at once, not 3 s


# -- faults --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_a_member_answering_500_is_retried_then_dropped(ok_server: Served, kind: str) -> None:
    with served(fail_status=500) as bad:
        ens = ensemble([member(kind, "good", ok_server.api_base), member(kind, "bad", bad.api_base)],
                       MemberPolicy(retries=1, backoff_s=0.05))
        result = ens.generate("Capital of France?", max_tokens=16)
        assert len(bad.log.arrivals) == 4  # two rounds, one retry each
    assert result.text.startswith("Paris is the capital of France.")
    for trace in result.trace:
        assert [c.member for c in trace.candidates] == ["good"] and trace.winner == "good"
        assert "HTTP 500" in trace.errors["bad"] and "simulated failure" in trace.errors["bad"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_member_slower_than_the_timeout_is_dropped(ok_server: Served, kind: str) -> None:
    with served(delay_s=5.0) as slow:
        ens = ensemble([member(kind, "good", ok_server.api_base), member(kind, "slow", slow.api_base)],
                       MemberPolicy(timeout_s=0.5))
        started = time.perf_counter()
        result = ens.generate("Capital of France?", max_tokens=16)
        elapsed = time.perf_counter() - started
    assert result.text.startswith("Paris is the capital of France.")
    assert result.trace[0].errors == {"slow": "timed out after 0.5 s"}
    assert elapsed < 3.0  # two rounds of 0.5 s, not 5 s


def test_a_member_whose_server_dies_mid_request_is_dropped(ok_server: Served, killable: KillableServer) -> None:
    ens = ensemble([member("openai", "good", ok_server.api_base), member("openai", "dying", killable.api_base)],
                   MemberPolicy(retries=1, backoff_s=0.05))

    async def run() -> Any:
        task = asyncio.create_task(ens.agenerate("Capital of France?", max_tokens=16))
        await asyncio.sleep(1.0)  # the dying server holds the request (it sleeps 3 s before answering)
        killable.kill()
        return await task

    started = time.perf_counter()
    result = asyncio.run(run())
    assert time.perf_counter() - started < 2.9  # the kill ended the wait: no answer came from the dying server
    assert result.text.startswith("Paris is the capital of France.")
    error = result.trace[0].errors["dying"]
    assert "connection" in error.lower() and killable.api_base in error
    assert result.trace[1].errors["dying"]  # later rounds find nobody listening, and go on without it


@pytest.mark.parametrize("kind", KINDS)
def test_429_retry_after_is_waited_then_the_retry_succeeds(kind: str) -> None:
    with served(fail_status=429, fail_first=1, retry_after="1") as limited:
        # A tiny backoff: only the server's Retry-After can explain a wait of a second.
        ens = ensemble([member(kind, "limited", limited.api_base)], MemberPolicy(retries=2, backoff_s=0.01))
        result = ens.generate("Capital of France?", max_tokens=16)
        arrivals = limited.log.arrivals
    assert result.text.startswith("Paris is the capital of France.")
    assert not result.trace[0].errors and result.trace[0].winner == "limited"
    assert arrivals[1] - arrivals[0] >= 0.95


@pytest.mark.parametrize("kind", KINDS)
def test_every_member_failing_raises_all_members_failed(kind: str) -> None:
    with served(fail_status=500) as a, served(fail_status=503) as b:
        ens = ensemble([member(kind, "a", a.api_base), member(kind, "b", b.api_base)], MemberPolicy())
        with pytest.raises(AllMembersFailed) as info:
            ens.generate("Capital of France?", max_tokens=16)
    assert set(info.value.errors) == {"a", "b"}
    assert "HTTP 500" in info.value.errors["a"] and "HTTP 503" in info.value.errors["b"]


@SHARED_LOOP
async def test_connection_refused_is_a_generator_error() -> None:
    gen = member("openai", "gone", "http://127.0.0.1:9/v1")
    with pytest.raises(GeneratorError, match=r"connection to http://127\.0\.0\.1:9/v1"):
        await gen.complete(USER, "", SegmentRequest(max_new_tokens=4))


# -- secrets -------------------------------------------------------------------------------------------------
def _echo_key_app() -> Any:
    """A server that rejects every key and, like some providers, quotes the key it got in the error."""
    app = FastAPI()
    app.state.seen = []

    async def reject(request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        app.state.seen.append(auth)
        key = auth.removeprefix("Bearer ")
        return JSONResponse({"error": {"message": f"Incorrect API key provided: {key}. Short: {key[:12]}..."}},
                            status_code=401)

    app.add_api_route("/v1/chat/completions", reject, methods=["POST"])
    return app


@pytest.mark.parametrize("kind", KINDS)
def test_an_api_key_from_the_env_never_leaks(monkeypatch: pytest.MonkeyPatch, ok_server: Served, kind: str) -> None:
    key = "sk-test-0123456789abcdefSECRET"
    monkeypatch.setenv("EH_TEST_API_KEY", key)
    with serve_in_thread(_echo_key_app()) as rejecting:
        good = member(kind, "good", ok_server.api_base, api_key_env="EH_TEST_API_KEY")
        bad = member(kind, "bad", rejecting.api_base, api_key_env="EH_TEST_API_KEY")
        ens = ensemble([good, bad], MemberPolicy())
        result = ens.generate("Capital of France?", max_tokens=16)
        seen = rejecting.app.state.seen
        with pytest.raises(AllMembersFailed) as info:
            ensemble([bad], MemberPolicy()).generate("Capital of France?", max_tokens=16)
    assert seen and seen[0] == f"Bearer {key}"  # the key was used...
    assert ok_server.log.headers[-1]["authorization"] == f"Bearer {key}"
    assert "HTTP 401" in result.trace[0].errors["bad"]
    shown = [repr(good), repr(bad), str(good.__dict__), json.dumps(result.to_dict(full_trace=True), default=str),
             repr(result), str(info.value), repr(info.value), str(info.value.errors)]
    for text in shown:  # ...and shows up nowhere
        assert key not in text and key[:12] not in text and key[-12:] not in text
    assert "***" in repr(bad)
