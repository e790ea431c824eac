"""`ChatEnsemble` behaviour beyond the standard suites, on fake members: streaming per segment, callbacks,
usage and metadata, tools, messages, parameters, errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from pydantic import BaseModel

from ensemblehub_core.exceptions import AllMembersFailed, ConfigError, InputError
from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.generators.function import FunctionGenerator
from ensemblehub_core.types import Message
from ensemblehub_integrations.langchain import ChatEnsemble, to_core_messages
from tests import fakes

FAKE = str(Path(__file__).parent / "configs" / "fake.yaml")


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return f"sunny in {location}"


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_invoke_gives_text_usage_and_the_trace_summary() -> None:
    msg = ChatEnsemble(config=FAKE, model="steps").invoke("What is 6 * 7?")
    assert msg.content == "".join(fakes.STEPS)
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] == 16
    meta = msg.response_metadata
    assert (meta["model_name"], meta["model_provider"], meta["finish_reason"]) == ("steps", "ensemblehub", "stop")
    rounds = meta["ensemble"]["rounds"]
    assert [r["winner"] for r in rounds] == ["stepper"] * 3
    assert rounds[0]["scores"] == {"stepper": 1.0, "rambler": 0.0}
    assert meta["ensemble"]["member_tokens"]["rambler"] > 0  # losing candidates are counted as cost


def test_stream_yields_each_segment_and_usage_once_with_one_callback_per_chunk() -> None:
    handler = Tokens()
    chunks = list(ChatEnsemble(config=FAKE, model="steps").stream("Q", config={"callbacks": [handler]}))
    assert [c.content for c in chunks] == fakes.STEPS  # the last piece carries usage: no empty chunk
    assert [c.usage_metadata is not None for c in chunks] == [False, False, True]
    assert chunks[-1].chunk_position == "last" and chunks[-1].response_metadata["model_name"] == "steps"
    assert handler.tokens == fakes.STEPS  # no empty token for the last chunk (usage and metadata)


async def test_astream_matches_stream() -> None:
    handler = Tokens()
    llm = ChatEnsemble(config=FAKE, model="steps")
    chunks = [c async for c in llm.astream("Q", config={"callbacks": [handler]})]
    assert [c.content for c in chunks] == fakes.STEPS and handler.tokens == fakes.STEPS
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert isinstance(full, AIMessageChunk) and full.usage_metadata["output_tokens"] == 16  # type: ignore[index]


async def test_ainvoke_and_a_chain() -> None:
    llm = ChatEnsemble(config=FAKE, model="echo")
    chain = ChatPromptTemplate.from_messages([("user", "Say {word}")]) | llm | StrOutputParser()
    assert await chain.ainvoke({"word": "hi"}) == "You said: Say hi"
    assert chain.invoke({"word": "yo"}) == "You said: Say yo"


def test_default_ensemble_and_per_call_override() -> None:
    llm = ChatEnsemble(config=FAKE)
    assert llm._get_ls_params()["ls_model_name"] == "fake"
    msg = llm.invoke("hi", model="echo")
    assert msg.response_metadata["model_name"] == "echo"
    assert llm._get_ls_params(model="echo")["ls_model_name"] == "echo"


def test_unknown_ensemble_lists_the_configured_ones() -> None:
    with pytest.raises(ConfigError, match="'nope' is not configured; configured: fake, steps, echo, flaky"):
        ChatEnsemble(config=FAKE, model="nope").invoke("hi")


def test_from_members_and_its_single_ensemble() -> None:
    llm = ChatEnsemble.from_members(
        [FunctionGenerator("a", fakes.echo)], strategy="single", name="mine", max_tokens=2
    )
    msg = llm.invoke("one two three")
    assert msg.content == "You said:" and msg.response_metadata["finish_reason"] == "length"
    with pytest.raises(ConfigError, match="has only ensemble 'mine'"):
        llm.invoke("hi", model="other")


def test_standard_parameters_reach_the_engine() -> None:
    seen: list[SegmentRequest] = []

    def spy(messages: Any, prefix: str, request: SegmentRequest) -> str:
        seen.append(request)
        return "alpha beta gamma STOP delta"

    llm = ChatEnsemble.from_members([FunctionGenerator("a", spy)], strategy="single", name="spy",
                                    temperature=0.7, top_p=0.9, seed=5, max_tokens=50, stop=["STOP"])
    assert llm.invoke("hi").content == "alpha beta gamma "
    assert llm.invoke("hi", stop=["beta"]).content == "alpha "
    assert llm.invoke("hi", max_tokens=1).content == "alpha"
    r = seen[0]
    assert (r.temperature, r.top_p, r.seed, r.max_new_tokens, r.stop) == (0.7, 0.9, 5, 50, ["STOP"])
    params = llm._get_ls_params(stop=["x"])
    assert params["ls_temperature"] == 0.7 and params["ls_max_tokens"] == 50 and params["ls_stop"] == ["x"]


def test_unknown_call_parameter_is_refused() -> None:
    with pytest.raises(InputError, match="unsupported call parameter"):
        ChatEnsemble(config=FAKE, model="echo").invoke("hi", frequency_penality=1.0)
    with pytest.raises(InputError, match="'frequency_penalty' is not supported by ensembles: send 0"):
        ChatEnsemble(config=FAKE, model="echo").invoke("hi", frequency_penalty=1.0)


def test_timeout_and_retries() -> None:
    slow = FunctionGenerator("slow", fakes.echo, delay_s=1.0)
    llm = ChatEnsemble.from_members([slow], strategy="single", name="slow", timeout=0.05)
    with pytest.raises(TimeoutError, match=r"within 0\.05 s"):
        llm.invoke("hi")
    with pytest.raises(TimeoutError):
        list(llm.stream("hi"))
    fakes.calls["flaky"] = 0
    assert ChatEnsemble(config=FAKE, model="flaky", max_retries=1).invoke("hi").content == "recovered"
    fakes.calls["flaky"] = 0
    with pytest.raises(AllMembersFailed, match="temporary outage"):
        ChatEnsemble(config=FAKE, model="flaky").invoke("hi")
    fakes.calls["flaky"] = 0
    first = next(iter(ChatEnsemble(config=FAKE, model="flaky", max_retries=1).stream("hi")))
    assert first.content == "recovered"


def test_tools_calls_and_a_tool_loop() -> None:
    llm = ChatEnsemble(config=FAKE, model="fake").bind_tools([get_weather])
    first = llm.invoke([HumanMessage("Weather in Rome?")])
    assert first.tool_calls[0]["name"] == "get_weather" and first.content == ""
    assert first.response_metadata["finish_reason"] == "tool_calls"
    result = get_weather.invoke(first.tool_calls[0])
    assert isinstance(result, ToolMessage)
    answer = llm.invoke([HumanMessage("Weather in Rome?"), first, result])
    assert answer.content == "The tool says: sunny in some location" and not answer.tool_calls


def test_streamed_tool_call_arrives_whole_on_the_last_chunk() -> None:
    llm = ChatEnsemble(config=FAKE, model="fake").bind_tools([get_weather], tool_choice="get_weather")
    chunks = list(llm.stream("Weather?"))
    assert len(chunks) == 1 and chunks[0].chunk_position == "last"
    assert chunks[0].tool_calls[0]["args"] == {"location": "some location"}


def test_bind_tools_checks_the_choice_at_bind_time() -> None:
    with pytest.raises(InputError, match="not offered"):
        ChatEnsemble(config=FAKE).bind_tools([get_weather], tool_choice="get_time")


def test_structured_output() -> None:
    class Person(BaseModel):
        name: str
        age: int

    llm = ChatEnsemble(config=FAKE, model="fake")
    assert llm.with_structured_output(Person).invoke("Who?") == Person(name="some name", age=3)
    raw = llm.with_structured_output(Person, include_raw=True).invoke("Who?")
    assert isinstance(raw["raw"], AIMessage) and raw["parsing_error"] is None


def test_messages_are_converted_with_their_tool_fields() -> None:
    call = {"name": "get_weather", "args": {"location": "Rome"}, "id": "c1", "type": "tool_call"}
    msgs = to_core_messages([
        SystemMessage("Be brief."),
        HumanMessage("hi", name="ann"),
        AIMessage([{"type": "text", "text": "Let me look."}, {"type": "tool_use", "id": "c1"}], tool_calls=[call]),
        ToolMessage("sunny", tool_call_id="c1", name="get_weather"),
    ])
    assert msgs[0] == Message(role="system", content="Be brief.")
    assert msgs[1].name == "ann"
    assert msgs[2].content == "Let me look." and msgs[2].tool_calls == [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"location": "Rome"}}}
    ]
    assert (msgs[3].role, msgs[3].tool_call_id, msgs[3].name) == ("tool", "c1", "get_weather")
    with pytest.raises(InputError, match="read text only; got a 'image_url' content block"):
        to_core_messages([HumanMessage([{"type": "image_url", "image_url": {"url": "x"}}])])


def test_concurrent_async_calls() -> None:
    llm = ChatEnsemble(config=FAKE, model="echo")

    async def main() -> list[str]:
        out = await asyncio.gather(*(llm.ainvoke(f"n{i}") for i in range(5)))
        return [str(m.content) for m in out]

    assert asyncio.run(main()) == [f"You said: n{i}" for i in range(5)]


def test_one_member_ensemble_streams_tokens_as_they_come() -> None:
    handler = Tokens()
    llm = ChatEnsemble(config=FAKE, model="typist")
    chunks = list(llm.stream("Count.", config={"callbacks": [handler]}))
    assert [c.content for c in chunks] == fakes.TYPED  # one chunk per word, the last with usage
    assert handler.tokens == fakes.TYPED
    assert chunks[-1].usage_metadata is not None and chunks[-1].usage_metadata["output_tokens"] > 0
    assert llm.invoke("Count.").content == "".join(fakes.TYPED)


async def test_one_member_ensemble_streams_tokens_async() -> None:
    pieces = [c.content async for c in ChatEnsemble(config=FAKE, model="typist").astream("Count.")]
    assert pieces == fakes.TYPED
