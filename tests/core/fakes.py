"""Fake members and scorers for fast orchestration tests (importable from YAML as module:function)."""

from __future__ import annotations

from collections.abc import Sequence

from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.types import Message

STEPS = ["Step one: 6 * 7.\n\n", "Step two: that is 42.\n\n", "The answer is 42."]


def stepper(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """Writes the next of STEPS after whatever is already accepted."""
    done = sum(1 for s in STEPS if s in prefix)
    return "".join(STEPS[done:])


def rambler(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    return "blah " * 50


def broken(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    raise RuntimeError("backend exploded")


def echo(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    return f"You said: {messages[-1].content}"


def prefers_steps(request: object, candidate: object) -> float:
    return 1.0 if "Step" in candidate.text or "answer" in candidate.text else 0.0  # type: ignore[attr-defined]


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
