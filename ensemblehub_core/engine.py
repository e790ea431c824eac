"""`Ensemble`: members + scorer panel + strategy, with sync/async generate and stream.

```python
ens = Ensemble([qwen, smol], scorer=JudgeScorer("judge", qwen), strategy="segment")
result = ens.generate("What is 12 * 7?")
for chunk in ens.stream("Name a prime above 100."):
    print(chunk.text, end="")
```
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ensemblehub_core._sync import iterate_sync, run_sync
from ensemblehub_core.exceptions import ConfigError, InputError
from ensemblehub_core.generators.base import Generator
from ensemblehub_core.scorers.base import Scorer, ScoringPanel
from ensemblehub_core.strategies.base import MemberPolicy, RunContext, Strategy, TextDelta, make_strategy
from ensemblehub_core.strategies.breaker import CircuitBreaker
from ensemblehub_core.strategies.segment import lone_round
from ensemblehub_core.strategies.select import select_members, selection_of
from ensemblehub_core.tools import ToolCallFilter, ToolSpec
from ensemblehub_core.types import (
    GENERATION_KEYS,
    Candidate,
    EnsembleResult,
    GenerationParams,
    Message,
    RoundTrace,
    Usage,
)

__all__ = ["Ensemble", "EnsembleChunk", "PromptLike", "split_final_message", "to_messages"]

log = logging.getLogger("ensemblehub")

PromptLike = str | Message | Mapping[str, Any] | Sequence[Message | Mapping[str, Any]]


@dataclass(kw_only=True)
class EnsembleChunk:
    """One streamed piece: the text accepted this round (``round`` set), or a piece of the round in progress
    (token streaming, ``round`` None); the last chunk has ``result`` set and no text."""

    text: str
    round: RoundTrace | None = None
    result: EnsembleResult | None = None


def to_messages(prompt: PromptLike) -> list[Message]:
    """Accept a string, a message, a dict or a list of either; reject anything empty."""
    if isinstance(prompt, str):
        items: list[Any] = [Message(role="user", content=prompt)]
    elif isinstance(prompt, Message | Mapping):
        items = [prompt]
    else:
        items = list(prompt)
    messages = []
    for i, m in enumerate(items):
        if isinstance(m, Mapping):
            m = _message_from_dict(i, m)
        elif not isinstance(m, Message):
            raise InputError(f"message {i} must be a dict with 'role' and 'content' or a Message, not "
                             f"{type(m).__name__}")
        messages.append(m)
    if not messages or not any(m.content.strip() for m in messages):
        raise InputError("the prompt is empty; pass a question or at least one non-empty message")
    return messages


def _message_from_dict(i: int, m: Mapping[str, Any]) -> Message:
    """A message from its dict form; an assistant turn that only calls tools may have no content."""
    calls = m.get("tool_calls") or None
    content = m.get("content")
    if content is None and calls:
        content = ""
    if not isinstance(content, str):
        raise InputError(f"message {i} needs a string 'content' field")
    if calls is not None:
        if not isinstance(calls, list) or not all(isinstance(c, Mapping) for c in calls):
            raise InputError(f"message {i}: 'tool_calls' must be a list of calls")
        calls = [_call_for_template(i, c) for c in calls]
    return Message(role=str(m.get("role", "user")), content=content, tool_calls=calls,
                   tool_call_id=m.get("tool_call_id"), name=m.get("name"))


def _call_for_template(i: int, call: Mapping[str, Any]) -> dict[str, Any]:
    """A tool call with its arguments as a dict (the wire sends a JSON string; templates want a dict)."""
    fn = call.get("function", call)
    args = fn.get("arguments") if isinstance(fn, Mapping) else None
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise InputError(f"message {i}: tool call arguments are not valid JSON: {args!r}") from None
    named = isinstance(fn, Mapping) and isinstance(fn.get("name"), str)
    if not named or not isinstance(args or {}, Mapping):
        raise InputError(f"message {i}: a tool call needs a function name and object arguments, got {call!r}")
    function = {"name": fn["name"], "arguments": dict(args or {})}
    return {"id": call.get("id"), "type": "function", "function": function}


def split_final_message(messages: list[Message]) -> tuple[list[Message], str]:
    """The conversation before a final assistant message, and that message's text (the answer's start).

    Raises:
        InputError: the conversation does not end with an assistant message to continue.
    """
    last = messages[-1]
    if last.role != "assistant" or last.tool_calls:
        raise InputError(
            f"continue_final_message needs the conversation to end with an assistant message whose text is "
            f"continued; the last message is a '{last.role}' message"
            + (" with tool calls" if last.tool_calls else "")
            + "; add the assistant's partial answer last, or leave continue_final_message out"
        )
    if len(messages) == 1:
        raise InputError("continue_final_message: the conversation holds only the assistant's partial answer; "
                         "put the user's message before it")
    return messages[:-1], last.content


_NUMBER = (int, float)
#: The type each generation parameter must have (None is always allowed: the default is kept).
_PARAM_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "max_tokens": ((int,), "an integer"),
    "temperature": (_NUMBER, "a number"),
    "top_p": (_NUMBER, "a number"),
    "seed": ((int,), "an integer"),
    "stop": ((str, list, tuple), "a string or a list of strings"),
    "tools": ((list, tuple), "a list of tools"),
    "tool_choice": ((str, dict), "a string or an object"),
}


def _check_types(params: Mapping[str, Any]) -> None:
    """Refuse a generation parameter of the wrong type with a message naming it (not a TypeError later)."""
    for key, value in params.items():
        if value is None or key not in _PARAM_TYPES:
            continue
        types, what = _PARAM_TYPES[key]
        ok = isinstance(value, types) and not isinstance(value, bool)
        if ok and key == "stop" and not isinstance(value, str):
            ok = all(isinstance(s, str) for s in value)
        if not ok:
            raise InputError(f"{key} must be {what}, got {type(value).__name__} {value!r}")


class Ensemble:
    """Several generators answering together under one strategy.

    Args:
        members: Generators (names must be unique), or a mapping name → generator.
        scorer: A scorer, a `ScoringPanel`, or None (fine for one member or scorer-free strategies).
        strategy: A `Strategy` instance or a registered strategy name.
        strategy_params: Parameters for a strategy given by name.
        defaults: Generation defaults; per-call keyword arguments override them.
        policy: Member timeout / retry policy, and when a failing member is skipped (`MemberPolicy`).
        name: Name shown in results and traces.
    """

    def __init__(
        self,
        members: Sequence[Generator] | Mapping[str, Generator],
        *,
        scorer: Scorer | ScoringPanel | None = None,
        strategy: Strategy | str = "segment",
        strategy_params: Mapping[str, Any] | None = None,
        defaults: GenerationParams | None = None,
        policy: MemberPolicy | None = None,
        name: str = "ensemble",
    ) -> None:
        if isinstance(members, Mapping):
            self.members = dict(members)
        else:
            self.members = {}
            for g in members:
                if g.name in self.members:
                    raise ConfigError(f"two members are named '{g.name}'; member names must be unique")
                self.members[g.name] = g
        if not self.members:
            raise ConfigError("an ensemble needs at least one member")
        self.panel = ScoringPanel([(scorer, 1.0)]) if isinstance(scorer, Scorer) else scorer
        if isinstance(strategy, str):
            self.strategy: Strategy = make_strategy(strategy, strategy_params)
        else:
            self.strategy = strategy
        self.strategy.check(self.members, self.panel)
        self.defaults = defaults or GenerationParams()
        self.policy = policy or MemberPolicy()
        self.name = name
        self.breaker = CircuitBreaker(name, max_failures=self.policy.max_failures, cooldown_s=self.policy.cooldown_s)

    # -- async core -----------------------------------------------------------------------------------------
    async def astream(
        self, prompt: PromptLike, *, continue_final_message: bool = False, **params: Any
    ) -> AsyncIterator[EnsembleChunk]:
        """Yield each round's accepted text as it is decided, then a final chunk carrying the result.

        Keyword arguments override generation defaults: ``max_tokens``, ``temperature``, ``top_p``, ``stop``,
        ``seed``, ``tools``, ``tool_choice``. With tools, text that may be a tool call is held back from the
        chunks; the calls are on the result (``result.tool_calls``).

        Args:
            prompt: A question, a message, or a conversation.
            continue_final_message: The conversation ends with an assistant message that is the start of the
                answer: every member continues that text (as vLLM's ``continue_final_message``) instead of
                starting a new turn. The result holds only the new text.
            **params: Generation overrides (see above).
        """
        gen_params = self.resolve_params(params)
        spec = ToolSpec.from_params(gen_params.tools, gen_params.tool_choice)
        calls = ToolCallFilter(spec) if spec is not None else None
        messages = to_messages(prompt)
        prefix = ""
        if continue_final_message:
            messages, prefix = split_final_message(messages)
        ctx = RunContext(
            messages=messages,
            prefix=prefix,
            tools=spec,
            params=gen_params,
            members=self.members,
            panel=self.panel,
            policy=self.policy,
            breaker=self.breaker.request(),
            rng=random.Random(gen_params.seed),
        )
        started = time.perf_counter()
        rounds: list[RoundTrace] = []
        await select_members(ctx, selection_of(self.strategy.params))
        agen = self.strategy.run(ctx)
        streamed = ""  # text of the round in progress already sent as deltas
        try:
            while True:
                try:
                    item = await anext(agen)
                except StopAsyncIteration:
                    break
                if isinstance(item, TextDelta):
                    streamed += item.text
                    text = calls.feed(item.text) if calls is not None else item.text
                    if text:
                        yield EnsembleChunk(text=text)
                    continue
                trace, rest = item, item.accepted_text
                if streamed:
                    rest = rest[len(streamed):] if rest.startswith(streamed) else ""
                    if not trace.accepted_text.startswith(streamed):
                        log.warning("ensemble '%s': streamed text differs from the round's kept text; the result "
                                    "holds the kept text", self.name)
                    streamed = ""
                rounds.append(trace)
                text = calls.feed(rest) if calls is not None else rest
                yield EnsembleChunk(text=text, round=trace)
        finally:
            await agen.aclose()  # type: ignore[attr-defined]
        result = self._result(rounds, time.perf_counter() - started, prompt_tokens=ctx.prompt_tokens,
                              finish_reason=ctx.finish_reason, extra=ctx.extra)
        if calls is not None:
            tail = calls.finish()
            if tail:
                yield EnsembleChunk(text=tail)
            result.text, result.tool_calls = calls.content, calls.calls
        yield EnsembleChunk(text="", result=result)

    async def agenerate(self, prompt: PromptLike, **params: Any) -> EnsembleResult:
        """Run to completion and return the answer with usage and trace (arguments as `astream`)."""
        result: EnsembleResult | None = None
        async for chunk in self.astream(prompt, **params):
            result = chunk.result or result
        assert result is not None
        return result

    # -- sync faces ------------------------------------------------------------------------------------------
    def generate(self, prompt: PromptLike, **params: Any) -> EnsembleResult:
        """Sync `agenerate`."""
        return run_sync(self.agenerate(prompt, **params))

    def stream(self, prompt: PromptLike, **params: Any) -> Iterator[EnsembleChunk]:
        """Sync `astream`."""
        return iterate_sync(self.astream(prompt, **params))

    # -- requests and results -------------------------------------------------------------------------------
    def resolve_params(self, overrides: Mapping[str, Any]) -> GenerationParams:
        """The ensemble's generation defaults with a request's overrides, checked: the one place a request's
        parameters are validated, whichever face it came through.

        Args:
            overrides: By the engine's names (`GENERATION_KEYS`); None values keep the default.

        Raises:
            InputError: an unknown parameter, or a value of the wrong type or out of range (named).
        """
        unknown = set(overrides) - set(GENERATION_KEYS)
        if unknown:
            raise InputError(f"unknown generation parameter(s) {sorted(unknown)}; allowed: {sorted(GENERATION_KEYS)}")
        _check_types(overrides)
        stop = overrides.get("stop")
        merged = self.defaults.merged(**{**overrides, "stop": [stop] if isinstance(stop, str) else stop})
        if merged.max_tokens <= 0:
            raise InputError(f"max_tokens must be positive, got {merged.max_tokens}")
        if merged.temperature < 0:
            raise InputError(f"temperature must be >= 0, got {merged.temperature}")
        if not 0 < merged.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {merged.top_p}")
        spec = ToolSpec.from_params(merged.tools, merged.tool_choice)  # validates; stored normalised
        merged.tools, merged.tool_choice = (spec.tools, spec.choice) if spec else (None, None)
        return merged

    @property
    def lone_member(self) -> Generator | None:
        """The member that writes every answer alone in one call (a ``single`` strategy), else None: a server
        may then decode several requests' answers together on it and make each a result with `result_of`."""
        name = self.strategy.lone_member(self.members)
        return None if name is None else self.members[name]

    def result_of(self, cand: Candidate, elapsed: float, *, note: str = "") -> EnsembleResult:
        """The result of an answer the `lone_member` wrote outside `astream` (e.g. in a batch with other
        requests), as `astream` would have made it."""
        return self._result([lone_round(cand, elapsed, note=note)], elapsed, prompt_tokens=cand.prompt_tokens,
                            finish_reason=cand.answer_finish, extra={})

    def _result(
        self, rounds: list[RoundTrace], elapsed: float, *, prompt_tokens: int, finish_reason: str,
        extra: dict[str, Any],
    ) -> EnsembleResult:
        member_tokens = {name: 0 for name in self.members}
        for r in rounds:
            for c in r.candidates:
                member_tokens[c.member] = member_tokens.get(c.member, 0) + c.token_count
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=sum(r.accepted_tokens for r in rounds),
            member_tokens=member_tokens,
        )
        return EnsembleResult(
            text="".join(r.accepted_text for r in rounds),
            finish_reason="stop" if finish_reason == "stop" else "length",
            usage=usage,
            trace=rounds,
            ensemble=self.name,
            strategy=self.strategy.name,
            elapsed_s=elapsed,
            extra=extra,
        )

    # -- token counting -----------------------------------------------------------------------------------------
    @property
    def counting_member(self) -> Generator:
        """The member whose tokenizer counts for the ensemble (as ``usage.prompt_tokens`` does): a ``single``
        strategy's member, else the first one."""
        return self.lone_member or next(iter(self.members.values()))

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the counting member's tokenizer (see `counting_member`)."""
        return self.counting_member.count_tokens(text)

    def count_prompt_tokens(self, prompt: PromptLike, tools: list[dict[str, Any]] | None = None) -> int:
        """Tokens of the prompt the counting member sees (its chat template and the tools included): what
        ``usage.prompt_tokens`` reports for the same request."""
        spec = ToolSpec.from_params(tools, None) if tools else None
        return self.counting_member.count_prompt_tokens(to_messages(prompt), spec)

    def __repr__(self) -> str:
        return f"Ensemble(name={self.name!r}, members={list(self.members)}, strategy={self.strategy.name!r})"
