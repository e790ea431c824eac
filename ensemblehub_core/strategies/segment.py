"""Reward-guided segment selection, and the two baselines it is compared against.

``segment``: each round every member writes a short segment from the same accepted prefix (a token budget
and/or up to a step delimiter); the scorer panel scores them; the best is appended to the shared prefix. The run
stops when the winner ended with its EOS or a stop string, at ``max_tokens``, at ``max_rounds``, or when the same
segment keeps winning (a repetition loop). Members keep their own KV caches between rounds.

``random``: each round one member, chosen at random, writes the segment (no scoring).
``single``: one member writes the whole answer alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import ClassVar, TypeVar

from pydantic import Field

from ensemblehub_core._text import cut_text, is_repetitive
from ensemblehub_core.exceptions import ConfigError
from ensemblehub_core.generators.base import Generator, GeneratorSession, SegmentRequest
from ensemblehub_core.scorers.base import ScoreRequest, ScoringPanel, best_index
from ensemblehub_core.strategies.base import (
    RunContext,
    Strategy,
    TextDelta,
    gather_candidates,
    now,
    open_session,
)
from ensemblehub_core.strategies.params import StrategyParams
from ensemblehub_core.types import Candidate, RoundTrace

__all__ = ["RandomStrategy", "SegmentParams", "SegmentStrategy", "SingleParams", "SingleStrategy"]

_T = TypeVar("_T")


class SegmentParams(StrategyParams):
    """Parameters of the segment loop.

    Attributes:
        segment_tokens: Token budget of one segment.
        delimiters: A segment also ends right after one of these (e.g. a blank line between reasoning steps).
            Empty: segments are cut by the token budget only.
        max_rounds: Upper bound on rounds.
        repetition_window: Stop when this many consecutive accepted segments are identical (0: never).
        incremental: Keep each member's KV cache across rounds (False re-encodes the whole prefix every
            round; only useful to measure what incremental decoding saves).
    """

    segment_tokens: int = Field(default=32, gt=0)
    delimiters: list[str] = Field(default_factory=lambda: ["\n\n"])
    max_rounds: int = Field(default=64, gt=0)
    repetition_window: int = Field(default=3, ge=0)
    incremental: bool = True


class SegmentStrategy(Strategy):
    """Reward-guided segment selection (see module docstring)."""

    name: ClassVar[str] = "segment"
    Params = SegmentParams
    params: SegmentParams

    def check(self, members: Mapping[str, Generator], panel: ScoringPanel | None) -> None:
        if len(members) > 1 and panel is None:
            raise ConfigError(f"strategy '{self.name}' with {len(members)} members needs a scorer; add 'scorer:'")

    def round_members(self, ctx: RunContext, sessions: dict[str, GeneratorSession]) -> dict[str, GeneratorSession]:
        """The members asked this round (all of them)."""
        return sessions

    async def pick(self, ctx: RunContext, cands: list[Candidate], state: dict[object, object], prefix: str,
                   trace: RoundTrace) -> int:
        """Score the candidates into ``trace`` and return the winner's index."""
        if len(cands) == 1 or ctx.panel is None:
            trace.scores = [None] * len(cands)
            return 0
        result = await ctx.panel.score(
            ScoreRequest(messages=ctx.messages, prefix=ctx.prefix + prefix, candidates=cands, state=state,
                         tools=ctx.tools)
        )
        trace.scores, trace.scorer_scores = result.combined, result.by_scorer
        if result.notes:
            trace.note = "; ".join(result.notes)
        best = best_index(result.combined)
        return 0 if best is None else best

    async def run(self, ctx: RunContext) -> AsyncIterator[RoundTrace]:
        p = self.params
        sessions = {n: open_session(g, ctx, incremental=p.incremental) for n, g in ctx.members.items()}
        state: dict[object, object] = {}
        accepted: list[str] = []
        text, used = "", 0
        ctx.finish_reason = "length"
        try:
            for index in range(p.max_rounds):
                budget = min(p.segment_tokens, ctx.params.max_tokens - used)
                if budget <= 0:
                    break
                request = SegmentRequest.for_answer(ctx.params, max_new_tokens=budget, delimiters=p.delimiters,
                                                    seed_offset=index)
                started = now()
                asked = self.round_members(ctx, sessions)
                cands, errors = await gather_candidates(asked, request, ctx.policy, ctx.breaker)
                if index == 0:
                    ctx.prompt_tokens = next(iter(sessions.values())).prompt_tokens or cands[0].prompt_tokens
                trace = RoundTrace(index=index, candidates=cands, errors=errors, generate_s=now() - started)
                started = now()
                win = cands[await self.pick(ctx, cands, state, text, trace)]
                trace.score_s = now() - started
                for name, session in sessions.items():
                    session.accept(win.text, own=win if name == win.member else None)
                segment, finished = win.text, win.ended
                cut = cut_text(text + segment, ctx.params.stop, [])  # a stop string may straddle segments
                if cut is not None and len(cut.text) < len(text) + len(segment):
                    segment, finished = cut.text[len(text) :], True
                text += segment
                used += win.token_count
                accepted.append(segment)
                trace.winner, trace.winner_index = win.member, cands.index(win)
                trace.accepted_text, trace.accepted_tokens = segment, win.token_count
                if not finished and p.repetition_window and is_repetitive(accepted, p.repetition_window):
                    trace.note, finished = f"stopped: the same segment won {p.repetition_window} rounds in a row", True
                yield trace
                if finished:
                    ctx.finish_reason = "stop"
                    break
        finally:
            for session in sessions.values():
                session.close()


