"""The real ``openai`` client against the server on 127.0.0.1: both endpoints, streamed and not."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

openai = pytest.importorskip("openai")

Q = [{"role": "user", "content": "What is the capital of France?"}]
FULL = "Paris is the capital.\n\nIt is in France.\n\nThe answer is Paris."


def test_models_lists_the_configured_ensembles(client: Any) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == ["duo", "echo", "words", "flaky", "slow", "limited", "batchy", "agent"]
    duo = client.models.retrieve("duo")
    assert duo.owned_by == "ensemblehub"
    assert duo.model_extra["members"] == ["a", "b"]
    assert duo.model_extra["strategy"] == "segment"


def test_chat_completion(client: Any) -> None:
    r = client.chat.completions.create(model="duo", messages=[{"role": "user", "content": "hi"}])
    assert r.object == "chat.completion"
    assert r.model == "duo"
    assert r.id.startswith("chatcmpl-")
    (choice,) = r.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == FULL
    assert choice.finish_reason == "stop"
    u = r.usage
    assert u.completion_tokens > 0 and u.prompt_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert getattr(r, "ensemble_trace", None) is None  # only when asked for


def test_chat_trace_extension(client: Any) -> None:
    r = client.chat.completions.create(model="duo", messages=Q, extra_body={"ensemble_trace": True})
    (trace,) = r.model_extra["ensemble_trace"]
    assert trace["ensemble"] == "duo" and trace["strategy"] == "segment"
    assert [rd["winner"] for rd in trace["rounds"]] == ["b"]  # the echo is longer than the first step
    assert set(trace["rounds"][0]["scores"]) == {"a", "b"}
    full = client.chat.completions.create(model="duo", messages=Q, extra_body={"ensemble_trace": "full"})
    cands = full.model_extra["ensemble_trace"][0]["rounds"][0]["candidates"]
    assert {c["member"] for c in cands} == {"a", "b"}


def test_max_tokens_and_length_finish(client: Any) -> None:
    r = client.chat.completions.create(model="words", messages=Q, max_tokens=6)
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content.split() == [f"w{i}" for i in range(6)]
    assert r.usage.completion_tokens == 6
    r = client.chat.completions.create(model="words", messages=Q, max_completion_tokens=3)
    assert r.usage.completion_tokens == 3


def test_stop_strings(client: Any) -> None:
    r = client.chat.completions.create(model="words", messages=Q, max_tokens=50, stop=["w5"])
    assert r.choices[0].message.content.strip() == "w0 w1 w2 w3 w4"
    assert r.choices[0].finish_reason == "stop"
    r = client.completions.create(model="words", prompt="x", max_tokens=50, stop="w2")
    assert r.choices[0].text.strip() == "w0 w1"


def test_n_choices_and_seed(client: Any) -> None:
    r = client.chat.completions.create(model="duo", messages=Q, n=3, seed=7, temperature=0.5)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content for c in r.choices)
    one = client.chat.completions.create(model="duo", messages=Q)
    assert r.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
    assert r.usage.completion_tokens == 3 * one.usage.completion_tokens


def test_bare_prompt_in_chat(client: Any) -> None:
    r = client.chat.completions.create(model="echo", messages=[], extra_body={"prompt": "hello there"})
    assert r.choices[0].message.content == "You said: hello there"


def test_bare_prompt_without_messages_field(http: Any) -> None:
    r = http.post("/v1/chat/completions", json={"prompt": "hello there", "model": "echo"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "You said: hello there"
    r = http.post("/v1/chat/completions", json={"prompt": "no model given"})  # refused: name an ensemble
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_message_content_parts_and_roles(client: Any) -> None:
    msgs = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "part one, "}, {"type": "text", "text": "part two"}]},
    ]
    r = client.chat.completions.create(model="echo", messages=msgs)
    assert r.choices[0].message.content == "You said: part one, part two"


def test_completions(client: Any) -> None:
    r = client.completions.create(model="echo", prompt="Say something", max_tokens=16)
    assert r.object == "text_completion"
    assert r.choices[0].text == "You said: Say something"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completions_prompt_list_n_and_echo(client: Any) -> None:
    r = client.completions.create(model="echo", prompt=["one", "two"], n=2, echo=True)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == ["oneYou said: one"] * 2 + ["twoYou said: two"] * 2


def _collect(stream: Any) -> list[Any]:
    return list(stream)


def test_chat_stream(client: Any) -> None:
    chunks = _collect(client.chat.completions.create(
        model="duo", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    texts = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert texts == ["Paris is the capital.\n\n", "It is in France.\n\n", "The answer is Paris."]  # segment by segment
    assert chunks[-2].choices[0].finish_reason == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage.completion_tokens > 0
    assert usage_chunk.usage.total_tokens == usage_chunk.usage.prompt_tokens + usage_chunk.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_without_usage_and_with_trace(client: Any) -> None:
    chunks = _collect(client.chat.completions.create(
        model="duo", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_body={"ensemble_trace": True}))
    assert chunks[-1].choices[0].finish_reason == "stop"
    rounds = [c.model_extra["ensemble_trace"]["round"] for c in chunks if "round" in (c.model_extra or {}).get(
        "ensemble_trace", {})]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert chunks[-1].model_extra["ensemble_trace"]["strategy"] == "segment"


def test_chat_stream_n(client: Any) -> None:
    chunks = _collect(client.chat.completions.create(model="duo", messages=[{"role": "user", "content": "hi"}],
                                                     stream=True, n=2))
    by_index: dict[int, str] = {0: "", 1: ""}
    finished = set()
    for c in chunks:
        for ch in c.choices:
            by_index[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finished.add(ch.index)
    assert by_index == {0: FULL, 1: FULL}
    assert finished == {0, 1}


def test_completions_stream(client: Any) -> None:
    chunks = _collect(client.completions.create(model="duo", prompt="hi", stream=True,
                                                stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == FULL
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 0


def test_raw_sse_ends_with_done(http: Any) -> None:
    body = {"model": "echo", "messages": Q, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    assert all(ln.startswith("data: ") for ln in lines)
    first = json.loads(lines[0].removeprefix("data: "))
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_async_client_concurrent_requests(fast_server: Any) -> None:
    async def main() -> list[str]:
        c = openai.AsyncOpenAI(base_url=f"{fast_server.url}/v1", api_key="unused", max_retries=0)
        rs = await asyncio.gather(*(c.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": f"q{i}"}]) for i in range(10)))
        await c.close()
        return [r.choices[0].message.content for r in rs]

    assert asyncio.run(main()) == [f"You said: q{i}" for i in range(10)]


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def test_tool_calls_round_trip(client: Any) -> None:
    msgs: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model="agent", messages=msgs, tools=TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert not choice.message.content
    msgs += [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
             {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    r = client.chat.completions.create(model="agent", messages=msgs, tools=TOOLS)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == "The weather in Paris: sunny, 21 C."


def test_tool_calls_streamed(client: Any) -> None:
    chunks = _collect(client.chat.completions.create(
        model="agent", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS, stream=True))
    calls = [tc for c in chunks for ch in c.choices for tc in (ch.delta.tool_calls or [])]
    assert [(tc.index, tc.function.name) for tc in calls] == [(0, "get_weather")]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert "<tool_call>" not in "".join(ch.delta.content or "" for c in chunks for ch in c.choices)
