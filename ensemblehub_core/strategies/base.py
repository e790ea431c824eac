"""The `Strategy` ABC and what a strategy run gets to work with (`RunContext`).

A strategy drives rounds: it asks members for candidates, has them scored, keeps a winner and yields one
`RoundTrace` per round, with the accepted text in ``accepted_text``. When it is done it sets
``ctx.finish_reason``. Each strategy declares its parameters as a pydantic model (validated from YAML).
"""

from __future__ import annotations

import asyncio
import random
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ensemblehub_core.exceptions import AllMembersFailed, ConfigError, EnsembleHubError, GeneratorError
from ensemblehub_core.generators.base import Generator, GeneratorSession, SegmentRequest
from ensemblehub_core.scorers.base import ScoringPanel
from ensemblehub_core.strategies.params import StrategyParams
from ensemblehub_core.types import Candidate, GenerationParams, Message, RoundTrace

if TYPE_CHECKING:
    from ensemblehub_core.generators.tokens import TokenSession
    from ensemblehub_core.strategies.breaker import RequestBreaker
    from ensemblehub_core.tools import ToolSpec

T = TypeVar("T")

__all__ = [
    "MemberPolicy", "RunContext", "Strategy", "TextDelta", "call_with_policy", "gather_candidates", "make_strategy",
    "open_session", "open_token_session",
]


@dataclass(kw_only=True)
class MemberPolicy:
    """How members are called: per-call timeout (seconds, None for none), retries with backoff, and when a
    failing member is skipped (see `strategies.breaker`).

    Attributes:
        timeout_s: Seconds one call may take.
        retries: Further tries of a failed call.
        backoff_s: Wait before the first retry (doubled for each next one).
        max_failures: Failed calls (after their retries) after which a member is skipped for the rest of the
            request, and failures in a row after which its cool-down starts; None: never skipped.
        cooldown_s: Seconds a member that failed ``max_failures`` times in a row is left out of new requests
            (0: no cool-down across requests).
    """

    timeout_s: float | None = None
    retries: int = 0
    backoff_s: float = 0.5
    max_failures: int | None = 3
    cooldown_s: float = 0.0


@dataclass(kw_only=True)
class RunContext:
    """Everything one strategy run needs; strategies fill in the outcome fields."""

    messages: list[Message]
    params: GenerationParams
    members: Mapping[str, Generator]
    panel: ScoringPanel | None
    policy: MemberPolicy = field(default_factory=MemberPolicy)
    rng: random.Random = field(default_factory=random.Random)
    #: Every configured member, when a selection step narrowed ``members`` (roles like a judge resolve here).
    all_members: Mapping[str, Generator] = field(default_factory=dict)
    #: Which members are skipped after repeated failures (None: none ever is).
    breaker: RequestBreaker | None = None
    #: The start of the answer, given by the caller (a final assistant message to continue); every member
    #: continues it, and it is not part of the result's text.
    prefix: str = ""
    #: The request's tools (None: none offered). Members' sessions and the scorers get them; a judge or
    #: selector writing its own prompt does not.
    tools: ToolSpec | None = None
    # outcome, set by the strategy
    finish_reason: str = "length"
    prompt_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class TextDelta:
    """Text of the round in progress, yielded by a strategy before that round's trace (token streaming).

    The round's trace stays the authority: its ``accepted_text`` is the whole round, deltas included.
    """

    text: str


class Strategy(ABC):
    """Decides, round by round, what the ensemble writes."""

    #: Registry name (set by each subclass).
    name: ClassVar[str] = ""
    Params: ClassVar[type[StrategyParams]] = StrategyParams

    def __init__(self, params: StrategyParams | None = None, **kwargs: Any) -> None:
        self.params = params if params is not None else self.Params(**kwargs)

    def check(self, members: Mapping[str, Generator], panel: ScoringPanel | None) -> None:  # noqa: B027
        """Raise `ConfigError`/`CapabilityError` early when the members or scorer cannot run this strategy."""

    def lone_member(self, members: Mapping[str, Generator]) -> str | None:
        """The member that writes every answer alone, in one call, when the strategy is that simple (then a
        server may batch its requests on that member; see `Ensemble.result_of`); None for real ensembles."""
        return None

    @abstractmethod
    def run(self, ctx: RunContext) -> AsyncIterator[RoundTrace | TextDelta]:
        """Yield one trace per round (an async generator); a strategy may yield `TextDelta` pieces of a round's
        text before its trace."""