class RandomStrategy(SegmentStrategy):
    """Baseline: each round a random member writes the segment; nothing is scored."""

    name: ClassVar[str] = "random"

    def check(self, members: Mapping[str, Generator], panel: ScoringPanel | None) -> None:
        return None

    def round_members(self, ctx: RunContext, sessions: dict[str, GeneratorSession]) -> dict[str, GeneratorSession]:
        choice = ctx.rng.choice(sorted(sessions))
        return {choice: sessions[choice]}

    async def pick(self, ctx: RunContext, cands: list[Candidate], state: dict[object, object], prefix: str,
                   trace: RoundTrace) -> int:
        trace.scores = [None] * len(cands)
        return 0


class SingleParams(StrategyParams):
    """Parameters of ``single``.

    Attributes:
        member: The member that answers (default: the first one).
    """

    member: str | None = None


class SingleStrategy(Strategy):
    """Baseline: one member writes the whole answer in one call."""

    name: ClassVar[str] = "single"
    Params = SingleParams
    params: SingleParams

    def check(self, members: Mapping[str, Generator], panel: ScoringPanel | None) -> None:
        if self.params.member is not None and self.params.member not in members:
            raise ConfigError(
                f"strategy 'single': member '{self.params.member}' is not in this ensemble; "
                f"members: {', '.join(members)}"
            )

    def lone_member(self, members: Mapping[str, Generator]) -> str:
        return self.params.member or next(iter(members))

    async def run(self, ctx: RunContext) -> AsyncIterator[RoundTrace | TextDelta]:
        name = self.lone_member(ctx.members)
        session = open_session(ctx.members[name], ctx)
        request = SegmentRequest.for_answer(ctx.params)
        started = now()
        result: list[tuple[list[Candidate], dict[str, str]]] = []
        try:
            work = gather_candidates({name: session}, request, ctx.policy, ctx.breaker)
            async for delta in _streamed(work, request, result):
                yield delta
        finally:
            session.close()
        cands, errors = result[0]
        win = cands[0]
        ctx.prompt_tokens = win.prompt_tokens
        ctx.finish_reason = win.answer_finish
        yield lone_round(win, now() - started, errors=errors)


def lone_round(cand: Candidate, elapsed: float, *, errors: dict[str, str] | None = None, note: str = "") -> RoundTrace:
    """The one round of an answer one member wrote alone in one call (``single``, and answers batched by the
    server on that member)."""
    return RoundTrace(
        index=0, candidates=[cand], scores=[None], winner=cand.member, winner_index=0, accepted_text=cand.text,
        accepted_tokens=cand.token_count, generate_s=elapsed, errors=dict(errors or {}), note=note,
    )


async def _streamed(
    work: Awaitable[_T], request: SegmentRequest, out: list[_T]
) -> AsyncIterator[TextDelta]:
    """Run ``work`` (a call with ``request``), yielding the text its backend reports as it grows; its result
    is appended to ``out``. Reports that do not extend what was sent (a retry starting over) are skipped."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()

    def report(text: str) -> None:  # called from the backend's worker thread
        loop.call_soon_threadsafe(queue.put_nowait, text)

    request.on_text = report
    task = asyncio.ensure_future(work)
    sent = ""
    try:
        while not task.done():
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                continue
            text = getter.result()
            if len(text) > len(sent) and text.startswith(sent):
                yield TextDelta(text=text[len(sent):])
                sent = text
        out.append(task.result())
    finally:
        request.on_text = None
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
