"""Fake members and scorers for fast orchestration and face tests (importable from YAML as
``module:function``)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.types import Message

STEPS = ["Step one: 6 * 7.\n\n", "Step two: that is 42.\n\n", "The answer is 42."]
calls = {"flaky": 0}


def stepper(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """Writes the next of STEPS after whatever is already accepted."""
    done = sum(1 for s in STEPS if s in prefix)
    return "".join(STEPS[done:])


def rambler(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    return "blah " * 50


def echo(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    return f"You said: {messages[-1].content}"


def prefers_steps(request: object, candidate: object) -> float:
    return 1.0 if "Step" in candidate.text or "answer" in candidate.text else 0.0  # type: ignore[attr-defined]


def tool_user(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """Calls the first offered tool (arguments from the tool's schema) unless a tool already answered; then
    answers from the tool's result. Honours a forced call's prefill as a local model would."""
    spec = request.tools
    last = messages[-1]
    if last.role == "tool":
        return f"The tool says: {last.content}"
    if spec is None or not spec.visible:
        return f"You said: {last.content}"
    tool = spec.tools[0]["function"] if spec.forced_name is None else next(
        t["function"] for t in spec.tools if t["function"]["name"] == spec.forced_name
    )
    props = tool["parameters"].get("properties", {})
    args = {k: (3 if p.get("type") == "integer" else f"some {k}") for k, p in props.items()}
    call = {"name": tool["name"], "arguments": args}
    text = f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
    assert text.startswith(spec.prefill)  # a forced call: the prompt already holds its start
    return text[len(spec.prefill) :]


def flaky(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """Fails on its first call of each pair, then answers (retry tests)."""
    calls["flaky"] += 1
    if calls["flaky"] % 2 == 1:
        raise RuntimeError("temporary outage")
    return "recovered"


def broken(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """Fails at once on every call (counted in ``calls["broken"]``)."""
    calls["broken"] = calls.get("broken", 0) + 1
    raise RuntimeError("backend exploded")


TYPED = ["One", " two", " three", " four", " five."]


async def typewriter(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """Writes TYPED a word at a time, reporting the text as it grows (as a local model decoding does)."""
    import asyncio

    text = ""
    for word in TYPED:
        text += word
        if request.on_text is not None:
            request.on_text(text)
        await asyncio.sleep(0.05)
    return text


async def hang(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """A member that never answers in time (counted in ``calls["hang"]``)."""
    import asyncio

    calls["hang"] = calls.get("hang", 0) + 1
    await asyncio.sleep(30)
    return "too late"


def words(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """Counts w0 w1 ... on from the accepted prefix; never ends by itself."""
    start = len(prefix.split())
    return (" " if prefix else "") + " ".join(f"w{i}" for i in range(start, start + 1000))


def _sum(messages: Sequence[Message]) -> int:
    import re

    a, b = (int(x) for x in re.findall(r"\d+", messages[-1].content)[:2])
    return a + b


def adds_right(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    return f"The answer is {_sum(messages)}."


def adds_wrong(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    return f"The answer is {_sum(messages) + 1}."


def slow_echo(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """`echo` at 20 ms a call: slow enough for a test to kill a batch run between examples."""
    import time

    time.sleep(0.02)
    return f"You said: {messages[-1].content}"
