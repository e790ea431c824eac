"""`EnsembleLLM` through LiteLLM's public API: ``litellm.completion`` / ``acompletion``, streaming or not."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported: stay offline

import litellm

from ensemblehub_core.config import parse_config
from ensemblehub_integrations.litellm import EnsembleLLM, register
from tests.integrations import fakes

FAKE = Path(__file__).parent / "configs" / "fake.yaml"
USER = [{"role": "user", "content": "What is 6 * 7?"}]
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather at a place.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
}}]


@pytest.fixture
def handler() -> EnsembleLLM:
    return register(FAKE)


def test_completion_returns_text_usage_and_model(handler: EnsembleLLM) -> None:
    reply = litellm.completion(model="ensemble/steps", messages=USER, max_tokens=40)
    assert reply.choices[0].message.content == "".join(fakes.STEPS)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "steps"
    usage = reply.usage
    assert usage.completion_tokens == 16 and usage.total_tokens == usage.prompt_tokens + 16
    rounds = reply._hidden_params["ensemble"]["rounds"]
    assert [r["winner"] for r in rounds] == ["stepper"] * 3


def test_streaming_yields_each_segment_then_finish_and_usage(handler: EnsembleLLM) -> None:
    chunks = list(litellm.completion(
        model="ensemble/steps", messages=USER, stream=True, stream_options={"include_usage": True}
    ))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert texts == fakes.STEPS
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = [c.usage for c in chunks if getattr(c, "usage", None)]
    assert usage and usage[-1].completion_tokens == 16


async def test_acompletion(handler: EnsembleLLM) -> None:
    reply = await litellm.acompletion(model="ensemble/echo", messages=USER)
    assert reply.choices[0].message.content == "You said: What is 6 * 7?"
    assert reply.usage.total_tokens > 0


async def test_async_streaming(handler: EnsembleLLM) -> None:
    stream = await litellm.acompletion(model="ensemble/steps", messages=USER, stream=True)
    texts = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert texts == fakes.STEPS


def test_tool_calls_sync_and_streaming(handler: EnsembleLLM) -> None:
    reply = litellm.completion(model="ensemble/fake", messages=USER, tools=WEATHER)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert message.content in ("", None)
    assert message.tool_calls[0].function.name == "get_weather"
    assert json.loads(message.tool_calls[0].function.arguments) == {"location": "some location"}
    chunks = list(litellm.completion(model="ensemble/fake", messages=USER, tools=WEATHER, stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [tc.function.name for tc in calls] == ["get_weather"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_tool_result_in_history_is_answered_from(handler: EnsembleLLM) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "Rome"}'}}
    messages = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    reply = litellm.completion(model="ensemble/fake", messages=messages, tools=WEATHER)
    assert reply.choices[0].message.content == "The tool says: sunny"


def test_unknown_ensemble_lists_the_configured_ones(handler: EnsembleLLM) -> None:
    with pytest.raises(litellm.BadRequestError, match="'nope' is not configured; configured: fake, steps"):
        litellm.completion(model="ensemble/nope", messages=USER)


def test_unsupported_parameter_is_refused_not_ignored(handler: EnsembleLLM) -> None:
    with pytest.raises(litellm.BadRequestError, match="do not support n > 1"):
        litellm.completion(model="ensemble/echo", messages=USER, n=2)


def test_members_failing_map_to_a_server_error(handler: EnsembleLLM) -> None:
    fakes.calls["flaky"] = 0  # the next call fails
    with pytest.raises(litellm.BadGatewayError, match="temporary outage"):
        litellm.completion(model="ensemble/flaky", messages=USER)


def test_ensembles_are_built_once_not_per_call(handler: EnsembleLLM) -> None:
    litellm.completion(model="ensemble/echo", messages=USER)
    first = handler.hub.ensemble("echo")
    litellm.completion(model="ensemble/echo", messages=USER)
    assert handler.hub.ensemble("echo") is first
    assert first.members["echo"].calls == 2  # type: ignore[attr-defined]


def test_register_takes_a_parsed_config_and_replaces_the_handler() -> None:
    cfg = parse_config({"ensembles": {"solo": {
        "members": [{"name": "echo", "backend": "function", "options": {"fn": "tests.integrations.fakes:echo"}}],
        "strategy": "single",
    }}})
    first = register(cfg)
    second = register(cfg)
    handlers = [m["custom_handler"] for m in litellm.custom_provider_map if m["provider"] == "ensemble"]
    assert handlers == [second] and first is not second
    assert litellm.completion(model="ensemble/solo", messages=USER).choices[0].message.content.startswith("You")


@pytest.mark.slow
def test_real_small_model_ensemble_streaming_and_not() -> None:
    register()  # the packaged config: real embedded models
    reply = litellm.completion(
        model="ensemble/duo", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
    )
    assert "Paris" in reply.choices[0].message.content
    assert reply.usage.completion_tokens > 0 and reply.model == "duo"
    chunks = list(litellm.completion(
        model="ensemble/duo", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8, stream=True
    ))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
