"""Tool calling in the core: request validation, parsing calls out of answers, streaming without leaking
call markup, what members are shown, and the engine end to end with fake members."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from ensemblehub_core.answers import extract_exact, with_tools
from ensemblehub_core.engine import Ensemble, to_messages
from ensemblehub_core.exceptions import InputError
from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.generators.function import FunctionGenerator
from ensemblehub_core.tools import (
    ToolCallFilter,
    ToolSpec,
    extract_tool_calls,
    format_tool_call,
    messages_with_tool_text,
    parse_tool_calls,
    tool_call_signature,
)
from ensemblehub_core.types import Message, ToolCall

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather at a place.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
}}
TIME = {"name": "get_time", "parameters": {"type": "object", "properties": {}}}  # bare function form


def spec(choice: object = None, *tools: dict[str, object]) -> ToolSpec:
    out = ToolSpec.from_params(list(tools) or [WEATHER], choice)
    assert out is not None
    return out


# -- ToolSpec --------------------------------------------------------------------------------------------------
def test_spec_normalises_tools_and_choices() -> None:
    s = spec("any", WEATHER, TIME)
    assert s.names == ["get_weather", "get_time"] and s.choice == "required"
    assert s.tools[1] == {"type": "function", "function": TIME}
    assert spec({"type": "function", "function": {"name": "get_time"}}, WEATHER, TIME).choice == "get_time"
    assert spec(True).choice == "required"
    assert ToolSpec.from_params(None, "auto") is None and ToolSpec.from_params([], None) is None


@pytest.mark.parametrize(("tools", "choice", "message"), [
    ([WEATHER], "get_time", "names tool 'get_time', which is not offered; tools: get_weather"),
    ([], "required", "needs tools"),
    ([{"type": "function", "function": {"description": "no name"}}], None, "a tool must be"),
    ("get_weather", None, "must be a list"),
    ([WEATHER], 3, "tool_choice must be"),
])
def test_spec_rejects_bad_requests(tools: object, choice: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        ToolSpec.from_params(tools, choice)  # type: ignore[arg-type]


def test_forced_choices_prefill_the_call() -> None:
    assert spec("auto").prefill == "" and spec("none").prefill == ""
    assert spec("get_weather").prefill == '<tool_call>\n{"name": "get_weather", "arguments": {'
    assert spec("required").prefill == spec("get_weather").prefill  # one tool: the choice names it
    several = spec("required", WEATHER, TIME)
    assert several.prefill == '<tool_call>\n{"name": "' and "get_weather, get_time" in several.instruction
    assert spec("none").visible == []
    strict = {"name": "f", "parameters": {"type": "object", "properties": {"x": {}}, "required": ["x"]}}
    assert spec("f", strict).prefill.endswith('"arguments": {"')  # a required key: its quote is written too


# -- parsing ---------------------------------------------------------------------------------------------------
def test_parses_tagged_calls_and_keeps_the_text_around_them() -> None:
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"location": "Rome"}}\n</tool_call>'
    text += '\n<tool_call>{"name": "get_time", "arguments": "{}"}</tool_call>'
    content, calls = parse_tool_calls(text)
    assert content == "Let me check."
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"location": "Rome"}), ("get_time", {})]
    assert calls[0].id.startswith("call_") and calls[0].id != calls[1].id


def test_a_call_without_its_closing_tag_still_counts() -> None:
    _, calls = parse_tool_calls('<tool_call>\n{"name": "get_weather", "arguments": {"location": "你好"}}')
    assert calls[0].arguments == {"location": "你好"}


def test_broken_json_stays_text() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"loca'
    assert parse_tool_calls(text, spec()) == (text, [])


def test_bare_json_counts_only_when_it_names_an_offered_tool() -> None:
    fenced = '```json\n{"name": "get_weather", "parameters": {"location": "Oslo"}}\n```\nThis calls it.'
    content, calls = parse_tool_calls(fenced, spec())
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"location": "Oslo"})]
    assert content == "This calls it."
    twice = '{"name": "get_weather", "arguments": {"location": "A"}}\n{"name": "get_weather", "arguments": {}}'
    assert [c.arguments for c in parse_tool_calls(twice, spec())[1]] == [{"location": "A"}, {}]
    answer = '{"name": "Ada", "arguments": {"born": 1815}}'
    assert parse_tool_calls(answer, spec()) == (answer, [])  # a JSON answer, not a call
    assert parse_tool_calls(fenced) == (fenced, [])  # no tools offered: nothing is a call


def test_signature_ignores_key_order_and_padding() -> None:
    a = ToolCall(id="1", name="f", arguments={"x": " Rome ", "y": [1, {"b": 2, "a": 1}]})
    b = ToolCall(id="2", name="f", arguments={"y": [1, {"a": 1, "b": 2}], "x": "Rome"})
    assert tool_call_signature(a) == tool_call_signature(b)
    assert tool_call_signature(a) != tool_call_signature(ToolCall(id="3", name="g", arguments=a.arguments))


def test_vote_extractor_reads_calls_under_the_request_tools() -> None:
    assert extract_tool_calls('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>') is None
    forced = spec("get_weather")
    assert extract_tool_calls('"location": "Rome"}}\n</tool_call>', forced) == 'get_weather:{"location": "Rome"}'
    assert extract_tool_calls("Sorry, no.", forced) is None
    # The vote strategy gives the extractor the request's tools; other extractors read the text alone.
    bound = with_tools(extract_tool_calls, forced)
    assert bound('"location": "Rome"}}\n</tool_call>') == 'get_weather:{"location": "Rome"}'
    assert with_tools(extract_tool_calls, None) is extract_tool_calls
    assert with_tools(extract_exact, forced) is extract_exact


# -- streaming filter ------------------------------------------------------------------------------------------
def stream(pieces: Sequence[str], s: ToolSpec) -> tuple[list[str], ToolCallFilter]:
    f = ToolCallFilter(s)
    shown = [f.feed(p) for p in pieces]
    shown.append(f.finish())
    return shown, f


def test_text_before_a_call_streams_and_the_call_is_held() -> None:
    shown, f = stream(["Checking the ", "weather.\n<tool", '_call>\n{"name": "get_weather", ',
                       '"arguments": {"location": "Rome"}}\n</tool_call>'], spec())
    assert shown == ["Checking the ", "weather.\n", "", "", ""]
    assert f.content == "Checking the weather.\n" and f.calls[0].arguments == {"location": "Rome"}


def test_a_tag_lookalike_is_released() -> None:
    shown, f = stream(["a <to", "ken> b"], spec())
    assert "".join(shown) == "a <token> b" == f.content and shown[0] == "a "


def test_an_answer_starting_like_json_is_held_until_the_end() -> None:
    shown, f = stream(['{"answer": ', "42}"], spec())
    assert shown == ["", "", '{"answer": 42}'] and f.calls == []


def test_the_prefill_starts_a_forced_answer_unless_the_member_wrote_the_call_itself() -> None:
    _, f = stream(['"location": "Rome"}}\n', "</tool_call>"], spec("get_weather"))
    assert f.calls[0].name == "get_weather" and f.content == ""
    _, f = stream([format_tool_call("get_weather", {"location": "Oslo"})], spec("get_weather"))
    assert f.calls[0].arguments == {"location": "Oslo"}


def test_no_tools_shown_means_nothing_is_held() -> None:
    shown, f = stream(["<tool_call>", "{}"], spec("none"))
    assert shown[:2] == ["<tool_call>", "{}"] and f.calls == []


# -- what members see ------------------------------------------------------------------------------------------
def test_tool_turns_become_text_for_models_without_a_tool_template() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"location": "Rome"}}}
    msgs = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="Weather in Rome?"),
        Message(role="assistant", content="", tool_calls=[call]),
        Message(role="tool", content="sunny", tool_call_id="c1", name="get_weather"),
    ]
    out = messages_with_tool_text(msgs, [WEATHER])
    assert out[0].content.startswith("Be brief.\n\n# Tools") and '"name": "get_weather"' in out[0].content
    assert out[2] == Message(role="assistant", content=format_tool_call("get_weather", {"location": "Rome"}))
    assert out[3] == Message(role="user", content="<tool_response>\nsunny\n</tool_response>")


def test_to_messages_reads_openai_tool_turns() -> None:
    msgs = to_messages([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "Rome"}'}}
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ])
    assert msgs[1].content == "" and msgs[1].tool_calls is not None
    assert msgs[1].to_dict()["tool_calls"][0]["function"]["arguments"] == {"location": "Rome"}
    assert msgs[2].to_dict() == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}
    with pytest.raises(InputError, match="not valid JSON"):
        to_messages([{"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}])


# -- the engine ------------------------------------------------------------------------------------------------
def caller(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    s = request.tools
    if s is None:
        return "No tools."
    call = format_tool_call(s.names[-1], {"location": "Rome"})
    full = call.removeprefix(s.prefill) if s.prefill else "Sure. " + call  # forced: the prompt holds the start
    return full.removeprefix(prefix)


async def test_engine_returns_calls_and_streams_only_text() -> None:
    ens = Ensemble([FunctionGenerator("m", caller)], strategy="segment", strategy_params={"segment_tokens": 2})
    chunks = [c async for c in ens.astream("Weather in Rome?", tools=[WEATHER])]
    result = chunks[-1].result
    assert result is not None and result.text == "Sure. " and result.finish_reason == "stop"
    assert "".join(c.text for c in chunks) == result.text  # the markup never reached a chunk
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("get_weather", {"location": "Rome"})]
    assert result.to_dict()["tool_calls"][0]["function"]["arguments"] == json.dumps({"location": "Rome"})
    assert ens.generate("Hi").tool_calls == [] and ens.generate("Hi").text == "No tools."


async def test_engine_forced_choice_and_validation() -> None:
    ens = Ensemble([FunctionGenerator("m", caller)], strategy="single")
    result = await ens.agenerate("Hi", tools=[WEATHER, TIME], tool_choice="get_time")
    assert [c.name for c in result.tool_calls] == ["get_time"] and result.text == ""
    with pytest.raises(InputError, match="not offered"):
        await ens.agenerate("Hi", tools=[WEATHER], tool_choice="get_time")


@pytest.mark.slow
def test_members_see_tools_in_their_own_format() -> None:
    from ensemblehub_core.generators.hf import HFGenerator
    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.pool import ModelPool

    pool = ModelPool.default()
    qwen = HFGenerator("qwen", pool.get(ModelSpec(source="embedded:qwen2.5-coder-0.5b-instruct")))
    smol = HFGenerator("smol", pool.get(ModelSpec(source="embedded:smollm2-135m-instruct")))
    msgs = [Message(role="user", content="Weather in Rome?")]
    forced = spec("get_weather")
    native = qwen.render_prompt(msgs, forced)
    assert qwen.native_tools and "<tools>" in native and '"get_weather"' in native
    assert native.endswith("<|im_start|>assistant\n" + forced.prefill)
    as_text = smol.render_prompt(msgs, spec())
    assert not smol.native_tools and "# Tools" in as_text and '"get_weather"' in as_text
    assert qwen.render_prompt(msgs) == qwen.render_prompt(msgs, spec("none"))  # hidden tools: plain prompt
    assert "<tools>" not in qwen.render_prompt(msgs)
