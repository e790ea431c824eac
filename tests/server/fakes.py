"""Fake members, backends and scorers of the server tests (named from YAML as ``tests.server.fakes:NAME``);
the members every test uses are in tests/fakes.py."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import ClassVar

from ensemblehub_core.exceptions import InputError
from ensemblehub_core.generators.base import Generator, SegmentRequest
from ensemblehub_core.types import Candidate, Message
from tests.fakes import echo, words  # noqa: F401  # shared members, also named here as tests.server.fakes:NAME

STEPS = ["Paris is the capital.\n\n", "It is in France.\n\n", "The answer is Paris."]

#: Calls of `slow_steps`, so a test can see that a cancelled request stops being generated.
SLOW_CALLS = {"n": 0}
_SLOW_LOCK = threading.Lock()


def steps(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """Writes the next of STEPS after whatever is already accepted (three segments, then EOS)."""
    done = sum(1 for s in STEPS if s in prefix)
    return "".join(STEPS[done:])


def fail_after_first(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """One good segment, then a failure: an error in the middle of a stream."""
    if prefix:
        raise RuntimeError("the backend went away")
    return "First segment.\n\nSecond segment."


async def slow_steps(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """Like `words` but 0.2 s a call, counting calls: a disconnect test watches the count stop growing."""
    with _SLOW_LOCK:
        SLOW_CALLS["n"] += 1
    await asyncio.sleep(0.2)
    start = len(prefix.split())
    return (" " if prefix else "") + " ".join(f"s{i}" for i in range(start, start + 1000))


def longest(request: object, candidate: Candidate) -> float:
    """Scorer: prefers longer segments."""
    return float(len(candidate.text))


class ContextLimited(Generator):
    """A member with a 40-word context: a longer prompt raises the engine's context error."""

    def __init__(self, name: str, context: int = 40) -> None:
        super().__init__(name)
        self.context = context

    async def complete(self, messages: Sequence[Message], prefix: str, request: SegmentRequest) -> Candidate:
        used = sum(len(m.content.split()) for m in messages)
        if used >= self.context:
            raise InputError(f"member '{self.name}': the prompt is {used} tokens, longer than its context of "
                             f"{self.context}; shorten the prompt or drop this member")
        return Candidate(member=self.name, text="short answer", token_count=2, prompt_tokens=used,
                         finish_reason="eos")


def build_context_limited(cfg: object, ctx: object) -> ContextLimited:
    return ContextLimited(getattr(cfg, "name", "limited"))


class Batcher(Generator):
    """Decodes prompts in batches (a batch costs the same whatever its size), recording each batch's size."""

    batches: ClassVar[list[int]] = []

    async def complete(self, messages: Sequence[Message], prefix: str, request: SegmentRequest) -> Candidate:
        return (await self.complete_many([(messages, prefix)], request))[0]

    async def complete_many(
        self, prompts: Sequence[tuple[Sequence[Message], str]], request: SegmentRequest
    ) -> list[Candidate]:
        Batcher.batches.append(len(prompts))
        await asyncio.sleep(0.3)
        out = []
        for messages, _ in prompts:
            text = f"echo: {messages[-1].content}"
            if any(len(m.content.split()) >= 40 for m in messages):
                raise InputError(f"member '{self.name}': the prompt is longer than its context of 40")
            out.append(Candidate(member=self.name, text=text, token_count=len(text.split()),
                                 prompt_tokens=len(messages[-1].content.split()), finish_reason="eos"))
        return out


def build_batcher(cfg: object, ctx: object) -> Batcher:
    return Batcher(getattr(cfg, "name", "batcher"))


def build_slowly(cfg: object, ctx: object) -> Generator:
    """A member that takes 1.5 s to build, like a model loading."""
    time.sleep(1.5)
    from ensemblehub_core.generators.function import FunctionGenerator

    return FunctionGenerator(getattr(cfg, "name", "slow"), echo)


def build_broken(cfg: object, ctx: object) -> Generator:
    raise RuntimeError("weights not found")


CAPITALS = {"France": "Paris", "Italy": "Rome", "Germany": "Berlin", "Spain": "Madrid", "Japan": "Tokyo"}


def capital(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """Knows five capitals (the first five questions of examples/lm_eval/capitals.jsonl); guesses London else."""
    question = messages[-1].content
    city = next((c for country, c in CAPITALS.items() if country in question), "London")
    return f"The capital is {city}.\nAnything else?"


def weather_agent(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """Calls get_weather for Paris, then answers from the tool's result."""
    last = messages[-1]
    if last.role == "tool":
        return f"The weather in Paris: {last.content}."
    return '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


async def paced_steps(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """`steps`, 0.3 s a call: a page watching the stream sees the rounds arrive one at a time."""
    await asyncio.sleep(0.3)
    return steps(messages, prefix, request)


async def paced_echo(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """`echo`, 0.3 s a call."""
    await asyncio.sleep(0.3)
    return echo(messages, prefix, request)


def turns(messages: Sequence[Message], prefix: str, request: SegmentRequest) -> str:
    """Says how many user and assistant turns it was given and repeats the last question: a chat test's witness."""
    users = sum(m.role == "user" for m in messages)
    assistants = sum(m.role == "assistant" for m in messages)
    return f"{users} user / {assistants} assistant turns; last: {messages[-1].content}"
