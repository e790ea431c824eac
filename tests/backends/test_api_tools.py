"""Tools through API members: offered natively to chat endpoints, read back from ``tool_calls``.

A small OpenAI-compatible server on 127.0.0.1 answers a request that carries ``tools`` with a native
``tool_calls`` answer (plain or streamed), and a conversation ending in a tool result with text; it records every
request body so the tests can check what was sent. Requests go through the real ``openai`` and LiteLLM clients.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from benchmarks.openai_stub import Served, serve_in_thread
from ensemblehub_core.engine import Ensemble
from ensemblehub_core.generators.base import Generator, SegmentRequest
from ensemblehub_core.tools import ToolSpec, extract_tool_calls
from ensemblehub_core.types import Message
from tests.backends.conftest import scorer
from tests.backends.test_api_backends import member

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather at a place.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
QUESTION = "What is the weather in Paris?"
FINAL = "It is sunny in Paris."
#: Where the server's model says the weather is asked for, by the model name a request carries.
CITIES = {"rome-model": "Rome"}
#: A conversation after the call: the call (OpenAI wire form) and its result.
FOLLOW_UP: list[dict[str, Any]] = [
    {"role": "user", "content": QUESTION},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}},
    ]},
    {"role": "tool", "tool_call_id": "call_7", "name": "get_weather", "content": "sunny, 21 C"},
]


def _tool_app() -> FastAPI:
    """The server: a call when offered tools (the forced one, else the first), text after a tool result."""
    app = FastAPI()
    app.state.bodies = []

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return "data: " + json.dumps({"id": "t", "object": "chat.completion.chunk", "created": 0, "model": "m",
                                      "choices": [choice]}) + "\n\n"

    def streamed(message: dict[str, Any], finish: str) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            if message.get("tool_calls"):
                call = message["tool_calls"][0]
                args = call["function"]["arguments"]
                head = {**call, "index": 0, "function": {"name": call["function"]["name"], "arguments": ""}}
                yield chunk({"role": "assistant", "content": None, "tool_calls": [head]})
                for part in (args[: len(args) // 2], args[len(args) // 2 :]):  # arguments arrive in pieces
                    yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
            else:
                yield chunk({"role": "assistant", "content": message["content"]})
            yield chunk({}, finish)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        app.state.bodies.append(body)
        tools, choice = body.get("tools"), body.get("tool_choice")
        message: dict[str, Any] = {"role": "assistant", "content": FINAL}
        finish = "stop"
        if tools and body["messages"][-1]["role"] != "tool":
            name = choice["function"]["name"] if isinstance(choice, dict) else tools[0]["function"]["name"]
            args = {"location": CITIES.get(body["model"], "Paris")} if name == "get_weather" else {}
            call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish = "tool_calls"
        if body.get("stream"):
            return streamed(message, finish)
        return {"id": "t", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32}}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        app.state.bodies.append(body)
        call = '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris"}}\n</tool_call>'
        prefill = '<tool_call>\n{"name": "get_weather", "arguments": {"'
        text = call.removeprefix(prefill) if body["prompt"].endswith(prefill) else call
        return {"id": "t", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32}}

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    with serve_in_thread(_tool_app()) as s:
        yield s


def bodies(server: Served) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = server.app.state.bodies
    return out


def calls_of(ens: Ensemble, prompt: Any, **params: Any) -> list[tuple[str, dict[str, Any]]]:
    result = ens.generate(prompt, max_tokens=64, **params)
    return [(c.name, c.arguments) for c in result.tool_calls]


MEMBERS = [
    pytest.param("openai", {}, id="openai"),
    pytest.param("openai", {"stream": True}, id="openai-stream"),
    pytest.param("litellm", {}, id="litellm"),
]


# -- tools go out natively, calls come back -------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "options"), MEMBERS)
def test_tools_are_sent_natively_and_calls_come_back(server: Served, kind: str, options: dict[str, Any]) -> None:
    ens = Ensemble([member(kind, "api", server.api_base, **options)], strategy="single")
    result = ens.generate(QUESTION, max_tokens=64, tools=[WEATHER])
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("get_weather", {"location": "Paris"})]
    assert result.text == "" and "<tool_call>" not in result.text
    body = bodies(server)[-1]
    assert body["tools"] == [WEATHER] and body["tool_choice"] == "auto"
    assert body["messages"] == [{"role": "user", "content": QUESTION}]  # no tool text in the prompt
    # The candidate carries the call in the text convention the engine reads from every member.
    assert result.trace[0].candidates[0].text.startswith("<tool_call>\n")
    assert result.trace[0].candidates[0].finish_reason == "eos"


@pytest.mark.parametrize(("kind", "options"), MEMBERS)
def test_a_forced_choice_is_sent_as_tool_choice(server: Served, kind: str, options: dict[str, Any]) -> None:
    ens = Ensemble([member(kind, "api", server.api_base, **options)], strategy="single")
    assert calls_of(ens, QUESTION, tools=[WEATHER, TIME], tool_choice="get_time") == [("get_time", {})]
    assert bodies(server)[-1]["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert calls_of(ens, QUESTION, tools=[WEATHER, TIME], tool_choice="required") == [
        ("get_weather", {"location": "Paris"})]
    body = bodies(server)[-1]
    assert body["tool_choice"] == "required" and body["messages"] == [{"role": "user", "content": QUESTION}]
    assert calls_of(ens, QUESTION, tools=[WEATHER], tool_choice="none") == []  # hidden, as from local members
    assert "tools" not in bodies(server)[-1]


def test_segment_rounds_and_a_vote_over_api_calls(server: Served) -> None:
    paris = [member("openai", "a", server.api_base), member("litellm", "b", server.api_base)]
    segment = Ensemble(paris, scorer=scorer(), strategy="segment", strategy_params={"segment_tokens": 8})
    assert calls_of(segment, QUESTION, tools=[WEATHER]) == [("get_weather", {"location": "Paris"})]
    rome = member("openai", "c", server.api_base)
    rome.model = "rome-model"  # type: ignore[attr-defined]
    vote = Ensemble([*paris, rome], scorer=scorer(), strategy="vote",
                    strategy_params={"extractor": "ensemblehub_core.tools:extract_tool_calls"})
    result = vote.generate(QUESTION, max_tokens=64, tools=[WEATHER])
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("get_weather", {"location": "Paris"})]
    top = result.extra["votes"][0]
    assert top["count"] == 2 and sorted(top["members"]) == ["a", "b"]  # same call, normalised, from both APIs


def test_broken_arguments_stay_text(server: Served) -> None:
    from ensemblehub_core.generators._api import finish_candidate

    cand = finish_candidate("api", "", SegmentRequest(max_new_tokens=8), server_finish="length",
                            completion_tokens=8, prompt_tokens=1, started=0.0,
                            calls=[("get_weather", '{"loca')])
    assert cand.finish_reason == "length"
    assert extract_tool_calls(cand.text, ToolSpec.from_params([WEATHER])) is None


# -- tool turns of the conversation ---------------------------------------------------------------------------
def _sent_turns(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    assistant, tool = body["messages"][1], body["messages"][2]
    call = assistant["tool_calls"][0]
    return ({"id": call["id"], "type": call["type"], "name": call["function"]["name"],
             "arguments": json.loads(call["function"]["arguments"])}, tool)


@pytest.mark.parametrize(("kind", "options"), MEMBERS)
def test_a_follow_up_sends_the_call_and_its_result_natively(server: Served, kind: str,
                                                            options: dict[str, Any]) -> None:
    ens = Ensemble([member(kind, "api", server.api_base, **options)], strategy="single")
    result = ens.generate(FOLLOW_UP, max_tokens=64, tools=[WEATHER])
    assert result.text == FINAL and result.tool_calls == []
    body = bodies(server)[-1]
    assert body["tools"] == [WEATHER] and len(body["messages"]) == 3
    call, tool = _sent_turns(body)
    assert call == {"id": "call_7", "type": "function", "name": "get_weather", "arguments": {"location": "Paris"}}
    assert isinstance(body["messages"][1]["tool_calls"][0]["function"]["arguments"], str)  # JSON, as on the wire
    assert tool == {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_7"}


# -- completions mode: the text route -------------------------------------------------------------------------
@pytest.mark.parametrize("choice", ["auto", "get_weather"])
def test_completions_mode_gets_tools_as_text(server: Served, choice: str) -> None:
    ens = Ensemble([member("openai", "api", server.api_base, mode="completions")], strategy="single")
    assert calls_of(ens, QUESTION, tools=[WEATHER], tool_choice=choice) == [("get_weather", {"location": "Paris"})]
    body = bodies(server)[-1]
    assert "tools" not in body and "tool_choice" not in body
    assert "# Tools" in body["prompt"] and '"name": "get_weather"' in body["prompt"] and QUESTION in body["prompt"]
    assert body["prompt"].endswith('"arguments": {"') == (choice != "auto")  # a forced call's start is prefilled
    ens.generate(FOLLOW_UP, max_tokens=64, tools=[WEATHER])
    prompt = bodies(server)[-1]["prompt"]
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt and '"location": "Paris"' in prompt


# -- a face on top ---------------------------------------------------------------------------------------------
def test_langchain_bind_tools_over_an_api_member(server: Served) -> None:
    pytest.importorskip("langchain_core", reason="the langchain extra is not installed")
    from langchain_core.messages import HumanMessage, ToolMessage

    from ensemblehub_integrations.langchain import ChatEnsemble

    gens: list[Generator] = [member("openai", "api", server.api_base)]
    llm = ChatEnsemble.from_members(gens, strategy="single", max_tokens=64).bind_tools([WEATHER])
    ai = llm.invoke([HumanMessage(QUESTION)])
    assert [(c["name"], c["args"]) for c in ai.tool_calls] == [("get_weather", {"location": "Paris"})]
    done = llm.invoke([HumanMessage(QUESTION), ai, ToolMessage("sunny, 21 C", tool_call_id=ai.tool_calls[0]["id"])])
    assert done.content == FINAL
    call, tool = _sent_turns(bodies(server)[-1])
    assert call["id"] == ai.tool_calls[0]["id"] and tool["tool_call_id"] == call["id"]


def test_members_without_tools_send_no_tool_fields(server: Served) -> None:
    gen = member("openai", "api", server.api_base)
    Ensemble([gen], strategy="single").generate([Message(role="user", content=QUESTION)], max_tokens=8)
    assert "tools" not in bodies(server)[-1] and "tool_choice" not in bodies(server)[-1]