def open_session(
    gen: Generator, ctx: RunContext, messages: Sequence[Message] | None = None, **kwargs: Any
) -> GeneratorSession:
    """``gen``'s session on ``messages`` (default: the run's conversation) with the run's tools, already past
    ``ctx.prefix``."""
    session = gen.open_session(list(ctx.messages if messages is None else messages), tools=ctx.tools, **kwargs)
    if ctx.prefix:
        session.accept(ctx.prefix)
    return session


def open_token_session(gen: Generator, ctx: RunContext) -> TokenSession:
    """``gen``'s token-level session on the run's conversation with the run's tools, already past ``ctx.prefix``."""
    session = gen.open_token_session(ctx.messages, tools=ctx.tools)
    if ctx.prefix:
        session.append(ctx.prefix.encode())
    return session


def make_strategy(name: str, params: Mapping[str, Any] | None, where: str = "") -> Strategy:
    """The registered strategy ``name`` with its parameters checked.

    Args:
        name: A registered strategy.
        params: Its parameters.
        where: Where they were given, for the message (e.g. ``ensembles.trio.strategy``).

    Raises:
        ConfigError: a parameter is unknown or has a wrong value; the message names each one, as config
            errors do.
    """
    from pydantic import ValidationError

    from ensemblehub_core.config import error_lines
    from ensemblehub_core.registry import resolve

    cls: type[Strategy] = resolve("strategy", name)
    try:
        return cls(cls.Params(**(params or {})))
    except ValidationError as exc:
        allowed = sorted(cls.Params.model_fields)
        lines = error_lines(exc, prefix=f"{where or 'strategy'}.", allowed=allowed)
        raise ConfigError(f"invalid parameters for strategy '{name}':\n" + "\n".join(lines)) from None


async def call_with_policy(name: str, call: Callable[[], Awaitable[T]], policy: MemberPolicy) -> T:
    """One member call (``call()`` makes a fresh attempt) with the policy's timeout and retries; errors become
    `GeneratorError`, except the ensemble's own errors (bad input or configuration), which no retry can help.

    A timeout is not retried: a member that hangs would otherwise cost a timeout per try.
    """
    attempt = 0
    while True:
        try:
            if policy.timeout_s is None:
                return await call()
            return await asyncio.wait_for(call(), policy.timeout_s)
        except TimeoutError as exc:
            err = GeneratorError(name, f"timed out after {policy.timeout_s:g} s", timed_out=True)
            cause: BaseException = exc
        except GeneratorError as exc:
            err, cause = exc, exc
        except EnsembleHubError:
            raise  # bad input or configuration: retrying cannot help
        except Exception as exc:  # any backend failure is this member's failure, not the ensemble's
            err, cause = GeneratorError(name, f"{type(exc).__name__}: {exc}"), exc
        if attempt >= policy.retries or err.timed_out:
            raise err from cause
        delay = err.retry_after or policy.backoff_s * (2**attempt)
        attempt += 1
        await asyncio.sleep(float(delay))


async def gather_candidates(
    sessions: Mapping[str, GeneratorSession], request: SegmentRequest, policy: MemberPolicy,
    breaker: RequestBreaker | None = None,
) -> tuple[list[Candidate], dict[str, str]]:
    """Ask every session for a candidate concurrently; return the successes and each failure's message.

    Args:
        sessions: By label: a member's name, or ``name#k`` for its k-th sample.
        request: What to write.
        policy: Timeout and retries of each call.
        breaker: Skips members that keep failing, and records each call's outcome (None: no skipping).

    Raises:
        AllMembersFailed: when no member produced a candidate.
    """
    errors: dict[str, str] = {}
    names = []
    for name in sessions:
        reason = breaker.skip_reason(_member_of(name)) if breaker is not None else None
        if reason is None:
            names.append(name)
        else:
            errors[name] = reason
    results = await asyncio.gather(
        *(call_with_policy(n, partial(sessions[n].generate, request), policy) for n in names),
        return_exceptions=True,
    )
    cands: list[Candidate] = []
    for name, res in zip(names, results, strict=True):
        if isinstance(res, GeneratorError):
            errors[name] = res.reason
        elif isinstance(res, BaseException):
            raise res
        else:
            cands.append(res)
        if breaker is not None:
            failed = res if isinstance(res, GeneratorError) else None
            breaker.record(_member_of(name), ok=failed is None, timed_out=failed is not None and failed.timed_out)
    if not cands:
        raise AllMembersFailed(errors)
    return cands, errors


def _member_of(label: str) -> str:
    """The member a session label names (``name`` or ``name#k`` for a sample)."""
    return label.rsplit("#", 1)[0] if "#" in label else label


def now() -> float:
    return time.perf_counter()
