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
from tests import fakes

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


def test_unknown_ensemble_is_a_404_listing_the_configured_ones(handler: EnsembleLLM) -> None:
    # A 404, as OpenAI and the server answer an unknown model (the router does not retry it elsewhere).
    with pytest.raises(litellm.NotFoundError, match="'nope' is not configured; configured: fake, steps") as err:
        litellm.completion(model="ensemble/nope", messages=USER)
    assert err.value.status_code == 404


def test_unsupported_parameter_is_refused_not_ignored(handler: EnsembleLLM) -> None:
    # LiteLLM refuses it itself now that it knows what the provider supports; the handler's own check stays
    # for callers that bypass LiteLLM's (allowed_openai_params).
    with pytest.raises(litellm.BadRequestError, match=r"does not support parameters: \['n'\]"):
        litellm.completion(model="ensemble/echo", messages=USER, n=2)
    with pytest.raises(litellm.BadRequestError, match="do not support n > 1"):
        litellm.completion(model="ensemble/echo", messages=USER, n=2, allowed_openai_params=["n"])


def test_members_failing_map_to_a_server_error(handler: EnsembleLLM) -> None:
    fakes.calls["flaky"] = 0  # the next call fails
    with pytest.raises(litellm.InternalServerError, match="temporary outage") as err:
        litellm.completion(model="ensemble/flaky", messages=USER)
    assert err.value.status_code == 500  # as the server answers it (common.error_status)


def test_ensembles_are_built_once_not_per_call(handler: EnsembleLLM) -> None:
    litellm.completion(model="ensemble/echo", messages=USER)
    first = handler.hub.ensemble("echo")
    calls = first.members["echo"].calls  # type: ignore[attr-defined]  # the hub of a config file is shared
    litellm.completion(model="ensemble/echo", messages=USER)
    assert handler.hub.ensemble("echo") is first
    assert first.members["echo"].calls == calls + 1  # type: ignore[attr-defined]


def test_register_takes_a_parsed_config_and_replaces_the_handler() -> None:
    cfg = parse_config({"ensembles": {"solo": {
        "members": [{"name": "echo", "backend": "function", "options": {"fn": "tests.fakes:echo"}}],
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


# -- what LiteLLM knows about the provider -------------------------------------------------------------------
def test_supported_params_are_truthful_so_drop_params_works(handler: EnsembleLLM) -> None:
    supported = litellm.get_supported_openai_params(model="echo", custom_llm_provider="ensemble")
    assert supported is not None
    assert {"max_tokens", "temperature", "tools", "stream"} <= set(supported)
    assert not {"logprobs", "n", "response_format"} & set(supported)
    assert litellm.get_supported_openai_params(model="gpt-4o-mini", custom_llm_provider="openai") != supported
    with pytest.raises(litellm.UnsupportedParamsError, match="logprobs"):
        litellm.completion(model="ensemble/echo", messages=USER, logprobs=True)
    reply = litellm.completion(model="ensemble/echo", messages=USER, logprobs=True, top_logprobs=2, n=3,
                               response_format={"type": "json_object"}, drop_params=True)
    assert reply.choices[0].message.content == "You said: What is 6 * 7?"


def test_model_info_cost_and_function_calling(handler: EnsembleLLM) -> None:
    assert litellm.supports_function_calling("ensemble/steps") is True
    info = litellm.get_model_info("ensemble/steps")
    assert info["litellm_provider"] == "ensemble" and info["mode"] == "chat"
    assert info["input_cost_per_token"] == 0 and info["output_cost_per_token"] == 0  # local members cost nothing
    reply = litellm.completion(model="ensemble/steps", messages=USER)
    assert litellm.completion_cost(reply) == 0.0


def test_api_members_are_priced_from_litellms_cost_map() -> None:
    mini = litellm.get_model_info("openai/gpt-4o-mini")
    cfg = parse_config({"ensembles": {"mixed": {
        "members": [
            {"name": "api", "backend": "litellm", "model": "openai/gpt-4o-mini",
             "options": {"api_base": "http://127.0.0.1:9/v1"}},
            {"name": "local", "backend": "function", "options": {"fn": "tests.fakes:echo"}},
        ],
        "scorer": {"type": "function", "options": {"fn": "tests.fakes:prefers_steps"}},
    }}})
    register(cfg)  # reads the config only: nothing is built or called
    info = litellm.get_model_info("ensemble/mixed")
    assert info["input_cost_per_token"] == mini["input_cost_per_token"] > 0
    assert info["output_cost_per_token"] == mini["output_cost_per_token"]
    assert info["max_input_tokens"] == mini["max_input_tokens"]
    cost = litellm.completion_cost(model="ensemble/mixed", prompt="What is 6 * 7?", completion="42")
    assert cost > 0


def test_usage_has_the_kept_tokens_and_every_members_generated_tokens(handler: EnsembleLLM) -> None:
    reply = litellm.completion(model="ensemble/steps", messages=USER)
    assert reply.usage.completion_tokens == 16  # the kept answer
    assert reply.usage.member_tokens == {"stepper": 16, "rambler": 24}  # what each member wrote


@pytest.mark.parametrize("how", ["extra_body", "param"])
def test_trace_on_request_through_the_sdk(handler: EnsembleLLM, how: str) -> None:
    ask = {"extra_body": {"ensemble_trace": True}} if how == "extra_body" else {"ensemble_trace": "full"}
    reply = litellm.completion(model="ensemble/steps", messages=USER, **ask)
    (trace,) = reply.ensemble_trace
    assert [r["winner"] for r in trace["rounds"]] == ["stepper"] * 3
    assert ("candidates" in trace["rounds"][0]) == (how == "param")
    assert getattr(litellm.completion(model="ensemble/steps", messages=USER), "ensemble_trace", None) is None
    chunks = list(litellm.completion(model="ensemble/steps", messages=USER, stream=True, **ask))
    traces = [c.ensemble_trace for c in chunks if getattr(c, "ensemble_trace", None)]
    assert len(traces) == 1 and traces[0][0]["strategy"] == "segment"


def test_one_member_ensemble_streams_tokens_as_they_come(handler: EnsembleLLM) -> None:
    import time

    started = time.perf_counter()
    arrived = []
    for chunk in litellm.completion(model="ensemble/typist", messages=USER, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrived.append((chunk.choices[0].delta.content, time.perf_counter() - started))
    assert [text for text, _ in arrived] == fakes.TYPED
    assert arrived[-1][1] - arrived[0][1] > 0.1  # spread over the writing, not one burst at the end
