"""Fake members for the response-level strategy tests (importable from YAML as module:function)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ensemblehub_core.generators.base import SegmentRequest
from ensemblehub_core.types import Message


def says(text: str) -> Callable[[Sequence[Message], str, SegmentRequest], str]:
    """A member that always answers ``text``."""

    def fn(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
        return text

    return fn


def answer_42(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    return "6 * 7 = 42. The answer is 42."


def answer_41(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    return "I think it is 41."


def boxed_42(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    return "We get \\boxed{42}."


def longer_is_better(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """A pairwise judge that prefers the longer response ("A" or "B")."""
    prompt = messages[-1].content
    found = re.search(r"Response A:\n(.*)\n\nResponse B:\n(.*)\n\nWhich", prompt, re.S)
    if found is None:
        return "I cannot tell."
    a, b = found.groups()
    return "A" if len(a) > len(b) else "B"


def aggregator(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """Writes a new answer naming how many numbered candidates its system prompt held."""
    system = next((m.content for m in messages if m.role == "system"), "")
    count = len(re.findall(r"(?m)^\d+\. ", system))
    return f"Fused from {count} candidates."


def confident(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    if "Can you solve" in messages[-1].content:
        return "Yes"
    return "The answer is 42."


def unsure(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    if "Can you solve" in messages[-1].content:
        return "No"
    return "The answer is 41."


def length_score(request: object, candidate: object) -> float:
    return float(len(candidate.text))  # type: ignore[attr-defined]
